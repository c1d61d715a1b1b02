"""Secret references cannot read the panel's own secrets, and no failing path echoes a secret anywhere.

The reported attack, replayed: an admin points a system at ``env:DRPANEL_DEMO_PASSWORD`` and presses
"Back up now". The form refuses the reference (nothing saved, the refusal audited); a row that holds
it anyway (an older row, a restored database) is refused again by the real worker, with the
reference named and the value nowhere.

Then every failing path a real worker meets, each with a canary where a secret lives: a reference
to a value that is not a URL at all (libpq quotes it in its parse error), a URL whose port is
garbage, a URL with a password to a server that refuses the connection, a conninfo with
``password=``, an S3 location with canary keys whose bucket does not exist and one whose endpoint
refuses connections, and a KMS key whose endpoint refuses connections with canary AWS credentials.
Each run fails with a clear error. Then the pg_dump of the panel's database, the worker's log, both
audit exports, and the pages and API answers met are searched: 0 hits.
"""

import io
import secrets
import subprocess
import time
import zipfile

import boto3
import psycopg
import pytest
from django.test import Client
from django.urls import reverse

from backups import pgtools
from backups.models import BackupRun, StorageLocation, System
from compliance.models import AuditEvent
from drpanel import pgbin
from drpanel.scrub import scrub
from drpanel.services import api_token_create
from tests.backup_fixtures import *  # noqa: F403 - fixtures (source_db, primary, ...)
from tests.factories import UserFactory
from tests.support import rq_workers, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def canary(kind: str) -> str:
    return f"canary{kind}{secrets.token_hex(8)}"


def wait_finished(run_id, timeout=120) -> BackupRun:
    deadline = time.monotonic() + timeout
    while (run := BackupRun.objects.get(pk=run_id)).state in ("queued", "running"):
        assert time.monotonic() < deadline, f"backup run {run_id} did not finish"
        time.sleep(0.3)
    return run


def system_form(**fields) -> dict:
    return {"name": "app", "config_paths": "", "full_every_hours": 24, "incremental_every_hours": 6,
            "config_every_hours": 4, "keep_last": 7, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6, **fields}


def test_the_demo_password_attack_is_refused_by_the_form_and_by_the_worker(monkeypatch, primary, tmp_path):
    demo_password = canary("demo")
    monkeypatch.setenv("DRPANEL_DEMO_PASSWORD", demo_password)
    admin = UserFactory(username="admin", role="Admin", is_staff=True)
    client = Client()
    client.force_login(admin)
    pages = []
    for name in ("DRPANEL_DEMO_PASSWORD", "DATABASE_URL", "DRPANEL_KEYS", "AWS_SECRET_ACCESS_KEY", "SECRET_KEY",
                 "DRPANEL_SECRET_KEY", "DRPANEL_SECRET_KEY_FILE", "REDIS_URL", "PGPASSWORD"):
        pages.append(client.post(reverse("backups:system-create"), system_form(database_ref=f"env:{name}")))
        assert pages[-1].status_code == 400, name
        assert b"never the panel&#x27;s own secrets" in pages[-1].content, name
    assert not System.objects.exists()

    # A row that holds such a reference anyway: the worker refuses it again, naming it.
    system = System.objects.create(name="app", database_ref="env:DRPANEL_DEMO_PASSWORD")
    token = api_token_create(actor=None, user=admin, name="canary")[1]
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    logs = tmp_path / "logs"
    with rq_workers(["backup"], log_dir=logs):
        answer = api.post(f"/api/v1/systems/{system.pk}/backups", {"kind": "full"}, content_type="application/json")
        assert answer.status_code == 202, answer.content
        run = wait_finished(answer.json()["id"])
    assert run.state == "failed"
    assert "env:DRPANEL_DEMO_PASSWORD" in run.error and "never the panel's own secrets" in run.error
    pages.append(api.get(f"/api/v1/backup-runs/{run.pk}"))
    pages.append(client.get(reverse("backups:run-detail", args=[run.pk])))
    event = AuditEvent.objects.get(action="backup.failed")
    assert "DRPANEL_DEMO_PASSWORD" in event.details["error"]
    assert_nowhere({"demo password": demo_password}, pages=pages, logs=logs, api=api)


