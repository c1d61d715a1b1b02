"""The verification ladder of base backups against a real protected server, a real Barman and real RQ workers.

One protected server and one Barman home serve the module (as in ``test_pitr.py``); each test takes
its own base backup. Scratch copies go to a directory of the test's own
(``DRPANEL_RESTORE_TEMP_DIR``) so that what is left there after a run can be seen. Nothing is mocked.
"""

import shutil
import tempfile
from pathlib import Path

import pytest
from django.urls import reverse

from backups.models import Artifact, BackupRun, System
from backups.runs import backup_request, backup_run_execute
from compliance.health import health_evaluate
from compliance.models import AuditEvent
from restores import cancel, targets, verifications
from restores.models import SanityCheck, VerificationRun
from tests import continuous_support
from tests.continuous_support import URL_VARIABLE, streams
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.restore_fixtures"]
pytestmark = [pytest.mark.slow]

barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings


@pytest.fixture
def scratch_dir(settings):
    """Where recovered copies go: readable by ``postgres`` (who runs them), empty before, inspected after."""
    path = Path(tempfile.mkdtemp(prefix="dl-"))
    path.chmod(0o755)
    settings.RESTORE_TEMP_DIR = str(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def deep_scratch_dir(settings):
    """A scratch directory too deep for the recovered server's socket (sun_path holds 107 bytes): it goes beside."""
    top = Path(tempfile.mkdtemp(prefix="drpanel-ladder-deep-"))
    path = top / "a-directory-deep-enough-for-a-socket-path-to-overflow"
    path.mkdir()
    for directory in (top, path):
        directory.chmod(0o755)
    settings.RESTORE_TEMP_DIR = str(path)
    yield path
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def shop(db, server, settings, monkeypatch):
    server.execute("DROP DATABASE IF EXISTS shop WITH (FORCE)")
    server.execute("CREATE DATABASE shop")
    server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname="shop")
    url = f"postgresql://postgres:{continuous_support.PASSWORD}@127.0.0.1:{server.port}/shop"
    monkeypatch.setenv("DRPANEL_SECRET_TEST_LADDER_SHOP_URL", url)
    # Each test queues the verification it means; the one a new base backup queues is tested on its own.
    settings.BACKUP_SUCCEEDED_HOOK = ""
    return System.objects.create(name="shop", database_ref="env:DRPANEL_SECRET_TEST_LADDER_SHOP_URL",
                                 continuous_enabled=True)


def with_sanity_check(system, expectation: str) -> None:
    """A target receiving ``system`` whose sanity check counts the orders (restore-tests run it)."""
    targets.target_create(actor=None, name="shop-staging", environment="staging", database_ref=f"env:{URL_VARIABLE}",
                          system=system, health_checks=[], sanity_checks=[
                              {"name": "orders replayed", "query": "SELECT count(*) FROM orders",
                               "expectation": expectation}])


def take_base_backup(system, actor) -> Artifact:
    run = backup_request(actor=actor, system=system, kind="base")
    run = backup_run_execute(run.id)
    assert run.state == BackupRun.State.SUCCEEDED, run.error
    return run.artifact


def states(run) -> dict:
    return {r["name"]: r["state"] for r in run.results}


def postmasters_on(directory: Path) -> list[int]:
    """The processes whose command line names ``directory`` (a temporary server still running there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(directory).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def leftovers(run) -> list[Path]:
    """What is named after the run in the system's temporary directory (a socket directory put beside)."""
    return list(Path(tempfile.gettempdir()).glob(f"drpanel-run-{run.pk}-*"))


def assert_copy_gone(run, step: dict, scratch_dir: Path) -> None:
    """The scratch directory the step used is gone, nothing is left beside it, and its server is stopped."""
    used = Path(step["data"]["scratch"])
    assert used.parent == scratch_dir and used.name.startswith(f"drpanel-run-{run.pk}-pitr-")
    assert not used.exists(), f"{used} was left behind"
    assert list(scratch_dir.iterdir()) == []
    assert leftovers(run) == []
    assert postmasters_on(used) == [], "the temporary server still runs"
    assert step["data"]["port"] > 0


