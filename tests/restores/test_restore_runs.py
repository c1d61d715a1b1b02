"""Restore runs through their services: requests, four-eyes approval, the worker's path (run in this process),
swaps, health, rollback, the rollback window and the post-recovery checklist — on real databases."""

import io
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from backups.keys import KeyConfig
from backups.models import Artifact, BackupRun
from compliance.models import AuditEvent
from drpanel.models import Approval
from drpanel.passwords import PasswordRefused
from drpanel.permissions import Denied
from restores import configs, execution, recovery_checks, requests, rollback, runstate, targets
from restores.models import HealthCheck, RecoveryCheck, RestoreRun, Target
from restores.selectors import restore_running
from tests.loop_support import copy_marker, store_artifact, stored_path, take_backup
from tests.restore_support import pg_dump_for_server
from tests.restores.test_restores_configs import BAD_TARS, make_tar

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = pytest.mark.django_db


def request(actor, artifact, target, mode="database-only", **extra) -> RestoreRun:
    return requests.restore_request(actor=actor, artifact=artifact, target=target, mode=mode, confirm=target.name,
                                    **extra)


def execute(run) -> RestoreRun:
    return execution.restore_run_execute(run.pk)


def live(scratch, target) -> str:
    return scratch.name(target.name.replace("-", "_"))


def actions(run) -> list[str]:
    return list(AuditEvent.objects.filter(object_type="restores.restorerun", object_id=str(run.pk))
                .order_by("seq").values_list("action", flat=True))


# --- requests ----------------------------------------------------------------------------------


def test_a_staging_restore_is_queued_at_once_and_audited(operator, full_artifact, staging):
    run = request(operator, full_artifact, staging, is_drill=True, reason="weekly drill")
    assert run.state == "queued" and run.queued_at and run.approval is None and run.is_drill
    assert actions(run) == ["restore.requested", "restore.queued"]
    event = AuditEvent.objects.get(action="restore.requested")
    assert event.actor_username == "operator" and event.details["target"] == "shop-staging"


@pytest.mark.parametrize(("change", "message"), [
    ({"confirm": "shop-stagin"}, "type the target's name"),
    ({"confirm": ""}, "type the target's name"),
    ({"mode": "everything"}, "unknown mode"),
    ({"mode": "config-only"}, "needs a config artifact"),
])
def test_bad_requests_are_refused_and_nothing_is_recorded(operator, full_artifact, staging, change, message):
    fields = {"actor": operator, "artifact": full_artifact, "target": staging, "mode": "database-only",
              "confirm": "shop-staging", **change}
    with pytest.raises(runstate.RestoreError, match=message):
        requests.restore_request(**fields)
    assert not RestoreRun.objects.exists()


def test_an_artifact_of_another_system_is_refused_by_a_target_bound_to_its_system(operator, full_artifact, staging,
                                                                                  scratch, monkeypatch, tmp_path):
    from backups.models import System

    other = System.objects.create(name="other", database_ref="env:DRPANEL_SECRET_NOPE")
    Target.objects.filter(pk=staging.pk).update(system=other)
    staging.refresh_from_db()
    with pytest.raises(runstate.RestoreError, match="receives other; this artifact is of shop"):
        request(operator, full_artifact, staging)


def test_drills_never_go_into_production_and_inactive_targets_take_nothing(operator, full_artifact, production,
                                                                           staging):
    with pytest.raises(runstate.RestoreError, match="drills go into staging"):
        request(operator, full_artifact, production, is_drill=True)
    Target.objects.filter(pk=staging.pk).update(is_active=False)
    staging.refresh_from_db()
    with pytest.raises(runstate.RestoreError, match="deactivated"):
        request(operator, full_artifact, staging)


def test_without_restore_to_target_the_request_is_denied(auditor, admin, full_artifact, staging):
    for user in (auditor, admin):
        with pytest.raises(Denied):
            request(user, full_artifact, staging)
    assert not RestoreRun.objects.exists()


