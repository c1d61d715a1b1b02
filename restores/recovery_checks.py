"""The post-recovery checklist of a restore: the old guide's ten items, the automatic ones decided by the panel
from the run's evidence (and the catalog), the others ticked by people with a note."""

import contextlib
import time

import psycopg
from django.db import transaction
from django.utils import timezone

from backups.models import Artifact, BackupRun
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import secrets
from drpanel.permissions import Cap, require_cap
from restores import healthchecks
from restores.models import RecoveryCheck, RestoreRun
from restores.runstate import RestoreConflict, RestoreError

# The old guide's post-recovery checklist: (code, title, decided by the panel?).
RECOVERY_ITEMS = (
    ("database_connectivity", "Database connectivity restored", True),
    ("tables_intact", "All tables and data intact", True),
    ("application_running", "Application services running (health URLs answering)", True),
    ("authentication", "User authentication working", False),
    ("payments", "Payment processing functional", False),
    ("customer_features", "Customer-facing features operational", False),
    ("analytics", "Analytics and reporting active", False),
    ("backups_reenabled", "Backup systems re-enabled", True),
    ("monitoring_cleared", "Monitoring alerts cleared", False),
    ("incident_documented", "Incident documented and reviewed", False),
)


def create_recovery_checks(run: RestoreRun) -> None:
    """The ten items of the old guide's post-recovery checklist for this run (once)."""
    for position, (code, title, automatic) in enumerate(RECOVERY_ITEMS):
        RecoveryCheck.objects.get_or_create(run=run, code=code, defaults={
            "position": position, "title": title, "automatic": automatic})


def _decide(check: RecoveryCheck, status: str, summary: str, evidence: list[dict]) -> None:
    if check.status == status and check.summary == summary[:500]:
        return
    with transaction.atomic():
        # Conditional: a person's tick (done) is never overwritten by the panel.
        changed = RecoveryCheck.objects.filter(pk=check.pk).exclude(status=RecoveryCheck.Status.DONE).update(
            status=status, summary=summary[:500], evidence=evidence)
        if changed and status != RecoveryCheck.Status.PENDING:
            audit_record(actor=None, action=f"restore.checklist_{status}", obj=check.run,
                         details={"run": str(check.run_id), "item": check.code, "summary": summary[:300],
                                  "evidence": evidence})


def evaluate_recovery_checks(run: RestoreRun) -> None:
    """Decide the automatic items from the run's evidence (and the catalog, for backups re-enabled)."""
    run.refresh_from_db()
    results = run.results or {}
    page = f"/restores/runs/{run.pk}/"
    checks = {c.code: c for c in run.recovery_checks.all()}
    health = results.get("health") or {}
    if "database_connectivity" in checks:
        connectivity = health.get("connectivity")
        check = checks["database_connectivity"]
        if not run.restores_database:
            _decide(check, RecoveryCheck.Status.PENDING, "config-only restore: the database was not restored; "
                    "tick it once you have checked", [])
        elif connectivity:
            _decide(check, RecoveryCheck.Status.PASSED if connectivity["ok"] else RecoveryCheck.Status.FAILED,
                    connectivity["detail"] if connectivity["ok"] else connectivity["error"],
                    [{"label": "health step of this run", "url": page + "#step-health-checks"}])
    if "tables_intact" in checks:
        check = checks["tables_intact"]
        counts = results.get("row_counts")
        if not run.restores_database:
            _decide(check, RecoveryCheck.Status.PENDING, "config-only restore: no table was restored", [])
        elif counts:
            bad = [c for c in counts if not c["ok"]]
            _decide(check, RecoveryCheck.Status.FAILED if bad else RecoveryCheck.Status.PASSED,
                    f"{len(counts) - len(bad)} of {len(counts)} tables hold the manifest's exact row counts "
                    f"({sum(c['actual'] or 0 for c in counts)} rows), counted before the swap",
                    [{"label": "row counts of this run", "url": page + "#step-row-counts"}])
        elif counts == []:
            _decide(check, RecoveryCheck.Status.PENDING, "the manifest has no row counts: check by hand", [])
    if "application_running" in checks:
        check = checks["application_running"]
        urls = health.get("health_checks")
        if urls:
            bad = [h for h in urls if not h["ok"]]
            _decide(check, RecoveryCheck.Status.FAILED if bad else RecoveryCheck.Status.PASSED,
                    "; ".join(f"{h['url']} → {h['status'] or h['error']}" for h in urls),
                    [{"label": "health step of this run", "url": page + "#step-health-checks"}])
        elif urls == []:
            _decide(check, RecoveryCheck.Status.PENDING, "the target has no health URL: check by hand", [])
    if "backups_reenabled" in checks:
        _evaluate_backups(run, checks["backups_reenabled"])


