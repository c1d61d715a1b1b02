"""Catalog pages and API: who may do what, the artifact list at scale, the "Back up now" flow."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from backups.deletion import artifact_delete_request
from backups.models import Artifact, ArtifactCopy, BackupRun, InventoryRun, StorageLocation, System
from compliance.models import AuditEvent
from drpanel.models import Approval
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db

VIEWERS = {"operator", "manager", "auditor", "admin"}
STARTERS = {"operator", "manager", "admin"}


@pytest.fixture
def catalog(tmp_path):
    system = System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_CHATBOT_DB_URL",
                                   config_paths=[str(tmp_path)])
    primary = StorageLocation.objects.create(name="primary", kind="local", role="primary", path=str(tmp_path / "p"))
    offsite = StorageLocation.objects.create(name="offsite", kind="s3", role="offsite", bucket="b")
    return system, primary, offsite


def add_artifacts(system, locations, n, *, start=None, kind="full"):
    start = start or timezone.now()
    made = []
    for i in range(n):
        artifact = Artifact.objects.create(system=system, kind=kind, format="pg_custom", status="available",
                                           created_at=start - timedelta(minutes=i), size=1000 + i,
                                           sha256="a" * 64, storage_key=f"drpanel/x/{kind}-{i}-{start.timestamp()}")
        for location in locations:
            ArtifactCopy.objects.create(artifact=artifact, location=location, key=artifact.storage_key, status="ok")
        made.append(artifact)
    return made


# --- permission boundaries ------------------------------------------------------------------

def test_read_pages_are_for_every_role(clients, catalog):
    system, primary, offsite = catalog
    artifact = add_artifacts(system, [primary], 1)[0]
    run = BackupRun.objects.create(system=system, kind="full")
    sync = InventoryRun.objects.create()
    for url in (reverse("backups:artifact-list"), reverse("backups:artifact-detail", args=[artifact.pk]),
                reverse("backups:system-list"), reverse("backups:system-detail", args=[system.pk]),
                reverse("backups:run-detail", args=[run.pk]), reverse("backups:run-progress", args=[run.pk]),
                reverse("backups:inventory-detail", args=[sync.pk]),
                "/api/v1/systems", "/api/v1/artifacts", f"/api/v1/artifacts/{artifact.pk}",
                f"/api/v1/backup-runs/{run.pk}"):
        assert_only_roles(clients, "get", url, allowed=VIEWERS)


def test_back_up_now_is_for_operators_managers_and_admins(clients, catalog):
    system, _, _ = catalog
    assert_only_roles(clients, "post", reverse("backups:system-backup", args=[system.pk]), allowed=STARTERS,
                      data={"kind": "full"})
    assert BackupRun.objects.filter(system=system, kind="full").count() == 1


def test_the_api_starts_backups_for_the_same_roles(clients, catalog):
    system, _, _ = catalog
    for role in ("operator", "manager", "auditor", "admin", "outsider"):
        response = clients[role].post(f"/api/v1/systems/{system.pk}/backups", {"kind": "config"},
                                      content_type="application/json")
        assert response.status_code == (202 if role in STARTERS else 403), role
    assert AuditEvent.objects.filter(action="access.denied").count() == 2


def test_inventory_sync_is_for_operators_managers_and_admins(clients, catalog):
    assert_only_roles(clients, "post", reverse("backups:inventory-start"), allowed=STARTERS)


def test_deletion_requests_are_for_operators_managers_and_admins(clients, catalog):
    system, primary, _ = catalog
    for role in ("auditor", "outsider"):
        artifact = add_artifacts(system, [primary], 1)[0]
        response = clients[role].post(reverse("backups:artifact-delete", args=[artifact.pk]), {"reason": "x"})
        assert response.status_code == 403
    artifact = add_artifacts(system, [primary], 1)[0]
    clients["operator"].post(reverse("backups:artifact-delete", args=[artifact.pk]), {"reason": "wrong system"})
    assert Approval.objects.get().state == Approval.State.PENDING


def test_only_a_manager_other_than_the_requester_may_approve(clients, catalog, admin):
    system, primary, _ = catalog
    artifact = add_artifacts(system, [primary], 1)[0]
    approval = artifact_delete_request(actor=admin, artifact=artifact, reason="duplicate")
    assert_only_roles(clients, "post", reverse("backups:approval-approve", args=[approval.pk]), allowed={"manager"},
                      data={"password": "not the password"})
    approval.refresh_from_db()
    assert approval.state == Approval.State.PENDING


def test_a_manager_approves_on_the_artifact_page(clients, catalog, operator, password):
    system, primary, _ = catalog
    artifact = add_artifacts(system, [primary], 1)[0]
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="duplicate")
    page = clients["manager"].get(reverse("backups:artifact-detail", args=[artifact.pk])).content.decode()
    assert "Approve and delete" in page and "duplicate" in page
    assert "Approve and delete" not in clients["operator"].get(
        reverse("backups:artifact-detail", args=[artifact.pk])).content.decode()
    clients["manager"].post(reverse("backups:approval-approve", args=[approval.pk]), {"password": password})
    artifact.refresh_from_db()
    assert artifact.status == Artifact.Status.DELETED


def test_the_requester_or_a_manager_may_close_a_request(clients, catalog, operator):
    system, primary, _ = catalog
    artifact = add_artifacts(system, [primary], 1)[0]
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="x")
    assert clients["auditor"].post(reverse("backups:approval-reject", args=[approval.pk])).status_code == 403
    assert clients["admin"].post(reverse("backups:approval-reject", args=[approval.pk])).status_code == 403
    clients["operator"].post(reverse("backups:approval-reject", args=[approval.pk]))
    assert Approval.objects.get(pk=approval.pk).state == Approval.State.REJECTED


@pytest.mark.parametrize("name", ["system-create", "location-list", "location-create", "key-list"])
def test_admin_pages_are_for_admins_only(clients, catalog, name):
    assert_only_roles(clients, "get", reverse(f"backups:{name}"), allowed={"admin"})


def test_edit_pages_are_for_admins_only(clients, catalog):
    system, primary, _ = catalog
    assert_only_roles(clients, "get", reverse("backups:system-edit", args=[system.pk]), allowed={"admin"})
    assert_only_roles(clients, "get", reverse("backups:location-edit", args=[primary.pk]), allowed={"admin"})


def test_key_rotation_and_rewrap_are_for_admins_only(clients, catalog):
    system, primary, _ = catalog
    artifact = add_artifacts(system, [primary], 1)[0]
    assert_only_roles(clients, "post", reverse("backups:key-rotate"), allowed={"admin"})
    assert_only_roles(clients, "post", reverse("backups:artifact-rewrap", args=[artifact.pk]), allowed={"admin"})


# --- admin pages ------------------------------------------------------------------------------

def test_an_admin_adds_a_system_by_reference_only(clients):
    response = clients["admin"].post(reverse("backups:system-create"), {
        "name": "shop", "database_ref": "postgresql://u:pw@h/db", "config_paths": "/etc/shop",
        "full_every_hours": 24, "incremental_every_hours": 6, "config_every_hours": 4, "keep_last": 7,
        "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6})
    assert response.status_code == 400 and b"secret reference" in response.content
    assert not System.objects.exists()
    response = clients["admin"].post(reverse("backups:system-create"), {
        "name": "shop", "database_ref": "env:DRPANEL_SECRET_SHOP_DB_URL", "config_paths": "/etc/shop\n/srv/shop/.env",
        "schedule_enabled": "on", "full_every_hours": 24, "incremental_every_hours": 6, "config_every_hours": 4,
        "keep_last": 7, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6})
    assert response.status_code == 302
    system = System.objects.get(name="shop")
    assert system.config_paths == ["/etc/shop", "/srv/shop/.env"]
    changed = AuditEvent.objects.get(action="system.created").details["changed"]
    assert changed["database_ref"] == "env:DRPANEL_SECRET_SHOP_DB_URL"


def test_an_admin_adds_locations_and_only_one_primary(clients, tmp_path):
    base = {"kind": "local", "role": "primary", "enabled": "on"}
    assert clients["admin"].post(reverse("backups:location-create"),
                                 {**base, "name": "one", "path": str(tmp_path / "a")}).status_code == 302
    response = clients["admin"].post(reverse("backups:location-create"),
                                     {**base, "name": "two", "path": str(tmp_path / "b")})
    assert response.status_code == 400
    assert StorageLocation.objects.count() == 1
    response = clients["admin"].post(reverse("backups:location-create"), {
        "name": "cloud", "kind": "s3", "role": "offsite", "enabled": "on", "bucket": "b",
        "access_key_ref": "env:DRPANEL_SECRET_AWS_KEY"})
    assert response.status_code == 400 and b"both credential references" in response.content


# --- the artifact list at scale ----------------------------------------------------------------

def test_the_artifact_list_query_count_does_not_grow_with_the_catalog(clients, catalog):
    system, primary, offsite = catalog
    add_artifacts(system, [primary, offsite], 3)
    client = clients["auditor"]
    client.get(reverse("backups:artifact-list"))
    with CaptureQueriesContext(connection) as few:
        assert client.get(reverse("backups:artifact-list")).status_code == 200
    add_artifacts(system, [primary, offsite], 120, start=timezone.now() - timedelta(days=1))
    with CaptureQueriesContext(connection) as many:
        page = client.get(reverse("backups:artifact-list")).content.decode()
    assert len(many.captured_queries) == len(few.captured_queries)
    assert page.count("offsite: ok") == 50
    with CaptureQueriesContext(connection) as api:
        assert len(client.get("/api/v1/artifacts").json()["results"]) == 50
    assert len(api.captured_queries) < 10


def test_keyset_pages_cover_every_artifact_once_in_order(clients, catalog):
    system, primary, _ = catalog
    made = add_artifacts(system, [primary], 123)
    seen, cursor = [], ""
    while True:
        data = clients["operator"].get("/api/v1/artifacts", {"cursor": cursor} if cursor else {}).json()
        seen += [row["id"] for row in data["results"]]
        cursor = data["next"]
        if not cursor:
            break
    assert seen == [str(a.pk) for a in made]
    by_size = clients["operator"].get("/api/v1/artifacts", {"sort": "size"}).json()["results"]
    assert [r["size"] for r in by_size] == sorted(r["size"] for r in by_size)


def test_the_list_filters_by_system_kind_status_location_and_dates(clients, catalog):
    system, primary, offsite = catalog
    other = System.objects.create(name="other", database_ref="env:DRPANEL_SECRET_X")
    full = add_artifacts(system, [primary, offsite], 2)
    config = add_artifacts(system, [primary], 1, kind="config")
    old = add_artifacts(other, [primary], 1, start=timezone.now() - timedelta(days=10))
    Artifact.objects.filter(pk=full[1].pk).update(status="missing")

    def ids(**params):
        return {r["id"] for r in clients["auditor"].get("/api/v1/artifacts", params).json()["results"]}

    assert ids(kind="config") == {str(config[0].pk)}
    assert ids(status="missing") == {str(full[1].pk)}
    assert ids(system=other.pk) == {str(old[0].pk)}
    assert ids(location=offsite.pk) == {str(a.pk) for a in full}
    day = (timezone.now() - timedelta(days=10)).date().isoformat()
    assert ids(**{"from": day, "to": day}) == {str(old[0].pk)}
    page = clients["auditor"].get(reverse("backups:artifact-list"), {"kind": "config"}).content.decode()
    assert str(config[0].pk)[:8] in page and str(full[0].pk)[:8] not in page


def test_an_empty_catalog_says_so(clients):
    page = clients["auditor"].get(reverse("backups:artifact-list")).content.decode()
    assert "No backup artifacts are catalogued yet" in page


def test_the_artifact_page_shows_manifest_copies_and_audit_trail(clients, catalog, operator):
    system, primary, offsite = catalog
    artifact = add_artifacts(system, [primary, offsite], 1)[0]
    Artifact.objects.filter(pk=artifact.pk).update(manifest={
        "tables": [{"schema": "public", "table": "orders", "rows": 60000}], "row_counts": "exact count(*)"})
    artifact_delete_request(actor=operator, artifact=artifact, reason="test")
    page = clients["auditor"].get(reverse("backups:artifact-detail", args=[artifact.pk])).content.decode()
    assert "public.orders" in page and "60000" in page
    assert "approval.requested" in page
    assert "offsite" in page
    detail = clients["auditor"].get(f"/api/v1/artifacts/{artifact.pk}").json()
    assert {c["location"]: c["status"] for c in detail["copies"]} == {"primary": "ok", "offsite": "ok"}
    assert detail["last_verification"] is None
