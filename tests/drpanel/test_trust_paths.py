"""Paths and endpoints come from settings, not rows.

An admin cannot point a system's config paths or a target's config directory outside
``DRPANEL_CONFIG_ROOTS`` (``/root/.ssh``, ``/var/lib/postgresql``, a link out of a root), nor a storage
location at an endpoint the deployment does not allow (plain http, credentials in the URL, a host off
the allowlist, a private address): the forms refuse and save nothing. A row that holds such a value
anyway (written before the rule, or straight into the database) is refused again by the real worker:
a clear error, nothing read or contacted, an audit event.
"""

import socket
import threading
import time

import boto3
import pytest
from django.test import Client
from django.urls import reverse

from backups.models import BackupRun, StorageLocation, System
from compliance.models import AuditEvent
from drpanel import endpoints
from tests.backup_fixtures import *  # noqa: F403 - fixtures (source_db, primary, ...)
from tests.factories import UserFactory
from tests.support import rq_workers

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def wait_finished(run_id, timeout=120) -> BackupRun:
    deadline = time.monotonic() + timeout
    while (run := BackupRun.objects.get(pk=run_id)).state in ("queued", "running"):
        assert time.monotonic() < deadline, f"backup run {run_id} did not finish"
        time.sleep(0.3)
    return run


@pytest.fixture
def admin_client():
    client = Client()
    client.force_login(UserFactory(username="admin", role="Admin", is_staff=True))
    return client


def system_form(**fields) -> dict:
    return {"name": "app", "database_ref": "env:DRPANEL_SECRET_APP_URL", "full_every_hours": 24,
            "incremental_every_hours": 6, "config_every_hours": 4, "keep_last": 7, "keep_daily": 7, "keep_weekly": 4,
            "keep_monthly": 6, **fields}


@pytest.mark.parametrize("path", ["/root/.ssh", "/var/lib/postgresql/15/main", "/proc/self/environ"])
def test_the_forms_refuse_config_paths_outside_the_roots(admin_client, path, tmp_path):
    response = admin_client.post(reverse("backups:system-create"), system_form(config_paths=path))
    assert response.status_code == 400 and b"DRPANEL_CONFIG_ROOTS" in response.content
    assert not System.objects.exists()
    response = admin_client.post(reverse("restores:target-create"), {
        "name": "shop", "environment": "scratch", "database_ref": "env:DRPANEL_SECRET_SHOP_URL", "config_dir": path,
        "health_check_hosts": "", "is_active": "on", "sanity-TOTAL_FORMS": "0", "sanity-INITIAL_FORMS": "0",
        "health-TOTAL_FORMS": "0", "health-INITIAL_FORMS": "0"})
    assert b"DRPANEL_CONFIG_ROOTS" in response.content


def test_a_link_out_of_a_root_is_refused(tmp_path):
    link = tmp_path / "innocent"
    link.symlink_to("/root")
    with pytest.raises(endpoints.EndpointRefused, match="not under a config root"):
        endpoints.check_config_path(str(link), what="config path")
    assert endpoints.check_config_path(str(tmp_path), what="config path") == str(tmp_path)


@pytest.mark.parametrize(("url", "rule"), [
    ("http://s3.example.com", "https only"),
    ("https://AKIAKEY:secret@127.0.0.1:9000", "no credentials in the URL"),
    ("https://s3.evil.example", "not in DRPANEL_ENDPOINT_ALLOWLIST"),
    ("ftp://127.0.0.1/", "https:// URL"),
])
def test_the_location_form_refuses_an_endpoint_the_deployment_does_not_allow(admin_client, url, rule):
    response = admin_client.post(reverse("backups:location-create"), {
        "name": "cloud", "kind": "s3", "role": "offsite", "enabled": "on", "bucket": "b", "endpoint_url": url})
    assert response.status_code == 400 and rule.encode() in response.content
    assert not StorageLocation.objects.exists()


def test_private_addresses_are_refused_unless_the_deployment_allows_them(settings):
    settings.ENDPOINT_ALLOWLIST = ["169.254.169.254", "10.1.2.3", "*.example.com", "localhost"]
    settings.ENDPOINT_PRIVATE_HOSTS = []
    for url in ("https://169.254.169.254/", "https://10.1.2.3:9000"):
        with pytest.raises(endpoints.EndpointRefused, match="private or local address"):
            endpoints.check_endpoint(url, what="endpoint URL")
    with pytest.raises(endpoints.EndpointRefused, match="private or local address"):
        endpoints.check_endpoint("https://localhost:9000", what="endpoint URL", resolve=True)
    settings.ENDPOINT_PRIVATE_HOSTS = ["10.1.2.3"]
    assert endpoints.check_endpoint("https://10.1.2.3:9000", what="endpoint URL")


def test_s3_clients_follow_no_redirect(primary, s3_endpoint):
    location = StorageLocation.objects.create(name="s3", kind="s3", role="offsite", bucket="b",
                                              region="us-east-1", endpoint_url=s3_endpoint)
    emitter = location.backend().client.meta.events._emitter
    handlers = [h for event in ("needs-retry.s3", "before-endpoint-resolution.s3")
                for h in emitter._handlers.prefix_search(event)]
    assert not [h for h in handlers if type(getattr(h, "__self__", None)).__name__.startswith("S3RegionRedirector")]
    assert boto3.client("s3", region_name="us-east-1")  # an ordinary client still has one (the check above bites)
    plain = boto3.client("s3", region_name="us-east-1").meta.events._emitter
    assert [h for h in plain._handlers.prefix_search("needs-retry.s3")
            if type(getattr(h, "__self__", None)).__name__.startswith("S3RegionRedirector")]


class Listener:
    """A TCP port on 127.0.0.1 that counts connections (nothing should ever connect)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port, self.connections, self.stop = self.sock.getsockname()[1], 0, False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


def test_rows_written_around_the_rules_are_refused_by_the_worker(admin_client, source_db, primary, tmp_path):
    listener = Listener()
    System.objects.create(name="app", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL",
                          config_paths=["/root/.ssh"])
    system = System.objects.get(name="app")
    StorageLocation.objects.create(name="inside", kind="s3", role="offsite", bucket="b", region="us-east-1",
                                   endpoint_url=f"http://127.0.0.1:{listener.port}")
    try:
        # The deployment allows 127.0.0.1 as a host but not as a private address.
        with rq_workers(["backup"], env={"DRPANEL_ENDPOINT_PRIVATE_HOSTS": ""}):
            runs = {}
            for kind in ("config", "full"):
                response = admin_client.post(reverse("backups:system-backup", args=[system.pk]), {"kind": kind})
                assert response.status_code == 302, response.content
                runs[kind] = wait_finished(BackupRun.objects.get(kind=kind).pk)
            config, full = runs["config"], runs["full"]
    finally:
        listener.close()
    assert config.state == "failed" and "not under a config root" in config.error and config.artifact_id is None
    assert "/root/.ssh" in AuditEvent.objects.get(action="backup.failed").details["error"]
    assert full.state == "succeeded", full.error
    copies = {c.location.name: c.status for c in full.artifact.copies.select_related("location")}
    assert copies == {"primary": "ok", "inside": "missing"}
    failed = AuditEvent.objects.get(action="artifact.copied", outcome="failure")
    assert "private or local address" in failed.details["error"]
    assert listener.connections == 0, "the worker contacted the refused endpoint"
