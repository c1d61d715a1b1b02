"""Plain SQL from storage is screened before psql sees it, and psql runs without the worker's secrets.

Attacks, each through a real worker process restoring into a real PostgreSQL target: a planted
plain dump with ``\\! touch FILE``, one with ``\\c postgres``, one hiding ``\\!`` after a statement on
the same line and one hiding it behind a string that ends differently when
``standard_conforming_strings`` is off. Each is refused before anything is created: a clear error,
FILE not created, no side database, the target untouched, and a ``restore.failed`` audit event
naming the refusal. The restore-test level of a verification refuses the same way. A script that
passes the screen runs as ``DRPANEL_PLAIN_SQL_ROLE`` when set: a non-superuser cannot create a
superuser.
"""

import os
import secrets
import subprocess
import time

import psycopg
import pytest

from compliance.models import AuditEvent
from restores import plainsql, requests, sqlscreen
from restores.models import RestoreRun, VerificationRun
from restores.verifications import verification_request
from tests.loop_support import store_artifact
from tests.restore_support import pg_dump_for_server
from tests.support import rq_workers

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def wait_finished(model, pk, timeout=120):
    deadline = time.monotonic() + timeout
    while (row := model.objects.get(pk=pk)).state in ("queued", "running", "awaiting_approval"):
        assert time.monotonic() < deadline, f"{model.__name__} {pk} did not finish: {row.state}"
        time.sleep(0.3)
    return row


def shop_dump(shop: str, *extra: str) -> bytes:
    return subprocess.run([pg_dump_for_server(), *extra, "--dbname", shop], capture_output=True, check=True).stdout


def planted(dump: bytes, line: bytes) -> bytes:
    """The dump with ``line`` inserted right after its first CREATE TABLE statement (mid-file, outside COPY)."""
    at = dump.index(b");\n", dump.index(b"CREATE TABLE")) + 3
    return dump[:at] + line + b"\n" + dump[at:]


