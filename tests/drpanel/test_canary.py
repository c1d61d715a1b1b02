"""Canary secrets: a run that uses every kind of secret the panel handles leaves none of them in the
database, the logs, the exports or the error pages.

Canaries (random per run): a user's password (a right and a wrong sign-in), an API token (made on
the token page, used, and a wrong one tried), a system's database URL password and a storage
location's S3 keys (secret references resolved from environment variables, by a real worker taking
a real backup to S3), and the backup master key. Then: ``pg_dump`` of the whole test database,
the log output of this process and of the worker (at the production level, INFO), both audit
export formats, and the error pages and error bodies the run met.
"""

import base64
import io
import logging
import os
import secrets
import subprocess
import time
import zipfile

import psycopg
import pytest
from django.test import Client

from backups import pgtools
from backups.keys import KeyConfig
from backups.models import BackupRun, StorageLocation, System
from drpanel import pgbin
from tests.backup_fixtures import *  # noqa: F403 - fixtures (source_db, primary, ...)
from tests.factories import UserFactory
from tests.support import rq_workers, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def canary(kind: str) -> str:
    return f"canary-{kind}-{secrets.token_hex(8)}"


class Capture(logging.Handler):
    """Everything logged in this process, formatted as the console handler would write it."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record):
        text = self.format(record)
        self.lines.append(text)


@pytest.fixture
def captured_logs():
    handler = Capture()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@pytest.fixture
def canaries(source_db, monkeypatch, settings):
    master_key = os.urandom(32)
    values = {
        "password": canary("password"),
        "wrong_password": canary("wrong-password"),
        "db_password": canary("dbpw"),
        "s3_access_key": "AKIA" + secrets.token_hex(8).upper(),
        "s3_secret_key": canary("s3secret"),
        "master_key_b64": base64.b64encode(master_key).decode(),
        "master_key_hex": master_key.hex(),
        "wrong_token": "drp_" + canary("wrong-token"),
    }
    # The server trusts local connections: the password in the URL is carried, never needed.
    with_password = source_db.replace("postgresql://postgres@", f"postgresql://postgres:{values['db_password']}@")
    assert with_password != source_db, "the source URL has no user to add a password to"
    env = {"DRPANEL_SECRET_CANARY_DB_URL": with_password, "DRPANEL_SECRET_CANARY_S3_ACCESS": values["s3_access_key"],
           "DRPANEL_SECRET_CANARY_S3_SECRET": values["s3_secret_key"],
           "DRPANEL_KEYS": f"k1:{values['master_key_b64']}", "DRPANEL_ACTIVE_KEY_ID": "k1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings.BACKUP_KEYS = KeyConfig(master_keys={"k1": master_key}, active_key_id="k1", source="test")
    return values


def test_no_canary_secret_reaches_the_database_logs_exports_or_error_pages(
        canaries, captured_logs, primary, s3_endpoint, redis_conn, tmp_path):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="canary-offsite")
    user = UserFactory(username="canary-manager", role="Manager")
    user.set_password(canaries["password"])
    user.save()
    system = System.objects.create(name="canary-app", database_ref="env:DRPANEL_SECRET_CANARY_DB_URL")
    StorageLocation.objects.create(name="canary-s3", kind="s3", role="offsite", bucket="canary-offsite",
                                   prefix="dr/", region="us-east-1", endpoint_url=s3_endpoint,
                                   access_key_ref="env:DRPANEL_SECRET_CANARY_S3_ACCESS",
                                   secret_key_ref="env:DRPANEL_SECRET_CANARY_S3_SECRET")
    pages = []

    # Sign-in: a wrong password, then the right one.
    client = Client()
    pages.append(client.post("/login/", {"username": "canary-manager", "password": canaries["wrong_password"]}))
    pages.append(client.post("/login/", {"username": "canary-manager", "password": canaries["password"]}))
    assert pages[-1].status_code == 302
    # An API token from the token page, used; and a wrong one.
    token = client.post("/tokens/new", {"name": "canary", "password": canaries["password"]}).context["new_token"]
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    pages.append(Client(HTTP_AUTHORIZATION=f"Bearer {canaries['wrong_token']}").get("/api/v1/me"))
    assert pages[-1].status_code == 401
    # A backup through the API, taken by a real worker that resolves every reference.
    logs = tmp_path / "worker-logs"
    with rq_workers(["backup"], count=1, log_dir=logs):
        response = api.post(f"/api/v1/systems/{system.pk}/backups", {"kind": "full"}, content_type="application/json")
        assert response.status_code == 202, response.content
        run_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while BackupRun.objects.get(pk=run_id).state in ("queued", "running"):
            assert time.monotonic() < deadline, "the backup did not finish"
            time.sleep(0.5)
    run = BackupRun.objects.get(pk=run_id)
    assert run.state == "succeeded", run.error
    copies = {c.location.name: c.status for c in run.artifact.copies.select_related("location")}
    assert copies == {"primary": "ok", "canary-s3": "ok"}, "the S3 keys were not used"
    pages.append(api.get(f"/api/v1/backup-runs/{run_id}"))
    pages.append(api.get(f"/api/v1/artifacts/{run.artifact_id}"))
    # A failing backup: its error names the database, never the password.
    url = os.environ["DRPANEL_SECRET_CANARY_DB_URL"]
    os.environ["DRPANEL_SECRET_CANARY_DB_URL"] = url.rsplit("/", 1)[0] + "/no_such_database_canary"
    from backups.runs import backup_request, backup_run_execute

    failed = backup_run_execute(backup_request(actor=user, system=system, kind="full").id)
    assert failed.state == "failed" and "no_such_database_canary" in failed.error
    pages.append(api.get(f"/api/v1/backup-runs/{failed.pk}"))
    # Error pages met by a signed-in user.
    pages += [client.get("/nowhere"), client.get("/api/v1/artifacts/not-an-id"), client.get("/locations/"),
              client.post("/reauth/", {"password": canaries["wrong_password"]})]
    # Both export formats.
    jsonl = b"".join(api.get("/api/v1/audit/export?format=jsonl").streaming_content)
    with zipfile.ZipFile(io.BytesIO(b"".join(api.get("/api/v1/audit/export?format=csv").streaming_content))) as z:
        csv = b"".join(z.read(name) for name in z.namelist())
    assert b"auth.login_failed" in jsonl and b"backup.succeeded" in csv

    url = worker_env()["DATABASE_URL"]
    with psycopg.connect(url) as conn:
        major = pgtools.server_facts(conn)["server_major"]
    dump = subprocess.run([pgbin.find_tool("pg_dump", major).path], env=pgtools.libpq_env(url),
                          capture_output=True, check=True).stdout
    assert b"canary-manager" in dump and b"DRPANEL_SECRET_CANARY_DB_URL" in dump  # the dump is of the right database
    worker_log = b"".join(p.read_bytes() for p in logs.iterdir())
    assert b"backup_run_job" in worker_log  # the worker's log is the one that did the job
    places = {
        "pg_dump of the panel's database": dump,
        "the test process's log": "\n".join(captured_logs.lines).encode(),
        "the worker's log": worker_log,
        "the JSON Lines export": jsonl,
        "the CSV export": csv,
        "pages and API answers": b"".join(p.content for p in pages if not p.streaming),
    }
    token_canaries = {"api_token": token}
    for place, content in places.items():
        for name, value in {**canaries, **token_canaries}.items():
            assert value.encode() not in content, f"{name} found in {place}"