def test_one_active_restore_per_target_is_enforced_by_the_database(operator, manager, full_artifact, staging):
    targets.target_right_grant(actor=None, target=staging, user=manager, right="restore_to_target")
    first = request(operator, full_artifact, staging)
    with pytest.raises(runstate.RestoreConflict, match=f"already in flight \\(run {first.short_id}, queued\\)"):
        request(manager, full_artifact, staging)
    with pytest.raises(IntegrityError), transaction.atomic():
        RestoreRun.objects.create(artifact=full_artifact, target=staging, mode="database-only",
                                  requested_by=manager, state="running")
    RestoreRun.objects.filter(pk=first.pk).update(state="failed")
    assert request(manager, full_artifact, staging).state == "queued"


def test_the_restore_running_hook_tells_retention_about_restores_in_flight(operator, full_artifact, staging, settings):
    from backups import hooks

    assert settings.BACKUP_RESTORE_RUNNING_HOOK == "restores.selectors.restore_running"
    assert not hooks.restore_running(full_artifact.system)
    run = request(operator, full_artifact, staging)
    assert hooks.restore_running(full_artifact.system) and restore_running(full_artifact.system)
    RestoreRun.objects.filter(pk=run.pk).update(state="succeeded")
    assert not hooks.restore_running(full_artifact.system)


# --- the worker's path -----------------------------------------------------------------------


def test_a_staging_restore_swaps_the_restored_database_in_and_keeps_the_old_one(operator, full_artifact, staging,
                                                                                scratch, temp_dir):
    run = execute(request(operator, full_artifact, staging, is_drill=True))
    assert run.state == "succeeded", run.error
    name = live(scratch, staging)
    assert scratch.marker(name) == "restored"
    assert copy_marker(scratch, f"{name}__pre_{run.pk.hex[:12]}") == "before"
    assert scratch.scalar(name, "SELECT count(*) FROM orders") == 2000
    assert [s["state"] for s in run.steps] == ["succeeded"] * 8
    assert run.percent == 100 and run.eta_seconds is None
    assert run.plan["mode"] == "file" and run.plan["jobs"] == 2
    assert run.swapped_at and run.healthy_at and run.rollback_until - run.swapped_at == timedelta(hours=24)
    assert 0 < run.rto_seconds == pytest.approx((run.healthy_at - run.created_at).total_seconds())
    assert run.rpo_seconds == pytest.approx((run.swapped_at - full_artifact.created_at).total_seconds())
    assert actions(run) == ["restore.requested", "restore.queued", "restore.started", "restore.swapped",
                            "restore.succeeded"]
    assert not RecoveryCheck.objects.exists(), "the checklist is for production or full restores"
    assert list(temp_dir.iterdir()) == [], "the decrypted archive is removed"


@pytest.mark.parametrize(("damage", "reason"), [("corrupted", "ChunkAuthenticationError"),
                                              ("truncated", "TruncatedArtifactError"),
                                              ("wrong key", "WrongKeyError")])