ATTACKS = {
    "shell": (b"\\! touch {file}", "\\!"),
    "connect": (b"\\c postgres\nCREATE TABLE pwned_{tag} (x int);", "\\c"),
    "same line": (b"SELECT 1; \\! touch {file}", "\\!"),
    "string trick": (b"SET standard_conforming_strings = off;\nSELECT 'a\\' 'b \\! touch {file}';", "\\!"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_planted_meta_command_is_refused_by_the_worker_before_anything_runs(
        attack, operator, shop_system, staging, scratch, shop, tmp_path):
    canary_file = tmp_path / f"pwned-{secrets.token_hex(4)}"
    tag = secrets.token_hex(4)
    line, command = ATTACKS[attack]
    dump = planted(shop_dump(shop), line.replace(b"{file}", str(canary_file).encode()).replace(b"{tag}", tag.encode()))
    artifact = store_artifact(shop_system, kind="full", fmt="pg_plain", plaintext=dump)
    before = scratch.databases()

    with rq_workers(["restore"]):
        run = requests.restore_request(actor=operator, artifact=artifact, target=staging, mode="database-only",
                                   confirm=staging.name)
        run = wait_finished(RestoreRun, run.pk)

    assert run.state == "failed"
    assert "refused to run the plain SQL dump" in run.error and f"meta-command ({command})" in run.error
    assert not canary_file.exists(), "the shell command ran"
    assert scratch.databases() == before, "a side database was left (or created by the script)"
    assert scratch.marker(scratch.name("shop_staging")) == "before", "the target changed"
    with psycopg.connect(scratch.url("postgres")) as conn:
        assert conn.execute("SELECT to_regclass(%s)", [f"pwned_{tag}"]).fetchone()[0] is None
    failed = AuditEvent.objects.get(action="restore.failed", object_id=str(run.pk))
    assert "meta-command" in failed.details["error"] and failed.details["target_untouched"] is True


def test_a_restore_test_refuses_a_planted_connect_and_creates_no_throwaway_database(
        operator, shop_system, shop, scratch, tmp_path):
    tag = secrets.token_hex(4)
    dump = planted(shop_dump(shop), f"\\connect postgres\nCREATE TABLE pwned_{tag} (x int);".encode())
    artifact = store_artifact(shop_system, kind="full", fmt="pg_plain", plaintext=dump)
    before = scratch.databases()

    with rq_workers(["verify"]):
        run = verification_request(actor=operator, artifact=artifact, level="restore-test")
        run = wait_finished(VerificationRun, run.pk)

    assert run.state == "failed" and run.reached_level != "restore-test"
    assert "meta-command (\\connect)" in run.error
    assert scratch.databases() == before
    with psycopg.connect(scratch.url("postgres")) as conn:
        assert conn.execute("SELECT to_regclass(%s)", [f"pwned_{tag}"]).fetchone()[0] is None
    event = AuditEvent.objects.get(action="verification.failed", object_id=str(artifact.pk))
    assert "meta-command" in event.details["error"]


def test_psql_gets_the_connection_and_nothing_of_the_workers_environment(monkeypatch):
    for name in ("DRPANEL_KEYS", "AWS_SECRET_ACCESS_KEY", "DATABASE_URL", "REDIS_URL", "DRPANEL_SECRET_X"):
        monkeypatch.setenv(name, f"canary-{name}")
    conninfo, env = plainsql.client_environment("postgresql://u:pw@db.example:5433/app", "app__restore_1")
    assert env["PGPASSWORD"] == "pw" and "pw" not in conninfo and "app__restore_1" in conninfo
    assert set(env) == {"PATH", "LC_ALL", "PGPASSFILE", "PGSERVICEFILE", "PGSYSCONFDIR", "PGAPPNAME", "PGPASSWORD"}
    assert not any("canary" in value for value in env.values())


def test_a_pg_dump_plain_file_passes_the_screen_whole(shop, tmp_path):
    path = tmp_path / "dump.sql"
    path.write_bytes(shop_dump(shop))
    result = sqlscreen.screen_plain_sql(path)
    assert result.copy_blocks == 3 and result.bytes_read == path.stat().st_size


@pytest.fixture
def restore_role(scratch):
    name = f"drt_restorer_{secrets.token_hex(4)}"
    with scratch.admin() as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
    yield name
    scratch.drop_all()  # the role owns tables in the restored databases
    with scratch.admin() as conn:
        conn.execute(f"DROP ROLE IF EXISTS {name}")


def test_a_script_that_passes_the_screen_runs_as_the_restore_role_without_superuser_rights(
        operator, shop_system, staging, scratch, shop, restore_role):
    evil = f"drt_evil_{secrets.token_hex(4)}"
    clean = shop_dump(shop, "--no-owner", "--no-privileges")
    attack = store_artifact(shop_system, kind="full", fmt="pg_plain",
                            plaintext=planted(clean, f"CREATE ROLE {evil} SUPERUSER LOGIN;".encode()))
    good = store_artifact(shop_system, kind="full", fmt="pg_plain", plaintext=clean)

    with rq_workers(["restore"], env={"DRPANEL_PLAIN_SQL_ROLE": restore_role}):
        refused = wait_finished(RestoreRun, requests.restore_request(
            actor=operator, artifact=attack, target=staging, mode="database-only", confirm=staging.name).pk)
        restored = wait_finished(RestoreRun, requests.restore_request(
            actor=operator, artifact=good, target=staging, mode="database-only", confirm=staging.name).pk)

    assert refused.state == "failed" and "must be superuser" in refused.error
    with scratch.admin() as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [evil]).fetchone() is None
    assert restored.state == "succeeded", restored.error
    live = scratch.name("shop_staging")
    assert scratch.marker(live) == "restored"
    with psycopg.connect(scratch.url(live)) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'users'").fetchone()[0]
    assert owner == restore_role


def test_screening_reads_a_large_copy_block_in_constant_memory(tmp_path):
    path = tmp_path / "big.sql"
    row = b"\\N\t" + b"x\\\\y" * 64 + b"\n"
    with open(path, "wb") as f:
        f.write(b"CREATE TABLE t (a int, b text);\nCOPY public.t (a, b) FROM stdin;\n")
        for _ in range(64):
            f.write(row * 4096)
        f.write(b"\\.\n\\! touch nowhere\n")
    with pytest.raises(sqlscreen.UnsafeScriptError, match=r"line \d+: a psql meta-command \(\\!\)"):
        sqlscreen.screen_plain_sql(path)
    assert os.path.getsize(path) > 60 << 20