def test_a_good_base_verifies_on_both_steps_through_a_real_worker(transactional_db, shop, server, barman_home,
                                                                   scratch_dir, operator, clients):
    streams(server)
    base = take_base_backup(shop, operator)
    # Written after the base backup: only WAL replay brings them back, so the check proves "the latest point".
    for item in ("after-1", "after-2", "after-3"):
        server.execute("INSERT INTO orders (item) VALUES (%s)", item, dbname="shop")
    with_sanity_check(shop, "= 3")

    run = verifications.verification_request(actor=operator, artifact=base, level="restore-test")
    with rq_workers(["verify"], env={"DRPANEL_BARMAN_HOME": barman_home,
                                     "DRPANEL_RESTORE_TEMP_DIR": scratch_dir}):
        run = wait_for(lambda: VerificationRun.objects.filter(pk=run.pk, state__in=["succeeded", "failed"]).first(),
                       timeout=300, what="the verification of the base backup")

    assert run.state == "succeeded", run.error
    assert run.reached_level == "restore-test" and states(run) == {"manifest": "succeeded",
                                                                   "restore-test": "succeeded"}
    manifest, restore_test = run.results
    assert manifest["duration_ms"] > 0 and restore_test["duration_ms"] > 0
    assert "backup_manifest" in manifest["detail"]
    timings = restore_test["data"]["timings"]
    assert timings["recover_s"] > 0 and timings["start_s"] > 0 and timings["total_s"] >= timings["recover_s"]
    [check] = restore_test["data"]["sanity_checks"]
    assert check["ok"] is True and check["name"] == "orders replayed"
    assert "1 sanity check(s) passed on shop" in restore_test["detail"]
    assert_copy_gone(run, restore_test, scratch_dir)
    base.refresh_from_db()
    assert base.last_verified_level == "restore-test" and base.last_verified_at == run.finished_at
    actions = list(AuditEvent.objects.filter(object_id=str(base.pk), action__startswith="verification.")
                   .order_by("seq").values_list("action", flat=True))
    assert actions == ["verification.requested", "verification.started", "verification.succeeded"]
    succeeded = AuditEvent.objects.get(object_id=str(base.pk), action="verification.succeeded")
    assert succeeded.details["results"] == {"manifest": "succeeded", "restore-test": "succeeded"}

    page = clients["auditor"].get(reverse("restores:verification-detail", args=[run.pk])).content.decode()
    assert "barman verify-backup" in page and "Verified at level <strong>restore-test</strong>" in page
    assert "<td>manifest</td>" in page and "<td>restore-test</td>" in page
    artifact_page = clients["auditor"].get(reverse("backups:artifact-detail", args=[base.pk])).content.decode()
    assert "Last verified at level <strong>restore-test</strong>" in artifact_page
    check = next(c for c in health_evaluate(shop).checks if c.code == "verified")
    assert check.passed, check.reason


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "said"), [("flip", "checksum mismatch"),
                                               ("plant", "present on disk but not in the manifest")])
