"""Storage is untrusted: what the inventory finds there arrives quarantined until an admin adopts it and it verifies.

Attacks, on real backups in a real local location, the real inventory sync and (for adoption) a
real RQ worker running the verification: a planted artifact with its manifest, and planted files
in the old guide's layout, are catalogued *quarantined* — a restore request and a manual
verification are refused with the reason (audited), the daily and weekly schedules never pick
them, and health, daily checklists and retention do not count them. An operator (or a manager)
cannot adopt (403, audited, nothing queued). An admin's adoption queues a verification up to the
structure level: a real plain dump passes and is released; a planted file that fails its
structure stays quarantined with the reason. A planted manifest claiming another SHA-256 for an
artifact the panel wrote changes nothing and is audited.
"""

import gzip
import hashlib
import json
import subprocess
import time
import uuid
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from backups.inventory import inventory_sync_execute
from backups.models import Artifact, ArtifactCopy, InventoryRun, StorageLocation
from backups.retention import retention_plan
from backups.storage import MANIFEST_SUFFIX
from compliance import daily_evaluators, health
from compliance.models import AuditEvent
from restores import requests, verifications
from restores.models import RestoreRun, VerificationRun
from restores.runstate import RestoreError
from tests.restore_support import pg_dump_for_server
from tests.support import rq_workers

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]


def sync() -> InventoryRun:
    return inventory_sync_execute(InventoryRun.objects.create().id)


def primary_backend():
    return StorageLocation.objects.get(role="primary").backend()


def plant_with_manifest(model: Artifact, key: str, **claims) -> uuid.UUID:
    """Copy ``model``'s stored bytes to ``key`` with a manifest naming a new artifact (or what ``claims`` say)."""
    backend = primary_backend()
    data = backend.get_bytes(model.storage_key)
    backend.put_bytes(key, data)
    manifest = {**model.manifest, "artifact_id": str(uuid.uuid4()), "system": {"name": model.system.name},
                "kind": "full", "format": model.format, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "created_at": (timezone.now() + timedelta(days=1)).isoformat(), **claims}
    backend.put_bytes(key + MANIFEST_SUFFIX, json.dumps(manifest).encode())
    return uuid.UUID(manifest["artifact_id"])


def plain_dump(shop: str) -> bytes:
    return subprocess.run([pg_dump_for_server(), "--dbname", shop], capture_output=True, check=True).stdout


def wait_finished(pk, timeout=180) -> VerificationRun:
    deadline = time.monotonic() + timeout
    while (run := VerificationRun.objects.get(pk=pk)).state in ("queued", "running"):
        assert time.monotonic() < deadline, f"verification {pk} did not finish: {run.state}"
        time.sleep(0.3)
    return run


@pytest.fixture
def planted(full_artifact) -> Artifact:
    """A copy of a real backup planted in the primary location with a manifest naming a new artifact."""
    planted_id = plant_with_manifest(full_artifact, f"planted/{uuid.uuid4().hex}.dump")
    report = sync()
    assert report.summary["totals"]["catalogued"] == 1, report.summary
    return Artifact.objects.get(pk=planted_id)


@pytest.mark.django_db
def test_a_planted_artifact_and_manifest_found_by_the_sync_is_quarantined(planted, full_artifact, clients):
    assert planted.status == Artifact.Status.QUARANTINED and planted.source == Artifact.Source.SYNC
    assert "found in storage" in planted.quarantine_reason
    assert planted.copies.get().status == ArtifactCopy.Status.OK  # intact bytes: still not trusted
    event = AuditEvent.objects.get(action="artifact.catalogued", object_id=str(planted.pk))
    assert event.details["status"] == "quarantined"

    listed = {a["id"]: a for a in clients["operator"].get("/api/v1/artifacts").json()["results"]}
    assert listed[str(planted.pk)]["status"] == "quarantined"
    assert "found in storage" in listed[str(planted.pk)]["quarantine"]["reason"]
    real = listed[str(full_artifact.pk)]
    assert real["status"] == "available" and real["quarantine"] is None
    only = clients["operator"].get("/api/v1/artifacts", {"status": "quarantined"}).json()["results"]
    assert [a["id"] for a in only] == [str(planted.pk)]