def _evaluate_backups(run: RestoreRun, check: RecoveryCheck) -> None:
    system = run.target.system
    if system is None:
        _decide(check, RecoveryCheck.Status.PENDING, "this target names no system: tick it once backups run again", [])
        return
    if not system.schedule_enabled:
        _decide(check, RecoveryCheck.Status.PENDING, f"the backup schedule of {system.name} is disabled", [])
        return
    since = run.swapped_at or run.finished_at or run.created_at
    backup = BackupRun.objects.filter(system=system, kind=Artifact.Kind.FULL, state=BackupRun.State.SUCCEEDED,
                                      finished_at__gt=since).order_by("finished_at").first()
    if backup is None:
        _decide(check, RecoveryCheck.Status.PENDING, f"waiting for the first full backup of {system.name} "
                "after the restore", [])
        return
    _decide(check, RecoveryCheck.Status.PASSED,
            f"schedule enabled; full backup {str(backup.pk)[:8]} of {system.name} succeeded at "
            f"{backup.finished_at:%Y-%m-%d %H:%M:%S} UTC, after the restore",
            [{"label": f"backup run {str(backup.pk)[:8]}", "url": f"/backups/runs/{backup.pk}/",
              "object_type": "backups.backuprun", "object_id": str(backup.pk)}])


def recovery_checks_refresh(run: RestoreRun, *, actor=None, request=None) -> RestoreRun:
    """Check the automatic items again (the database and health URLs answer now? a backup ran since?)."""
    if actor is not None:
        require_cap(actor, Cap.TICK_CHECKLISTS, action="restore.checklist_refresh", obj=run)
    if not run.recovery_checks.exists() or run.state == RestoreRun.State.ROLLED_BACK:
        return run
    if run.restores_database:
        with contextlib.suppress(secrets.SecretReferenceError):
            url = secrets.resolve(run.target.database_ref)
            health = dict((run.results or {}).get("health") or {})
            health["connectivity"] = database_connectivity(url)
            health["health_checks"] = [r.as_dict() for r in healthchecks.run_health_checks(
                run.target.health_checks.all(), extra_hosts=run.target.health_check_hosts)]
            results = {**(run.results or {}), "health": health}
            RestoreRun.objects.filter(pk=run.pk).update(results=results)
    evaluate_recovery_checks(run)
    if actor is not None:
        # The panel's decisions are audited as they change; this records who asked for them again.
        with transaction.atomic():
            audit_record(actor=actor, action=AuditAction.RESTORE_CHECKLIST_REFRESHED, obj=run, request=request,
                         details={
                "run": str(run.pk), "statuses": dict(run.recovery_checks.values_list("code", "status"))})
    return run


def recovery_checks_refresh_open(limit: int = 20) -> int:
    """Cron: re-evaluate the "backups re-enabled" item of recent runs still waiting for it."""
    count = 0
    pending = RecoveryCheck.objects.filter(code="backups_reenabled", status=RecoveryCheck.Status.PENDING,
                                           run__state__in=[RestoreRun.State.SUCCEEDED, RestoreRun.State.FAILED]
                                           ).select_related("run__target__system").order_by("-run__created_at")
    for check in pending[:limit]:
        _evaluate_backups(check.run, check)
        count += 1
    return count


def recovery_check_tick(*, actor, check: RecoveryCheck, note: str, request=None) -> RecoveryCheck:
    """Tick an item by hand with a note (operators, managers); the panel's own decisions cannot be overridden."""
    require_cap(actor, Cap.TICK_CHECKLISTS, action="restore.checklist_tick", obj=check.run)
    note = (note or "").strip()
    if not note:
        raise RestoreError("say what you checked in the note")
    if check.status in (RecoveryCheck.Status.PASSED, RecoveryCheck.Status.FAILED):
        raise RestoreConflict(f"“{check.title}” was decided by the panel from its evidence ({check.status}); "
                              "use “Check again” once it is fixed")
    if check.run.state == RestoreRun.State.ROLLED_BACK:
        raise RestoreConflict("this restore was rolled back: its post-recovery checklist is closed")
    with transaction.atomic():
        # Conditional: two people ticking at once record one tick.
        changed = RecoveryCheck.objects.filter(pk=check.pk, status=RecoveryCheck.Status.PENDING).update(
            status=RecoveryCheck.Status.DONE, note=note[:2000], ticked_by=actor, ticked_at=timezone.now())
        if not changed:
            raise RestoreConflict(f"“{check.title}” is already ticked")
        audit_record(actor=actor, action=AuditAction.RESTORE_CHECKLIST_TICKED, obj=check.run, request=request,
                     details={"run": str(check.run_id), "item": check.code, "title": check.title, "note": note[:300]})
    check.refresh_from_db()
    return check


def database_connectivity(url: str) -> dict:
    """Connect to the live database and ask it something: the first item of the post-recovery checklist."""
    started = time.monotonic()
    try:
        with psycopg.connect(url, connect_timeout=10, application_name="drpanel-health") as conn:
            row = conn.execute("SELECT current_database(), current_setting('server_version')").fetchone()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return {"ok": False, "error": f"cannot connect: {first}", "detail": "", "ms": 0}
    ms = int((time.monotonic() - started) * 1000)
    return {"ok": True, "error": "", "detail": f"{row[0]} on PostgreSQL {row[1]}, {ms} ms", "ms": ms,
            "checked_at": timezone.now().isoformat()}