def test_a_corrupted_base_fails_the_manifest_step_naming_the_file_and_is_never_recovered(
        shop, server, scratch_dir, operator, barman_home, damage, said):
    streams(server)
    base = take_base_backup(shop, operator)
    data_dir = barman_home / "shop" / "base" / base.manifest["backup_id"] / "data"
    victim = max((p for p in (data_dir / "base").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    if damage == "plant":
        # A file slipped into the backup (say, a trigger file or a script for recovery to pick up).
        victim = victim.parent / "planted.sql"
        victim.write_text("DROP TABLE orders;\n")
    relative = str(victim.relative_to(data_dir))
    if damage == "flip":
        flip_a_byte(victim)
    try:
        run = verifications.verification_request(actor=operator, artifact=base, level="restore-test")
        run = verifications.verification_execute(run.pk)
    finally:
        if damage == "flip":
            flip_a_byte(victim)
        else:
            victim.unlink()

    assert run.state == "failed" and run.reached_level == ""
    assert states(run) == {"manifest": "failed", "restore-test": "not run"}
    assert relative in run.error and said in run.error
    assert relative in run.results[0]["detail"]
    assert run.results[1]["started_at"] is None
    assert list(scratch_dir.iterdir()) == [], "a recovery was started after the manifest failed"
    base.refresh_from_db()
    assert base.last_verified_level == "" and base.last_verified_at is None
    failed = AuditEvent.objects.get(object_id=str(base.pk), action="verification.failed")
    assert failed.outcome == "failure" and relative in failed.details["error"]
    assert failed.details["results"] == {"manifest": "failed", "restore-test": "not run"}


def test_a_failing_sanity_check_fails_the_restore_test_and_the_copy_is_stopped_and_removed(
        shop, server, deep_scratch_dir, operator):
    scratch_dir = deep_scratch_dir
    streams(server)
    base = take_base_backup(shop, operator)
    server.execute("INSERT INTO orders (item) VALUES ('only one')", dbname="shop")
    with_sanity_check(shop, "= 999")

    run = verifications.verification_request(actor=operator, artifact=base, level="restore-test")
    run = verifications.verification_execute(run.pk)

    assert run.state == "failed" and run.reached_level == "manifest"
    assert states(run) == {"manifest": "succeeded", "restore-test": "failed"}
    assert "orders replayed" in run.error and "stopped and removed" in run.error
    restore_test = run.results[1]
    [check] = restore_test["data"]["sanity_checks"]
    assert check["ok"] is False
    assert_copy_gone(run, restore_test, scratch_dir)
    base.refresh_from_db()
    # The manifest passed: the base is verified at that level (it ranks with structure), not at restore-test.
    assert base.last_verified_level == "manifest"


def test_a_new_base_backup_queues_its_own_manifest_check(shop, server, operator, settings):
    settings.BACKUP_SUCCEEDED_HOOK = "restores.verifications.verify_new_backup"
    streams(server)
    base = take_base_backup(shop, operator)

    run = VerificationRun.objects.get(artifact=base)

    assert (run.level, run.trigger, run.requested_by) == ("manifest", "backup", None)
    run = verifications.verification_execute(run.pk)
    assert run.state == "succeeded" and states(run) == {"manifest": "succeeded"}, run.error


def test_a_restore_test_cancelled_while_its_server_runs_leaves_no_server_and_no_directory(
        transactional_db, shop, server, barman_home, deep_scratch_dir, operator):
    scratch_dir = deep_scratch_dir
    streams(server)
    base = take_base_backup(shop, operator)
    # A slow sanity check holds the recovered server up long enough to kill its work horse under it.
    with_sanity_check(shop, "= 1")
    SanityCheck.objects.filter(target__system=shop).update(query="SELECT count(*) FROM pg_sleep(25)")

    run = verifications.verification_request(actor=operator, artifact=base, level="restore-test")
    with rq_workers(["verify"], env={"DRPANEL_BARMAN_HOME": barman_home,
                                     "DRPANEL_RESTORE_TEMP_DIR": scratch_dir}):
        scratch = wait_for(lambda: next((p for p in scratch_dir.iterdir() if postmasters_on(p)), None),
                           timeout=240, what="the recovered server running in the scratch directory")
        assert scratch.name.startswith(f"drpanel-run-{run.pk}-pitr-")
        # The sanity check sleeps in it: the server answers on its socket, put beside the deep directory.
        wait_for(lambda: list((Path(tempfile.gettempdir())).glob(f"drpanel-run-{run.pk}-pitr-sock-*/.s.PGSQL.*")),
                 timeout=60, what="the recovered server's socket")
        run.refresh_from_db()
        assert run.needs_cleanup is True and run.state == "running"
        run = cancel.verification_cancel(actor=operator, run=run)

    assert run.state == "cancelled" and run.needs_cleanup is False
    assert postmasters_on(scratch) == [], "the work horse was killed, and its server with it by the tidy"
    assert list(scratch_dir.iterdir()) == [] and leftovers(run) == []
    base.refresh_from_db()
    assert base.last_verified_level == ""
    assert AuditEvent.objects.filter(object_id=str(base.pk), action="verification.cancelled").count() == 1


def refusing_hook(artifact):
    """A backup-succeeded hook that fails (as a refused verification request would)."""
    raise verifications.VerificationError(f"refused for {artifact.pk}")


def test_a_failing_verification_hook_never_undoes_the_base_backup(shop, server, operator, settings):
    settings.BACKUP_SUCCEEDED_HOOK = f"{__name__}.refusing_hook"
    streams(server)

    base = take_base_backup(shop, operator)

    assert Artifact.objects.filter(pk=base.pk, kind="base", status="available").exists()
    assert AuditEvent.objects.filter(action="backup.succeeded", object_id=str(base.pk)).exists()
    assert not VerificationRun.objects.filter(artifact=base).exists()