@pytest.mark.django_db
def test_a_quarantined_artifact_cannot_be_restored_or_verified_by_hand(planted, staging, operator, clients):
    with pytest.raises(RestoreError, match="quarantined.*adopt"):
        requests.restore_request(actor=operator, artifact=planted, target=staging, mode="database-only",
                                 confirm=staging.name)
    answer = clients["operator"].post("/api/v1/restores", {"artifact": str(planted.pk), "target": staging.pk,
                                                           "mode": "database-only", "confirm": staging.name},
                                      content_type="application/json")
    assert answer.status_code == 400 and "quarantined" in answer.json()["detail"]
    with pytest.raises(verifications.VerificationError, match="quarantined"):
        verifications.verification_request(actor=operator, artifact=planted, level="decrypt")

    assert not RestoreRun.objects.exists()
    assert not VerificationRun.objects.filter(artifact=planted).exists()
    refusals = AuditEvent.objects.filter(action="artifact.quarantine_refused", object_id=str(planted.pk))
    assert refusals.count() == 3 and {e.outcome for e in refusals} == {"denied"}
    assert {e.details["refused"] for e in refusals} == {"verification", f"database-only restore into {staging.name}"}
    planted.refresh_from_db()
    assert planted.status == Artifact.Status.QUARANTINED


@pytest.mark.django_db
def test_a_quarantined_artifact_is_never_scheduled_nor_counted_as_evidence(planted, full_artifact, shop_system):
    daily = verifications.schedule_daily()
    weekly = verifications.schedule_weekly()
    picked = {run.artifact_id for run in daily + weekly}
    assert picked == {full_artifact.pk}, "the schedules must pick the real backup, never the planted newer one"
    assert not VerificationRun.objects.filter(artifact=planted).exists()

    later = timezone.now() + timedelta(days=2)
    assert health.newest_artifact(shop_system, "full", later) == full_artifact
    assert planted.pk not in set(daily_evaluators._completed(shop_system, "full").values_list("pk", flat=True))
    plan = retention_plan(shop_system)
    assert planted.pk not in plan.keep and planted not in plan.delete


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["operator", "manager"])
def test_only_an_admin_may_adopt(role, planted, clients, request):
    answer = clients[role].post(f"/api/v1/artifacts/{planted.pk}/adopt", content_type="application/json")
    assert answer.status_code == 403
    page = clients[role].post(f"/restores/artifacts/{planted.pk}/adopt")
    assert page.status_code == 403
    denials = AuditEvent.objects.filter(action="access.denied", outcome="denied", actor=request.getfixturevalue(role))
    assert denials.count() == 2
    assert {(e.details["attempted"], e.object_id) for e in denials} == {("artifact.adopt", str(planted.pk))}
    planted.refresh_from_db()
    assert planted.status == Artifact.Status.QUARANTINED and planted.adopted_by is None
    assert not VerificationRun.objects.filter(artifact=planted).exists()
    assert not AuditEvent.objects.filter(action="artifact.adopted").exists()


@pytest.mark.django_db
def test_the_pages_show_the_quarantine_and_offer_adoption_to_admins(planted, clients):
    listing = clients["admin"].get("/artifacts/").content.decode()
    assert 'data-testid="quarantined"' in listing and f"/restores/artifacts/{planted.pk}/adopt" in listing
    detail = clients["admin"].get(f"/artifacts/{planted.pk}/").content.decode()
    assert 'data-testid="quarantine"' in detail and 'data-testid="adopt"' in detail and "data-confirm" in detail
    assert "found in storage" in detail
    as_operator = clients["operator"].get(f"/artifacts/{planted.pk}/").content.decode()
    assert 'data-testid="quarantine"' in as_operator and 'data-testid="adopt"' not in as_operator
    assert f"/restores/artifacts/{planted.pk}/adopt" not in clients["operator"].get("/artifacts/").content.decode()


@pytest.mark.django_db
def test_a_planted_manifest_cannot_alter_a_known_artifact(full_artifact):
    backend = primary_backend()
    before = Artifact.objects.values().get(pk=full_artifact.pk)
    copies_before = list(full_artifact.copies.values("location_id", "key", "status", "sha256_seen"))
    forged = "f" * 64
    key = f"planted/{uuid.uuid4().hex}.dump"
    plant_with_manifest(full_artifact, key, artifact_id=str(full_artifact.pk), sha256=forged, size=1)
    # The manifest next to the panel's own copy is rewritten too: the sync never trusts it either.
    own = json.loads(backend.get_bytes(full_artifact.storage_key + MANIFEST_SUFFIX))
    backend.put_bytes(full_artifact.storage_key + MANIFEST_SUFFIX, json.dumps({**own, "sha256": forged}).encode())

    report = sync()

    assert Artifact.objects.values().get(pk=full_artifact.pk) == before
    assert list(full_artifact.copies.values("location_id", "key", "status", "sha256_seen")) == copies_before
    assert Artifact.objects.count() == 1
    assert report.summary["totals"]["ignored"] == 1 and report.summary["totals"]["catalogued"] == 0
    event = AuditEvent.objects.get(action="artifact.manifest_ignored")
    assert event.object_id == str(full_artifact.pk) and event.outcome == "failure"
    assert event.details["claimed_sha256"] == forged and event.details["catalog_sha256"] == full_artifact.sha256
    assert event.details["key"] == key


