"""The steps of an incident: starting, completing and skipping them, and what the automatic ones do.

Automatic steps call the same services as the pages:

- ``assess``: connect to the protected database, ``SELECT 1``, compare its table counts with the
  newest manifest (a job: ``INCIDENT_STEP_RUNS``);
- ``recovery_point``: the newest verified full, or, for a continuously protected system, a point in
  time — the latest WAL received, or a moment typed as the restore form takes it ("10 minutes ago",
  a date and time with its zone) — (``choose_recovery_point``);
- ``restore_database`` / ``restore_config``: ``restores.requests.restore_request`` (or
  ``restore_request_point`` for a point in time) into the incident's target (a production target
  waits for a manager's approval, four eyes unchanged);
  the step waits for its restore run and settles from it (``incident_steps_sync``);
- ``health_checks``: connectivity, row counts against the restored backup's manifest, the
  target's health URLs (a job);
- ``recovery_checklist``: the restore's post-recovery checklist (``restores.recovery_checks``).

Every change here is one service (``incident_step_start``, ``incident_step_complete``,
``incident_step_skip``) that owns its transaction, its conditional state change and its audit
event; each settles the incident afterwards (``restores.incidents.incident_settle``).
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlparse

import psycopg
from django.db import transaction
from django.utils import timezone

from backups.models import Artifact
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import runs, secrets
from drpanel.permissions import require_cap
from drpanel.scrub import scrub
from restores import healthchecks, sanity
from restores.incident_points import choose_recovery_point, incident_point
from restores.incidents import (
    RUN_CAP,
    IncidentConflict,
    IncidentError,
    incident_mark_recovering,
    incident_settle,
)
from restores.models import Incident, IncidentStep, RestoreRun
from restores.recovery_checks import create_recovery_checks, database_connectivity, evaluate_recovery_checks
from restores.requests import (
    config_artifact_for,
    config_artifact_near,
    restore_request,
    restore_request_point,
)
from restores.runstate import RestoreError
from restores.verification_levels import manifest_counts

S = IncidentStep.State
JOB_ACTIONS = ("assess", "health_checks")
RESTORE_ACTIONS = {"restore_database": RestoreRun.Mode.DATABASE, "restore_config": RestoreRun.Mode.CONFIG}


class IncidentStepRuns(runs.RunKind):
    """Automatic incident steps that take time (assess, health checks) in the run runtime."""

    name = "incident-step"
    model = IncidentStep
    queue = "default"
    job = "restores.jobs.incident_step_job"
    timeout = 600
    on_failure = "restores.jobs.incident_step_job_failed"
    queued_since = "queued_at"
    reconciled = False  # settled by ``incident_steps_reconcile`` (cron), with the restores' reconciler

    def pool_for(self, run_id) -> str:
        """An automatic step reaches the incident's databases: it runs in its target's pool, else its system's
        (as the incident's restore does; docs/many-hosts.md)."""
        pools = (IncidentStep.objects.filter(pk=run_id)
                 .values_list("incident__target__worker_pool", "incident__system__worker_pool").first())
        return next((pool for pool in pools or () if pool), "")

    def fail(self, run_id, reason: str, *, expected) -> bool:
        step = IncidentStep.objects.select_related("incident").filter(pk=run_id).first()
        return bool(step) and _finish(step, S.FAILED, actor=None, expected=expected, error=reason)

    def record_requeue(self, run, details: dict) -> None:
        audit_record(actor=None, action=AuditAction.INCIDENT_STEP_REQUEUED, obj=run.incident,
                     details={**details, "step": run.code})


INCIDENT_STEP_RUNS = runs.register(IncidentStepRuns())


def _step_details(step: IncidentStep, **extra) -> dict:
    return {"incident": str(step.incident_id), "step": step.code, "position": step.position + 1,
            "title": step.title, "kind": step.kind, "action": step.action or None, **extra}


def _finish(step: IncidentStep, state: str, *, actor, expected, error: str = "", result: dict | None = None,
            finished_at=None, request=None, **fields) -> bool:
    """``expected`` → done | failed, audited; False when the step was no longer in ``expected``."""
    finished_at = finished_at or timezone.now()
    values = {"state": state, "finished_at": finished_at, "error": error[:2000], **fields}
    if result is not None:
        values["result"] = result
    if actor is not None:
        values["finished_by"] = actor
    with transaction.atomic():
        # Conditional: a job's second delivery, a reconciler and a person cannot all finish one step.
        if not IncidentStep.objects.filter(pk=step.pk, state__in=list(expected)).update(**values):
            return False
        step.refresh_from_db()
        action = AuditAction.INCIDENT_STEP_COMPLETED if state == S.DONE else AuditAction.INCIDENT_STEP_FAILED
        audit_record(actor=actor, action=action, obj=step.incident, request=request,
                     outcome="success" if state == S.DONE else "failure",
                     details=_step_details(step, error=error[:500] or None, result=result or None))
    incident_settle(step.incident, actor=actor, request=request)
    return True


def access_step(incident: Incident, position: int) -> IncidentStep:
    """Step ``position`` (1-based) of ``incident``; ``IncidentError`` when there is none."""
    step = incident.steps.filter(position=position - 1).select_related("incident__system", "incident__target").first()
    if step is None:
        raise IncidentError(f"this incident has no step {position}", {"step": "no such step"})
    return step


def _fresh(step: IncidentStep) -> Incident:
    """The step's incident as the database has it now (a caller's copy may predate the last step)."""
    step.incident = Incident.objects.select_related("system", "target", "recovery_artifact").get(pk=step.incident_id)
    return step.incident


def _check_order(step: IncidentStep) -> None:
    waiting = [s for s in step.incident.steps.filter(position__lt=step.position, required=True)
               if not s.is_finished]
    if waiting:
        first = waiting[0]
        raise IncidentConflict(f"step {first.position + 1} ({first.title}) is {first.state}: finish or skip it first")


def incident_step_start(*, actor, step: IncidentStep, assignee=None, point: str = "", request=None) -> IncidentStep:
    """Start a step (operators and managers): a manual or decision step gets its assignee and timer; an automatic
    one runs (inline when quick, as a job when it takes time, or as a restore request the step waits for).
    ``point`` is what the recovery point step chooses (``choose_recovery_point``).

    Refused while an earlier required step is open, or when the step is not pending (or failed,
    to try again). A restore the actor may not request raises ``Denied`` and changes nothing.
    """
    require_cap(actor, RUN_CAP, action="incident.step_start", obj=step.incident)
    incident = _fresh(step)
    if not incident.is_open:
        raise IncidentConflict("this incident is closed")
    if step.state not in (S.PENDING, S.FAILED):
        raise IncidentConflict(f"step {step.position + 1} is {step.state}; only a pending or failed step starts")
    _check_order(step)
    if assignee is not None and not assignee.is_active:
        raise IncidentError("assignee: not an active user", {"assignee": "not an active user"})
    now = timezone.now()
    if step.kind != IncidentStep.Kind.AUTOMATIC:
        with transaction.atomic():
            if not IncidentStep.objects.filter(pk=step.pk, state__in=[S.PENDING, S.FAILED]).update(
                    state=S.RUNNING, started_at=now, started_by=actor, assignee=assignee or actor, finished_at=None,
                    error="", attempts=step.attempts + 1):
                raise IncidentConflict("this step was started meanwhile")
            incident_mark_recovering(incident, actor=actor, request=request)
            step.refresh_from_db()
            audit_record(actor=actor, action=AuditAction.INCIDENT_STEP_STARTED, obj=incident, request=request,
                         details=_step_details(step, assignee=step.assignee.get_username()))
        return step
    if step.action in RESTORE_ACTIONS:
        return _start_restore(step, actor=actor, request=request)
    with transaction.atomic():
        queued = step.action in JOB_ACTIONS
        if not IncidentStep.objects.filter(pk=step.pk, state__in=[S.PENDING, S.FAILED]).update(
                state=S.QUEUED if queued else S.RUNNING, started_at=now, started_by=actor, finished_at=None,
                error="", attempts=step.attempts + 1, queued_at=now if queued else None, heartbeat_at=None):
            raise IncidentConflict("this step was started meanwhile")
        incident_mark_recovering(incident, actor=actor, request=request)
        step.refresh_from_db()
        audit_record(actor=actor, action=AuditAction.INCIDENT_STEP_STARTED, obj=incident, request=request,
                     details=_step_details(step, queued=queued))
        if queued:
            INCIDENT_STEP_RUNS.enqueue_on_commit(step.pk)
    if not queued:
        _run_inline(step, actor=actor, request=request, point=point)
        step.refresh_from_db()
    return step


def _run_inline(step: IncidentStep, *, actor, request=None, point: str = "") -> None:
    """The quick automatic steps, in the request that started them."""
    incident = step.incident
    try:
        if step.action == "recovery_point":
            point = choose_recovery_point(incident, point)
            with transaction.atomic():
                Incident.objects.filter(pk=incident.pk).update(recovery_artifact=point.artifact,
                                                               recovery_point_at=point.at, recovery_kind=point.kind)
                _finish(step, S.DONE, actor=actor, expected=[S.RUNNING], result=point.as_dict(), request=request)
            return
        if step.action == "recovery_checklist":
            run = _incident_restore_run(incident)
            if run is None:
                _finish(step, S.DONE, actor=actor, expected=[S.RUNNING], request=request,
                        result={"detail": "no restore ran in this incident: nothing to check after it"})
                return
            create_recovery_checks(run)
            evaluate_recovery_checks(run)
            statuses = dict(run.recovery_checks.values_list("code", "status"))
            _finish(step, S.DONE, actor=actor, expected=[S.RUNNING], request=request, result={
                "restore_run": str(run.pk), "url": f"/restores/runs/{run.pk}/#checklist", "items": statuses})
            return
        raise RestoreError(f"unknown action {step.action!r}")
    except RestoreError as exc:
        _finish(step, S.FAILED, actor=actor, expected=[S.RUNNING], error=str(exc), request=request)


def _incident_restore_run(incident: Incident) -> RestoreRun | None:
    step = incident.steps.filter(action="restore_database", restore_run__isnull=False).select_related(
        "restore_run").order_by("-position").first()
    return step.restore_run if step else None


# --- restores --------------------------------------------------------------------------------------


def _start_restore(step: IncidentStep, *, actor, request=None) -> IncidentStep:
    incident = step.incident
    mode = RESTORE_ACTIONS[step.action]
    point = incident_point(incident)
    if incident.recovery_artifact_id is None and point is None:
        raise IncidentConflict("no recovery point was chosen: run the “recovery point” step first")
    artifact = incident.recovery_artifact
    if mode == RestoreRun.Mode.CONFIG:
        artifact = config_artifact_for(incident.recovery_artifact) if artifact else config_artifact_near(
            incident.system, incident.recovery_point_at or timezone.now())
    elif point is not None:
        artifact = None
    now = timezone.now()
    with transaction.atomic():
        if not IncidentStep.objects.filter(pk=step.pk, state__in=[S.PENDING, S.FAILED]).update(
                state=S.RUNNING, started_at=now, started_by=actor, finished_at=None, error="",
                attempts=step.attempts + 1):
            raise IncidentConflict("this step was started meanwhile")
        incident_mark_recovering(incident, actor=actor, request=request)
        step.refresh_from_db()
        by_point = artifact is None and point is not None and mode == RestoreRun.Mode.DATABASE
        audit_record(actor=actor, action=AuditAction.INCIDENT_STEP_STARTED, obj=incident, request=request,
                     details=_step_details(step, mode=mode, artifact=str(artifact.pk) if artifact else None,
                                           recovery_point=str(point) if by_point else None))
        reason = f"{'drill' if incident.is_drill else 'incident'} {incident.short_id}: {step.title}"
        if artifact is None and not by_point:
            error = f"{incident.system.name} has no config backup to restore with this recovery point"
        else:
            error = ""
            try:
                # Savepoint: a refused request (a run in flight, a bad target) fails the step, not the transaction.
                with transaction.atomic():
                    if by_point:
                        run = restore_request_point(actor=actor, system=incident.system, point=point,
                                                    target=incident.target, mode=mode, confirm=incident.target.name,
                                                    is_drill=incident.is_drill, reason=reason, request=request)
                    else:
                        run = restore_request(actor=actor, artifact=artifact, target=incident.target, mode=mode,
                                              confirm=incident.target.name, is_drill=incident.is_drill,
                                              reason=reason, request=request)
            except RestoreError as exc:
                error = str(exc)
        if error:
            _finish(step, S.FAILED, actor=actor, expected=[S.RUNNING], error=error, request=request)
        else:
            IncidentStep.objects.filter(pk=step.pk).update(state=S.WAITING, restore_run=run)
    step.refresh_from_db()
    return step


def incident_step_sync(step: IncidentStep) -> bool:
    """Settle a step waiting for its restore run once the run ended (a cron and every read of the incident)."""
    if step.state != S.WAITING or step.restore_run_id is None:
        return False
    run = RestoreRun.objects.filter(pk=step.restore_run_id).first()
    if run is None or not run.is_done:
        return False
    result = {"restore_run": str(run.pk), "state": run.state, "rto_seconds": run.rto_seconds,
              "url": f"/restores/runs/{run.pk}/"}
    if run.state == RestoreRun.State.SUCCEEDED:
        recovered_to = (run.results or {}).get("recovery", {}).get("recovered_to")
        if recovered_to and step.incident.recovery_kind == "latest":
            # "Latest" is a moment once replayed: the last commit the recovered copy replayed.
            Incident.objects.filter(pk=step.incident_id).update(recovery_point_at=datetime.fromisoformat(recovered_to))
        return _finish(step, S.DONE, actor=None, expected=[S.WAITING], result=result,
                       finished_at=run.healthy_at or run.finished_at)
    why = run.error or f"the restore run was {run.get_state_display()}"
    return _finish(step, S.FAILED, actor=None, expected=[S.WAITING], result=result, error=why,
                   finished_at=run.finished_at)


def incident_steps_sync(incident: Incident) -> None:
    for step in incident.steps.filter(state=S.WAITING).select_related("incident"):
        incident_step_sync(step)


def incident_steps_reconcile() -> dict:
    """Cron (every minute): settle steps waiting for restores, and automatic step jobs that were lost."""
    settled = sum(incident_step_sync(s) for s in IncidentStep.objects.filter(state=S.WAITING)
                  .select_related("incident"))
    summary = runs.reconcile_runs(run_kinds=[INCIDENT_STEP_RUNS])
    summary["settled"] = settled
    return summary


# --- jobs: assess and health checks --------------------------------------------------------------------


def _first_line(exc: Exception) -> str:
    return scrub((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:300]


def assess_damage(incident: Incident) -> dict:
    """Connect to the protected database, ``SELECT 1``, and compare table counts with the newest manifest."""
    system = incident.system
    newest = (Artifact.objects.filter(system=system, kind=Artifact.Kind.FULL, status=Artifact.Status.AVAILABLE)
              .order_by("-created_at").first())
    found = {"database": system.database_ref, "reachable": False, "error": "", "tables": [],
             "manifest_artifact": str(newest.pk) if newest else None,
             "manifest_at": newest.created_at.isoformat() if newest else None}
    try:
        url = secrets.resolve(system.database_ref)
        with psycopg.connect(url, connect_timeout=10, application_name="drpanel-assess") as conn:
            conn.execute("SELECT 1").fetchone()
        found["reachable"] = True
    except (secrets.SecretReferenceError, psycopg.Error) as exc:
        found["error"] = f"cannot reach the database: {_first_line(exc)}"
        found["summary"] = found["error"]
        return found
    expected = manifest_counts(newest) if newest else {}
    if expected:
        try:
            counts = sanity.compare_row_counts(url, expected)
        except psycopg.Error as exc:
            found["error"] = f"cannot count rows: {_first_line(exc)}"
            counts = []
        found["tables"] = [c.as_dict() for c in counts]
        differ = [c for c in counts if not c.ok]
        found["differing"] = len(differ)
        found["summary"] = (f"SELECT 1 answered; {len(counts) - len(differ)} of {len(counts)} tables hold the newest "
                            f"manifest's row counts" + (f" (first differing: {differ[0].table}: {differ[0].error})"
                                                        if differ else ""))
    else:
        found["summary"] = "SELECT 1 answered; no manifest with row counts to compare"
    return found


def health_of_target(incident: Incident) -> tuple[bool, dict]:
    """The recovered target: connectivity, row counts against the restored backup's manifest, health URLs."""
    target = incident.target
    found: dict = {"target": target.name}
    try:
        url = secrets.resolve(target.database_ref)
    except secrets.SecretReferenceError as exc:
        return False, {**found, "summary": f"cannot resolve the target's database: {_first_line(exc)}"}
    found["connectivity"] = database_connectivity(url)
    ok = found["connectivity"]["ok"]
    expected = manifest_counts(incident.recovery_artifact) if incident.recovery_artifact_id else {}
    if ok and expected:
        try:
            counts = sanity.compare_row_counts(url, expected)
            found["row_counts"] = [c.as_dict() for c in counts]
            ok = ok and sanity.tables_intact(counts)
        except psycopg.Error as exc:
            found["row_counts_error"] = _first_line(exc)
            ok = False
    found["health_checks"] = [r.as_dict() for r in healthchecks.run_health_checks(
        target.health_checks.all(), extra_hosts=target.health_check_hosts)]
    ok = ok and all(h["ok"] for h in found["health_checks"])
    bad = [h["url"] for h in found["health_checks"] if not h["ok"]]
    counts = found.get("row_counts") or []
    found["summary"] = "; ".join(filter(None, [
        found["connectivity"]["detail"] or found["connectivity"]["error"],
        f"{sum(1 for c in counts if c['ok'])} of {len(counts)} tables match the manifest" if counts else "",
        f"{len(found['health_checks']) - len(bad)} of {len(found['health_checks'])} health URLs answer"
        if found["health_checks"] else "no health URL configured"]))
    return ok, found


def incident_step_execute(step_id) -> IncidentStep | None:
    """The job of an automatic step: queued → running, do it with a heartbeat, then done or failed."""
    if not IncidentStep.objects.filter(pk=step_id, state=S.QUEUED).update(state=S.RUNNING, heartbeat_at=timezone.now(),
                                                                          worker_host=runs.worker_host()):
        return IncidentStep.objects.filter(pk=step_id).first()  # a second delivery: nothing to do
    step = IncidentStep.objects.select_related("incident__system", "incident__target",
                                               "incident__recovery_artifact").get(pk=step_id)
    with runs.Heartbeat(step):
        if step.action == "assess":
            found = assess_damage(step.incident)
            _finish(step, S.DONE, actor=None, expected=[S.RUNNING], result=found)
        elif step.action == "health_checks":
            ok, found = health_of_target(step.incident)
            _finish(step, S.DONE if ok else S.FAILED, actor=None, expected=[S.RUNNING], result=found,
                    error="" if ok else f"health checks failed: {found['summary']}")
        else:
            _finish(step, S.FAILED, actor=None, expected=[S.RUNNING], error=f"{step.action} is not a job")
    step.refresh_from_db()
    return step


# --- manual steps and decisions ---------------------------------------------------------------------


def _evidence_url(value: str) -> str:
    value = (value or "").strip()
    if not value:
        return ""
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or len(value) > 500:
        raise IncidentError("evidence_url: an http(s) link of at most 500 characters",
                            {"evidence_url": "an http(s) link"})
    return value


def incident_step_complete(*, actor, step: IncidentStep, note: str = "", evidence_url: str = "",
                           decision: str = "", request=None) -> IncidentStep:
    """Mark a manual step done (with its note and, where the runbook says, an evidence link) or record a decision
    to continue. Automatic steps finish by themselves."""
    require_cap(actor, RUN_CAP, action="incident.step_complete", obj=step.incident)
    if not _fresh(step).is_open:
        raise IncidentConflict("this incident is closed")
    if step.kind == IncidentStep.Kind.AUTOMATIC:
        raise IncidentConflict("an automatic step finishes by itself; start it, or skip it with a reason")
    url = _evidence_url(evidence_url)
    note = (note or "").strip()
    if step.evidence_required and not url:
        raise IncidentError(f"evidence_url: step {step.position + 1} ({step.title}) needs an evidence link",
                            {"evidence_url": "required by the runbook for this step"})
    if step.kind == IncidentStep.Kind.DECISION and decision != "continue":
        raise IncidentError("decision: “continue”, or skip the step with a reason",
                            {"decision": "continue (or skip with a reason)"})
    if step.state not in (S.PENDING, S.RUNNING):
        raise IncidentConflict(f"step {step.position + 1} is {step.state}")
    if step.state == S.PENDING:
        _check_order(step)
    now = timezone.now()
    with transaction.atomic():
        fields = {"note": note[:4000], "evidence_url": url, "decision": decision if step.kind == "decision" else ""}
        if step.state == S.PENDING:
            if not IncidentStep.objects.filter(pk=step.pk, state=S.PENDING).update(
                    state=S.RUNNING, started_at=now, started_by=actor, assignee=actor, attempts=step.attempts + 1):
                raise IncidentConflict("this step changed meanwhile")
            incident_mark_recovering(step.incident, actor=actor, request=request)
        if not _finish(step, S.DONE, actor=actor, expected=[S.RUNNING], request=request, **fields):
            raise IncidentConflict("this step changed meanwhile")
    step.refresh_from_db()
    return step


def incident_step_skip(*, actor, step: IncidentStep, reason: str, request=None) -> IncidentStep:
    """Skip a step with a reason (a decision not to continue, a manual step that does not apply, an automatic step
    done by hand). A drill with a required step skipped does not count as evidence."""
    require_cap(actor, RUN_CAP, action="incident.step_skip", obj=step.incident)
    if not _fresh(step).is_open:
        raise IncidentConflict("this incident is closed")
    reason = (reason or "").strip()
    if not reason:
        raise IncidentError("reason: say why the step is skipped", {"reason": "required"})
    movable = [S.PENDING, S.FAILED] + ([S.RUNNING] if step.kind != IncidentStep.Kind.AUTOMATIC else [])
    if step.state not in movable:
        raise IncidentConflict(f"step {step.position + 1} is {step.state}: it cannot be skipped now")
    now = timezone.now()
    with transaction.atomic():
        if not IncidentStep.objects.filter(pk=step.pk, state__in=movable).update(
                state=S.SKIPPED, skip_reason=reason[:500], finished_at=now, finished_by=actor,
                decision="skip" if step.kind == IncidentStep.Kind.DECISION else step.decision):
            raise IncidentConflict("this step changed meanwhile")
        incident_mark_recovering(step.incident, actor=actor, request=request)
        step.refresh_from_db()
        audit_record(actor=actor, action=AuditAction.INCIDENT_STEP_SKIPPED, obj=step.incident, request=request,
                     details=_step_details(step, reason=reason[:300], required=step.required))
    incident_settle(step.incident, actor=actor, request=request)
    return step