def test_no_failing_path_leaks_a_canary(monkeypatch, source_db, primary, s3_endpoint, tmp_path):
    values = {name: canary(name) for name in ("url", "port", "refused", "conninfo", "s3key", "s3secret",
                                              "awskey", "awssecret", "kmskey")}
    values["s3key"] = "AKIA" + secrets.token_hex(8).upper()
    monkeypatch.setenv("DRPANEL_SECRET_NOT_A_URL", f"{values['url']} is the password")
    monkeypatch.setenv("DRPANEL_SECRET_BAD_PORT", f"postgresql://postgres:{values['port']}@127.0.0.1:port/db")
    monkeypatch.setenv("DRPANEL_SECRET_REFUSED", f"postgresql://postgres:{values['refused']}@127.0.0.1:1/db")
    monkeypatch.setenv("DRPANEL_SECRET_CONNINFO", f"host=127.0.0.1 port=1 dbname=db password={values['conninfo']}")
    monkeypatch.setenv("DRPANEL_SECRET_S3_KEY", values["s3key"])
    monkeypatch.setenv("DRPANEL_SECRET_S3_SECRET", values["s3secret"])
    admin = UserFactory(username="admin", role="Admin", is_staff=True)
    token = api_token_create(actor=None, user=admin, name="canary")[1]
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    client = Client()
    client.force_login(admin)
    systems = {name: System.objects.create(name=name.lower().replace("_", "-"),
                                           database_ref=f"env:DRPANEL_SECRET_{name}")
               for name in ("NOT_A_URL", "BAD_PORT", "REFUSED", "CONNINFO")}
    good = System.objects.create(name="good", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL")
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="exists")
    for name, endpoint, bucket in (("s3-missing-bucket", s3_endpoint, "no-such-bucket-canary"),
                                   ("s3-refused", "http://127.0.0.1:1", "exists")):
        StorageLocation.objects.create(name=name, kind="s3", role="offsite", bucket=bucket, region="us-east-1",
                                       endpoint_url=endpoint, access_key_ref="env:DRPANEL_SECRET_S3_KEY",
                                       secret_key_ref="env:DRPANEL_SECRET_S3_SECRET")
    pages, logs = [], tmp_path / "logs"
    with rq_workers(["backup"], log_dir=logs):
        ids = [api.post(f"/api/v1/systems/{s.pk}/backups", {"kind": "full"}, content_type="application/json"
                        ).json()["id"] for s in [*systems.values(), good]]
        finished = [wait_finished(i) for i in ids]
    for run in finished[:-1]:
        assert run.state == "failed" and run.error, run.system.name
    copies = {c.location.name: c.status for c in finished[-1].artifact.copies.select_related("location")}
    assert copies == {"primary": "ok", "s3-missing-bucket": "missing", "s3-refused": "missing"}
    assert AuditEvent.objects.filter(action="artifact.copied", outcome="failure").count() == 2

    # KMS: the active key is a KMS key whose endpoint refuses connections; canary AWS credentials.
    kms_env = {"DRPANEL_KMS_KEY_ID": values["kmskey"], "DRPANEL_ACTIVE_KEY_ID": f"kms:{values['kmskey']}",
               "DRPANEL_KMS_ENDPOINT_URL": "http://127.0.0.1:1", "DRPANEL_KMS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": values["awskey"], "AWS_SECRET_ACCESS_KEY": values["awssecret"],
               "AWS_MAX_ATTEMPTS": "1"}
    with rq_workers(["backup"], log_dir=logs, env=kms_env):
        kms_run = wait_finished(api.post(f"/api/v1/systems/{good.pk}/backups", {"kind": "full"},
                                         content_type="application/json").json()["id"])
    assert kms_run.state == "failed" and kms_run.error
    for run in [*finished, kms_run]:
        pages.append(api.get(f"/api/v1/backup-runs/{run.pk}"))
        pages.append(client.get(reverse("backups:run-detail", args=[run.pk])))
    pages.append(client.get(reverse("backups:location-list")))
    assert_nowhere(values, pages=pages, logs=logs, api=api)


def assert_nowhere(values: dict, *, pages, logs, api) -> None:
    jsonl = b"".join(api.get("/api/v1/audit/export?format=jsonl").streaming_content)
    with zipfile.ZipFile(io.BytesIO(b"".join(api.get("/api/v1/audit/export?format=csv").streaming_content))) as z:
        csv = b"".join(z.read(name) for name in z.namelist())
    assert b"backup.failed" in jsonl and b"backup.failed" in csv
    url = worker_env()["DATABASE_URL"]
    with psycopg.connect(url) as conn:
        major = pgtools.server_facts(conn)["server_major"]
    dump = subprocess.run([pgbin.find_tool("pg_dump", major).path], env=pgtools.libpq_env(url),
                          capture_output=True, check=True).stdout
    assert b"backup.failed" in dump
    worker_log = b"".join(p.read_bytes() for p in logs.iterdir())
    assert b"backup_run_job" in worker_log
    places = {"pg_dump of the panel's database": dump, "the workers' logs": worker_log, "the JSON Lines export": jsonl,
              "the CSV export": csv, "pages and API answers": b"".join(p.content for p in pages)}
    for place, content in places.items():
        for name, value in values.items():
            assert value.encode() not in content, f"the {name} canary is in {place}"


def test_the_scrubber_removes_passwords_and_resolved_values(monkeypatch):
    from drpanel import secrets as references

    monkeypatch.setenv("DRPANEL_SECRET_WORDS", "correct horse battery9staple")
    assert references.resolve("env:DRPANEL_SECRET_WORDS") == "correct horse battery9staple"
    text = ('invalid connection option: postgresql://app:s3cr3t-pw@db:5432/x; host=h password=\'a b\' port=1; '
            'missing "=" after "battery9staple" in connection info string')
    cleaned = scrub(text)
    assert "s3cr3t-pw" not in cleaned and "a b'" not in cleaned and "battery9staple" not in cleaned
    assert "postgresql://app:***@db:5432/x" in cleaned and "password=***" in cleaned
    assert "missing \"=\" after" in cleaned and "connection option" in cleaned


def test_a_secret_that_appears_after_a_scrub_is_scrubbed_too(monkeypatch, settings):
    """The list of known secrets is kept between log records, and worked out again when what it reads changes."""
    from drpanel import secrets as references

    text = "late-canary-env-1 late-canary-ref-2 late-canary-prefix-3"
    assert scrub(text) == text
    monkeypatch.setenv("DRPANEL_SECRET_LATE", "late-canary-env-1")
    assert scrub(text) == "*** late-canary-ref-2 late-canary-prefix-3"
    monkeypatch.setenv("DRPANEL_FUZZY_REF", "late-canary-ref-2")
    monkeypatch.setenv("OTHER_LATE", "late-canary-prefix-3")
    settings.SECRET_ENV_PREFIXES = ["DRPANEL_SECRET_", "OTHER_"]
    assert scrub(text) == "*** late-canary-ref-2 ***"
    monkeypatch.setattr(references, "_resolved", {*references.resolved_values(), "late-canary-ref-2"})
    assert scrub(text) == "*** *** ***"