@pytest.mark.django_db
def test_the_adopt_command_takes_an_admin_and_verifies_inline(shop_system, shop, operator, admin):
    primary_backend().put_bytes("shop-backups/full_20251001_031500/database.sql.gz",
                                gzip.compress(plain_dump(shop)))
    sync()
    found = Artifact.objects.get(source=Artifact.Source.LEGACY)
    with pytest.raises(CommandError, match="only admins"):
        call_command("adopt", str(found.pk), "--as", operator.username, "--inline")
    denied = AuditEvent.objects.get(action="access.denied", actor=operator)
    assert denied.details["attempted"] == "artifact.adopt" and denied.object_id == str(found.pk)
    assert not VerificationRun.objects.filter(artifact=found).exists()

    call_command("adopt", str(found.pk)[:8], "--as", admin.username, "--inline")
    found.refresh_from_db()
    assert found.status == Artifact.Status.AVAILABLE and found.adopted_by == admin
    with pytest.raises(CommandError, match="only a quarantined artifact"):
        call_command("adopt", str(found.pk), "--as", admin.username)


# --- adoption, verified by a real worker ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_adoption_verifies_up_to_structure_and_releases_only_what_passes(shop_system, shop, staging, operator, admin,
                                                                           clients):
    backend = primary_backend()
    backend.put_bytes("shop-backups/full_20251001_031500/database.sql.gz", gzip.compress(plain_dump(shop)))
    backend.put_bytes("shop-backups/full_20251002_031500/database.sql.gz",
                      gzip.compress(b"-- PostgreSQL database dump\nSELECT 'not a dump';\n"))
    report = sync()
    assert report.summary["totals"]["imported"] == 2
    good, bad = Artifact.objects.filter(source=Artifact.Source.LEGACY).order_by("created_at")
    assert good.status == bad.status == Artifact.Status.QUARANTINED

    adopted = [clients["admin"].post(f"/api/v1/artifacts/{a.pk}/adopt", content_type="application/json")
               for a in (good, bad)]
    assert [r.status_code for r in adopted] == [202, 202]
    assert {r.json()["status"] for r in adopted} == {"quarantined"}, "adoption alone releases nothing"
    assert {r.json()["verification"]["level"] for r in adopted} == {"structure"}
    with pytest.raises(RestoreError, match="quarantined"):  # still refused while its verification waits
        requests.restore_request(actor=operator, artifact=good, target=staging, mode="database-only",
                                 confirm=staging.name)

    with rq_workers(["verify"]):
        runs = [wait_finished(r.json()["verification"]["id"]) for r in adopted]

    assert [run.state for run in runs] == ["succeeded", "failed"], [run.error for run in runs]
    assert runs[0].trigger == runs[1].trigger == VerificationRun.Trigger.ADOPTION
    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.status == Artifact.Status.AVAILABLE and good.adopted_by == admin and good.adopted_at
    assert good.last_verified_level == "structure" and good.quarantine_reason == ""
    assert bad.status == Artifact.Status.QUARANTINED and bad.adopted_by is None
    assert "adoption verification" in bad.quarantine_reason and "trailer" in bad.quarantine_reason
    assert AuditEvent.objects.filter(action="artifact.adopted", actor=admin).count() == 2
    assert AuditEvent.objects.get(action="artifact.released").object_id == str(good.pk)
    assert AuditEvent.objects.get(action="artifact.adoption_failed").object_id == str(bad.pk)

    run = requests.restore_request(actor=operator, artifact=good, target=staging, mode="database-only",
                                   confirm=staging.name)
    assert run.state == RestoreRun.State.QUEUED
    with pytest.raises(RestoreError, match="adoption verification"):
        requests.restore_request(actor=operator, artifact=bad, target=staging, mode="database-only",
                                 confirm=staging.name)
    again = clients["admin"].post(f"/api/v1/artifacts/{good.pk}/adopt", content_type="application/json")
    assert again.status_code == 409 and "only a quarantined artifact" in again.json()["detail"]