def test_a_damaged_artifact_is_refused_before_the_target_is_touched(operator, full_artifact, staging, scratch,
                                                                    settings, damage, reason):
    path = stored_path(full_artifact)
    data = bytearray(path.read_bytes())
    if damage == "corrupted":
        data[len(data) // 2] ^= 0x80
    elif damage == "truncated":
        del data[-5000:]
    else:
        settings.BACKUP_KEYS = KeyConfig(master_keys={"k1": os.urandom(32)}, active_key_id="k1", source="test")
    path.write_bytes(bytes(data))
    run = execute(request(operator, full_artifact, staging))
    assert run.state == "failed" and reason in run.error and "refused before anything was restored" in run.error
    assert [s["state"] for s in run.steps][:2] == ["failed", "not run"]
    assert scratch.marker(live(scratch, staging)) == "before"
    assert scratch.databases() == {scratch.name("shop"), live(scratch, staging)}
    assert AuditEvent.objects.get(action="restore.failed").details["target_untouched"] is True


def test_a_failing_sanity_check_drops_the_side_database_and_leaves_the_target(operator, full_artifact, staging,
                                                                              scratch):
    staging.sanity_checks.update(expectation="> 1000")
    run = execute(request(operator, full_artifact, staging))
    assert run.state == "failed" and "1 of 1 sanity checks failed" in run.error and "untouched" in run.error
    assert run.results["sanity_checks"][0]["value"] == "300"
    assert scratch.marker(live(scratch, staging)) == "before"
    assert scratch.databases() == {scratch.name("shop"), live(scratch, staging)}


def test_row_counts_differing_from_the_manifest_stop_the_restore_before_the_swap(operator, full_artifact, staging,
                                                                                scratch):
    manifest = full_artifact.manifest
    manifest["tables"][0]["rows"] += 1
    Artifact.objects.filter(pk=full_artifact.pk).update(manifest=manifest)
    run = execute(request(operator, full_artifact, staging))
    assert run.state == "failed" and "differ from the manifest" in run.error
    assert scratch.marker(live(scratch, staging)) == "before"


def test_it_streams_into_pg_restore_j1_when_the_disk_lacks_room_and_says_so(operator, full_artifact, staging,
                                                                           scratch, settings, temp_dir):
    settings.RESTORE_TEMP_HEADROOM_MB = 10 ** 9
    run = execute(request(operator, full_artifact, staging))
    assert run.state == "succeeded", run.error
    assert run.plan["mode"] == "stream" and run.plan["jobs"] == 1
    assert "streaming into pg_restore -j1 instead" in run.plan["reason"]
    assert run.steps[2]["name"] == "restore into side database" and run.steps[2]["data"]["mode"] == "stream"
    assert scratch.marker(live(scratch, staging)) == "restored"
    assert list(temp_dir.iterdir()) == []


def test_health_checks_failing_after_the_swap_fail_the_run_and_allow_a_rollback(operator, manager, full_artifact,
                                                                                 staging, scratch, health_server,
                                                                                 settings, password):
    settings.RESTORE_HEALTH_WAIT_SECONDS = 1
    health_server.handler.status = 503
    targets.target_right_grant(actor=None, target=staging, user=manager, right="approve_restore")
    run = execute(request(operator, full_artifact, staging))
    assert run.state == "failed" and "health checks failed after the swap" in run.error
    assert run.swapped_at and run.rto_seconds is None
    assert scratch.marker(live(scratch, staging)) == "restored"
    assert rollback.rollback_blocker(run) is None
    run = rollback.restore_rollback(actor=manager, run=run, password=password)
    assert run.state == "rolled_back" and scratch.marker(live(scratch, staging)) == "before"


def test_a_health_url_no_longer_allowed_is_refused_at_run_time(operator, full_artifact, staging, settings):
    settings.RESTORE_HEALTH_WAIT_SECONDS = 5
    Target.objects.filter(pk=staging.pk).update(health_check_hosts=[])
    run = execute(request(operator, full_artifact, staging))
    assert run.state == "failed" and "allowlist" in run.error
    assert run.results["health"]["attempts"] == 1, "a refused URL is not retried"


def test_a_plain_sql_legacy_artifact_is_restored_through_psql(operator, shop_system, staging, scratch, shop):
    dump = subprocess.run([pg_dump_for_server(), "--dbname", shop], capture_output=True, check=True).stdout
    artifact = store_artifact(shop_system, kind="full", fmt="pg_plain", plaintext=dump)
    run = execute(request(operator, artifact, staging))
    assert run.state == "succeeded", run.error
    assert run.steps[2]["name"] == "restore into side database"
    assert run.steps[2]["data"]["mode"].startswith("plain SQL")
    assert scratch.marker(live(scratch, staging)) == "restored"


def test_a_second_delivery_of_the_job_does_nothing(operator, full_artifact, staging):
    run = execute(request(operator, full_artifact, staging))
    events = AuditEvent.objects.count()
    again = execute(run)
    assert again.state == "succeeded" and again.finished_at == run.finished_at
    assert AuditEvent.objects.count() == events


# --- config and full restores ------------------------------------------------------------------


def test_a_config_only_restore_replaces_the_directory_and_keeps_the_old_one(operator, config_artifact, staging):
    run = execute(request(operator, config_artifact, staging, mode="config-only"))
    assert run.state == "succeeded", run.error
    directory = staging.config_dir
    assert Path(f"{directory}/app.env").read_text() == "FEATURE=restored\n"
    assert Path(f"{directory}/nginx/site.conf").read_text() == "server { listen 80; }\n"
    assert Path(f"{directory}.pre-{run.pk.hex[:12]}/app.env").read_text() == "FEATURE=before\n"


def test_a_full_restore_restores_the_database_and_the_nearest_config(operator, manager, full_artifact,
                                                                     config_artifact, staging, scratch, password):
    run = request(operator, full_artifact, staging, mode="full")
    assert run.config_artifact == config_artifact
    run = execute(run)
    assert run.state == "succeeded", run.error
    assert scratch.marker(live(scratch, staging)) == "restored"
    assert Path(f"{staging.config_dir}/app.env").read_text() == "FEATURE=restored\n"
    assert RecoveryCheck.objects.filter(run=run).count() == 10, "a full restore gets the checklist"
    targets.target_right_grant(actor=None, target=staging, user=manager, right="approve_restore")
    rollback.restore_rollback(actor=manager, run=run, password=password)
    assert scratch.marker(live(scratch, staging)) == "before"
    assert Path(f"{staging.config_dir}/app.env").read_text() == "FEATURE=before\n"


@pytest.mark.parametrize("case", ["escape with dot-dot", "absolute path", "symlink out", "character device"])
def test_a_hostile_config_tar_is_refused_with_nothing_written_outside(operator, shop_system, staging, tmp_path, case):
    cases = {"escape with dot-dot": [("../evil.env", "file", "x")], "absolute path": [("/etc/evil", "file", "x")],
             "symlink out": BAD_TARS["symlink out"][0], "character device": BAD_TARS["character device"][0]}
    tar = make_tar(tmp_path / "hostile.tar", [("config/ok.env", "file", "fine"), *cases[case]])
    artifact = store_artifact(shop_system, kind="config", fmt="config_tar", plaintext=tar.read_bytes())
    outside = {p for p in tmp_path.parent.rglob("*")}
    run = execute(request(operator, artifact, staging, mode="config-only"))
    assert run.state == "failed" and run.swapped_at is None
    assert {p for p in tmp_path.parent.rglob("*")} - outside == set(), "nothing new anywhere"
    assert Path(f"{staging.config_dir}/app.env").read_text() == "FEATURE=before\n"


@pytest.mark.parametrize(("limit", "members", "message"), [
    ("CONFIG_RESTORE_MAX_MEMBERS", [(f"config/f{n}", "file", "x") for n in range(30)], "more than 10 members"),
    ("CONFIG_RESTORE_MAX_MB", [("config/big", "file", b"x" * (2 << 20))], "more than 1048576 bytes"),
])
def test_a_config_tar_over_the_limits_is_refused_by_the_restore(operator, shop_system, staging, tmp_path, settings,
                                                                limit, members, message):
    setattr(settings, limit, 10 if limit.endswith("MEMBERS") else 1)
    tar = make_tar(tmp_path / "large.tar", members)
    artifact = store_artifact(shop_system, kind="config", fmt="config_tar", plaintext=tar.read_bytes())
    run = execute(request(operator, artifact, staging, mode="config-only"))
    assert run.state == "failed" and message in run.error
    assert Path(f"{staging.config_dir}/app.env").read_text() == "FEATURE=before\n"
    assert not list(Path(staging.config_dir).parent.glob("*.restore-*"))


def test_a_config_backup_of_one_directory_is_restored_without_its_top_name(tmp_path):
    tar = make_tar(tmp_path / "c.tar", [("config", "dir"), ("config/a.env", "file", "A"), ("config/sub", "dir"),
                                        ("config/sub/b.conf", "file", "B")])
    assert configs.single_top_directory(tar) == "config"
    target = tmp_path / "live"
    target.mkdir()
    new, summary = configs.extract_config_tar(tar, target, "f" * 32, strip_prefix="config")
    assert sorted(p.relative_to(new).as_posix() for p in new.rglob("*")) == ["a.env", "sub", "sub/b.conf"]
    mixed = make_tar(tmp_path / "m.tar", [("a.env", "file", "A"), ("b/c", "file", "C")])
    assert configs.single_top_directory(mixed) is None
    with pytest.raises(configs.ConfigArchiveRefused, match="lies outside config/"):
        configs.check_config_tar(mixed, strip_prefix="config")


# --- four eyes ---------------------------------------------------------------------------------


def test_a_production_restore_waits_for_approval_bound_to_what_was_asked(operator, full_artifact, production):
    run = request(operator, full_artifact, production, reason="users table corrupted")
    assert run.state == "awaiting_approval" and run.queued_at is None
    approval = run.approval
    assert approval.kind == "restore.production" and approval.state == "pending"
    assert approval.binding_hash == run.binding_hash == runstate.current_binding_hash(run)
    assert approval.params["mode"] == "database-only" and approval.params["artifact"] == str(full_artifact.pk)
    assert actions(run) == ["restore.requested", "approval.requested", "restore.awaiting_approval"]


def test_the_manager_approves_with_the_password_and_the_run_is_queued(operator, manager, full_artifact, production,
                                                                      scratch, password):
    run = request(operator, full_artifact, production)
    run = requests.restore_approve(actor=manager, run=run, password=password, note="go")
    assert run.state == "queued" and run.approval.state == "consumed" and run.approval.decided_by == manager
    event = AuditEvent.objects.get(action="restore.approved")
    assert (event.actor_username, event.details["requested_by"], event.details["approved_by"]) == (
        "manager", "operator", "manager")
    run = execute(run)
    assert run.state == "succeeded", run.error
    assert scratch.marker(live(scratch, production)) == "restored"
    assert run.rto_seconds >= (run.queued_at - run.created_at).total_seconds(), "RTO counts from the request"


def test_the_requester_cannot_approve_their_own_restore(manager, full_artifact, production, password):
    run = request(manager, full_artifact, production)
    with pytest.raises(Denied, match="another person"):
        requests.restore_approve(actor=manager, run=run, password=password)
    run.refresh_from_db()
    assert run.state == "awaiting_approval"


def test_a_manager_without_approve_restore_on_the_target_cannot_approve(operator, full_artifact, production,
                                                                        password):
    from tests.factories import UserFactory

    other = UserFactory(username="manager2", role="Manager")
    run = request(operator, full_artifact, production)
    with pytest.raises(Denied):
        requests.restore_approve(actor=other, run=run, password=password)
    assert Approval.objects.get().state == "pending"


def test_a_wrong_password_is_refused_and_audited(operator, manager, full_artifact, production):
    run = request(operator, full_artifact, production)
    with pytest.raises(PasswordRefused):
        requests.restore_approve(actor=manager, run=run, password="not it")
    assert AuditEvent.objects.filter(action="approval.password_refused", actor_username="manager").count() == 1
    run.refresh_from_db()
    assert run.state == "awaiting_approval"


@pytest.mark.parametrize("change", ["target database", "config directory", "artifact bytes"])
def test_any_change_after_the_request_voids_the_approval(operator, manager, full_artifact, production, password,
                                                         change):
    run = request(operator, full_artifact, production)
    if change == "target database":
        Target.objects.filter(pk=production.pk).update(database_ref="env:DRPANEL_SECRET_SOMEWHERE_ELSE")
    elif change == "config directory":
        Target.objects.filter(pk=production.pk).update(config_dir="/srv/elsewhere")
    else:
        Artifact.objects.filter(pk=full_artifact.pk).update(sha256="f" * 64)
    run = RestoreRun.objects.get(pk=run.pk)
    with pytest.raises(runstate.RestoreConflict, match="changed since it was made"):
        requests.restore_approve(actor=manager, run=run, password=password)
    assert AuditEvent.objects.filter(action="approval.binding_mismatch").exists()
    run.refresh_from_db()
    assert run.state == "awaiting_approval"


def test_the_worker_refuses_a_production_run_without_a_consumed_matching_approval(operator, manager, full_artifact,
                                                                                  production, scratch, password):
    sneaky = request(operator, full_artifact, production)
    RestoreRun.objects.filter(pk=sneaky.pk).update(state="queued")  # as if someone edited the row
    run = execute(sneaky)
    assert run.state == "failed" and "refused: its approval is pending" in run.error
    assert scratch.marker(live(scratch, production)) == "before"
    second = request(operator, full_artifact, production)
    second = requests.restore_approve(actor=manager, run=second, password=password)
    Target.objects.filter(pk=production.pk).update(config_dir="/srv/changed-after-approval")
    run = execute(second)
    assert run.state == "failed" and "changed after the approval" in run.error
    assert scratch.marker(live(scratch, production)) == "before"


def test_one_rejection_is_final(operator, manager, full_artifact, production, password):
    run = request(operator, full_artifact, production)
    run = requests.restore_reject(actor=manager, run=run, note="wrong artifact")
    assert run.state == "rejected" and run.approval.state == "rejected"
    with pytest.raises(runstate.RestoreConflict):
        requests.restore_approve(actor=manager, run=RestoreRun.objects.get(pk=run.pk), password=password)
    event = AuditEvent.objects.get(action="restore.rejected")
    assert event.details["rejected_by"] == "manager" and event.details["requested_by"] == "operator"


def test_the_requester_may_withdraw_but_not_an_operator_without_the_right(operator, manager, full_artifact,
                                                                          production):
    from tests.factories import UserFactory

    bystander = UserFactory(username="op2", role="Operator")
    run = request(operator, full_artifact, production)
    with pytest.raises(Denied):
        requests.restore_reject(actor=bystander, run=run)
    run = requests.restore_reject(actor=operator, run=run)
    assert run.state == "rejected" and AuditEvent.objects.get(action="restore.rejected").details["withdrawn"]


def test_an_unapproved_request_expires_after_its_window_and_is_rejected_for_good(operator, manager, full_artifact,
                                                                                 production, password):
    run = request(operator, full_artifact, production)
    assert requests.restore_expire_due() == 0
    Approval.objects.filter(pk=run.approval_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert requests.restore_expire_due() == 1
    run.refresh_from_db()
    assert run.state == "expired" and run.approval.state == "expired"
    with pytest.raises(runstate.RestoreConflict):
        requests.restore_approve(actor=manager, run=run, password=password)
    assert actions(run)[-2:] == ["approval.expired", "restore.expired"]


def test_approving_after_the_expiry_but_before_the_job_expires_it_anyway(operator, manager, full_artifact,
                                                                         production, password):
    run = request(operator, full_artifact, production)
    Approval.objects.filter(pk=run.approval_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(runstate.RestoreConflict, match="expired"):
        requests.restore_approve(actor=manager, run=run, password=password)
    run.refresh_from_db()
    assert run.state == "expired"


def test_the_admin_site_offers_no_way_to_edit_runs_or_approvals(clients, admin):
    from django.contrib import admin as django_admin

    assert RestoreRun not in django_admin.site._registry and Approval not in django_admin.site._registry
    assert clients["admin"].get("/admin/restores/restorerun/").status_code == 404


# --- rollback ------------------------------------------------------------------------------------


def test_a_manager_rolls_back_within_the_window_timed_and_audited(operator, manager, full_artifact, production,
                                                                  scratch, password):
    run = request(operator, full_artifact, production)
    run = execute(requests.restore_approve(actor=manager, run=run, password=password))
    with pytest.raises(Denied):
        rollback.restore_rollback(actor=operator, run=run, password=password)
    with pytest.raises(PasswordRefused):
        rollback.restore_rollback(actor=manager, run=run, password="wrong")
    run = rollback.restore_rollback(actor=manager, run=run, password=password)
    assert run.state == "rolled_back" and run.rolled_back_by == manager and 0 < run.rollback_seconds < 5
    name = live(scratch, production)
    assert scratch.marker(name) == "before"
    assert copy_marker(scratch, f"{name}__failed_{run.pk.hex[:12]}") == "restored"
    event = AuditEvent.objects.get(action="restore.rolled_back")
    assert event.actor_username == "manager" and event.details["database"]["moved_in"].endswith(run.pk.hex[:12])
    assert AuditEvent.objects.filter(action="restore.rollback_password_refused").count() == 1
    with pytest.raises(runstate.RestoreConflict, match="only a restore that was swapped in"):
        rollback.restore_rollback(actor=manager, run=run, password=password)
    pending = run.recovery_checks.get(code="authentication")
    with pytest.raises(runstate.RestoreConflict, match="rolled back: its post-recovery checklist is closed"):
        recovery_checks.recovery_check_tick(actor=operator, check=pending, note="logged in fine")
    pending.refresh_from_db()
    assert pending.status == "pending"


def test_after_the_window_there_is_no_rollback_and_the_copies_are_dropped(operator, manager, full_artifact, staging,
                                                                          scratch, password):
    targets.target_right_grant(actor=None, target=staging, user=manager, right="approve_restore")
    run = execute(request(operator, full_artifact, staging))
    pre = f"{live(scratch, staging)}__pre_{run.pk.hex[:12]}"
    assert pre in scratch.databases()
    assert rollback.restore_copies_drop_due() == 0
    RestoreRun.objects.filter(pk=run.pk).update(rollback_until=timezone.now() - timedelta(seconds=1))
    run.refresh_from_db()
    assert "window has passed" in rollback.rollback_blocker(run)
    assert rollback.restore_copies_drop_due() == 1
    assert pre not in scratch.databases() and scratch.marker(live(scratch, staging)) == "restored"
    run.refresh_from_db()
    assert run.copies_dropped_at and AuditEvent.objects.get(action="restore.copies_dropped").details["dropped"] == [pre]


def test_a_later_restore_must_be_rolled_back_first(operator, manager, full_artifact, staging, password):
    targets.target_right_grant(actor=None, target=staging, user=manager, right="approve_restore")
    first = execute(request(operator, full_artifact, staging))
    second = execute(request(operator, full_artifact, staging))
    assert "a later restore" in rollback.rollback_blocker(first)
    rollback.restore_rollback(actor=manager, run=second, password=password)
    first.refresh_from_db()
    assert rollback.rollback_blocker(first) is None


# --- the post-recovery checklist ---------------------------------------------------------------


def test_a_production_restore_gets_the_ten_items_and_the_panel_ticks_what_it_can(operator, manager, full_artifact,
                                                                                 production, password):
    run = execute(requests.restore_approve(actor=manager, run=request(operator, full_artifact, production),
                                           password=password))
    checks = {c.code: c for c in run.recovery_checks.all()}
    assert len(checks) == 10 and [c.position for c in run.recovery_checks.all()] == list(range(10))
    assert checks["database_connectivity"].status == "passed"
    assert checks["tables_intact"].status == "passed" and "3 of 3 tables" in checks["tables_intact"].summary
    assert checks["application_running"].status == "passed" and "→ 200" in checks["application_running"].summary
    assert checks["backups_reenabled"].status == "pending" and "waiting for the first full backup" in \
        checks["backups_reenabled"].summary
    assert {c.status for code, c in checks.items() if not c.automatic} == {"pending"}
    take_backup(run.artifact.system)
    assert recovery_checks.recovery_checks_refresh_open() == 1
    backups = RecoveryCheck.objects.get(run=run, code="backups_reenabled")
    assert backups.status == "passed" and backups.evidence[0]["url"].startswith("/backups/runs/")
    assert BackupRun.objects.filter(pk=backups.evidence[0]["object_id"]).exists()


def test_people_tick_the_manual_items_with_a_note_not_the_automatic_ones(operator, manager, auditor, full_artifact,
                                                                         production, password):
    run = execute(requests.restore_approve(actor=manager, run=request(operator, full_artifact, production),
                                           password=password))
    payments = run.recovery_checks.get(code="payments")
    with pytest.raises(runstate.RestoreError, match="note"):
        recovery_checks.recovery_check_tick(actor=operator, check=payments, note=" ")
    with pytest.raises(Denied):
        recovery_checks.recovery_check_tick(actor=auditor, check=payments, note="checked")
    ticked = recovery_checks.recovery_check_tick(actor=operator, check=payments,
                                                 note="test payment of 1 USD went through")
    assert ticked.status == "done" and ticked.ticked_by == operator
    with pytest.raises(runstate.RestoreConflict, match="already ticked"):
        recovery_checks.recovery_check_tick(actor=manager, check=payments, note="again")
    with pytest.raises(runstate.RestoreConflict, match="decided by the panel"):
        tables_intact = run.recovery_checks.get(code="tables_intact")
        recovery_checks.recovery_check_tick(actor=operator, check=tables_intact, note="ok")
    assert AuditEvent.objects.filter(action="restore.checklist_ticked").count() == 1


def test_checking_again_sees_a_health_url_that_recovered(operator, manager, full_artifact, production, password,
                                                         health_server, settings):
    settings.RESTORE_HEALTH_WAIT_SECONDS = 1
    health_server.handler.status = 500
    run = execute(requests.restore_approve(actor=manager, run=request(operator, full_artifact, production),
                                           password=password))
    assert run.recovery_checks.get(code="application_running").status == "failed"
    health_server.handler.status = 200
    recovery_checks.recovery_checks_refresh(run, actor=operator)
    assert run.recovery_checks.get(code="application_running").status == "passed"
    asked = AuditEvent.objects.filter(action="restore.checklist_refreshed").latest("seq")
    assert asked.actor_username == operator.username and asked.details["statuses"]["application_running"] == "passed"


def test_the_checklist_validator_accepts_a_staging_restore_of_the_week(operator, full_artifact, staging, production,
                                                                       manager, password):
    from drpanel.evidence import EvidenceRejected, validator_for

    validator = validator_for("weekly.staging_restore")
    run = execute(request(operator, full_artifact, staging))
    today = timezone.now().date()
    week = (today - timedelta(days=today.weekday()), today - timedelta(days=today.weekday()) + timedelta(days=6))
    [evidence] = validator.candidates(*week)
    assert evidence.object_id == str(run.pk) and "shop-staging" in evidence.label
    assert validator.validate(*week, "restores.restorerun", str(run.pk)).url == f"/restores/runs/{run.pk}/"
    prod = execute(requests.restore_approve(actor=manager, run=request(operator, full_artifact, production),
                                            password=password))
    with pytest.raises(EvidenceRejected):
        validator.validate(*week, "restores.restorerun", str(prod.pk))
    last_week = (week[0] - timedelta(days=7), week[1] - timedelta(days=7))
    with pytest.raises(EvidenceRejected):
        validator.validate(*last_week, "restores.restorerun", str(run.pk))


def test_failures_record_no_secret_of_the_target(operator, full_artifact, staging, monkeypatch):
    monkeypatch.setenv("DRPANEL_SECRET_LOOP_SHOP_STAGING_URL",
                       "postgresql://postgres:canary-secret-8812@127.0.0.1:1/nowhere")
    run = execute(request(operator, full_artifact, staging))
    assert run.state == "failed"
    assert "canary-secret-8812" not in run.error + str(run.steps) + str(run.results)
    assert "canary-secret-8812" not in str(list(AuditEvent.objects.values_list("details", flat=True)))


def test_health_checks_are_recorded_per_url(operator, full_artifact, staging, health_server):
    HealthCheck.objects.create(target=staging, url=health_server.url.replace("/health", "/other"), position=1)
    run = execute(request(operator, full_artifact, staging))
    assert [h["ok"] for h in run.results["health"]["health_checks"]] == [True, True]
    assert run.results["health"]["connectivity"]["ok"]


def test_the_side_database_and_target_databases_are_the_only_ones_touched(operator, full_artifact, staging, scratch):
    run = execute(request(operator, full_artifact, staging))
    tag = run.pk.hex[:12]
    assert scratch.databases() == {scratch.name("shop"), live(scratch, staging), f"{live(scratch, staging)}__pre_{tag}"}
    with psycopg.connect(scratch.url(live(scratch, staging))) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 300


# --- management commands -----------------------------------------------------------------------


def test_the_verify_command_runs_the_ladder_inline(full_artifact, capsys):
    from django.core.management import call_command

    call_command("verify", str(full_artifact.pk)[:8], "--level", "structure", "--inline")
    out = capsys.readouterr().out
    assert "structure     succeeded" in out and "verified at level structure" in out


def test_the_restore_command_goes_through_the_same_rules(operator, auditor, full_artifact, production):
    from django.core.management import CommandError, call_command

    out = io.StringIO()
    call_command("restore", str(full_artifact.pk), "shop-production", "--as", "operator", "--confirm",
                 "shop-production", stdout=out)
    assert "awaiting_approval" in out.getvalue() and "must approve it in the panel" in out.getvalue()
    with pytest.raises(CommandError, match="refused"):
        call_command("restore", str(full_artifact.pk), "shop-production", "--as", "auditor", "--confirm",
                     "shop-production")
    denial = AuditEvent.objects.get(action="access.denied")
    assert denial.actor_username == "auditor" and denial.details["via"] == "manage.py restore"


def test_the_latest_measurements_are_those_of_the_newest_succeeded_restore(operator, full_artifact, staging):
    from restores.selectors import latest_measurements

    assert latest_measurements()["rto_seconds"] is None
    run = execute(request(operator, full_artifact, staging, is_drill=True))
    measured = latest_measurements()
    assert (measured["run"], measured["rto_seconds"], measured["drill"]) == (str(run.pk), run.rto_seconds, True)
