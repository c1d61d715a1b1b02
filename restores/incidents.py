"""Incidents: declaring one (or a drill), its state, closing it with the review, and its report.

Services (each owns its transaction, validation and audit event): ``incident_declare``,
``incident_close``. ``incident_settle`` moves an incident to recovered when its last required
step is done and its health checks passed (called by the step services). The report
(``incident_report``) is built from the rows; closing stores it and signs its SHA-256 into the
audit chain (``incident.closed``). Escalation of the roster hooks on ``incident.declared``
(``compliance.escalation``), and adds its section to the report with ``report_section_register``.
"""

import hashlib
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from guardian.shortcuts import get_users_with_perms

from backups.models import System
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.audit.canonical import canonical_bytes
from drpanel.permissions import Cap, require_cap
from restores.models import (
    APPROVE_RESTORE,
    Incident,
    IncidentStep,
    RecoveryObjective,
    Scenario,
    Target,
)
from restores.runbooks import current_runbook
from restores.runstate import RestoreConflict, RestoreError

# Operators and managers run the recovery: the roles that tick checklists (not auditors, not admins).
RUN_CAP = Cap.TICK_CHECKLISTS
# Managers close (and sign): the capability of the monthly sign-off.
CLOSE_CAP = Cap.SIGN_CERTIFICATION
MAX_NOTICED_BEFORE = timedelta(days=7)


class IncidentError(RestoreError):
    """Bad input for an incident; ``errors`` maps the field to what is wrong (the API's 400)."""

    def __init__(self, message: str, errors: dict | None = None):
        super().__init__(message)
        self.errors = errors or {}


class IncidentConflict(RestoreConflict):
    """The incident (or the system) is not in a state that allows it (409); ``open_incident`` when one is open."""

    def __init__(self, message: str, open_incident: Incident | None = None):
        super().__init__(message)
        self.open_incident = open_incident


def objectives_for(system: System) -> tuple[int, int]:
    """``(rto_seconds, rpo_seconds)`` targets of ``system``: its own, else the deployment's (15, 30 min)."""
    objective = RecoveryObjective.objects.filter(system=system).first()
    if objective is not None:
        return objective.rto_minutes * 60, objective.rpo_minutes * 60
    return settings.RTO_TARGET_MINUTES * 60, settings.RPO_TARGET_MINUTES * 60


def open_incidents(*, drills: bool | None = None):
    rows = Incident.objects.filter(state__in=("declared", "recovering", "recovered")).select_related("system")
    return rows if drills is None else rows.filter(is_drill=drills)


def _noticed(noticed_at, reason: str, now) -> tuple:
    if noticed_at in (None, ""):
        return None, ""
    if isinstance(noticed_at, str):
        parsed = parse_datetime(noticed_at)
        if parsed is None:
            raise IncidentError("noticed_at: a date and time (ISO 8601)", {"noticed_at": "a date and time"})
        noticed_at = parsed
    if timezone.is_naive(noticed_at):
        noticed_at = timezone.make_aware(noticed_at, timezone.get_current_timezone())
    if noticed_at > now:
        raise IncidentError("noticed_at: the failure cannot be noticed after the declaration",
                            {"noticed_at": "earlier than now"})
    if now - noticed_at > MAX_NOTICED_BEFORE:
        raise IncidentError("noticed_at: at most 7 days before the declaration", {"noticed_at": "within 7 days"})
    reason = (reason or "").strip()
    if not reason:
        raise IncidentError("noticed_reason: say how the earlier time is known", {"noticed_reason": "required"})
    return noticed_at, reason[:500]


def incident_declare(*, actor, system: System, scenario: str, severity: str, target: Target, is_drill: bool = False,
                     summary: str = "", noticed_at=None, noticed_reason: str = "", request=None) -> Incident:
    """Declare an incident (or a drill) on ``system``: its runbook's newest version is copied into steps and the
    RTO clock starts (from ``noticed_at`` when given, earlier, with a reason).

    Operators and managers. One open incident (and one open drill) per system: a second
    declaration raises ``IncidentConflict`` naming the open one. A drill goes into a staging or
    scratch target only.
    """
    require_cap(actor, RUN_CAP, action="incident.declare", obj=system)
    errors = {}
    if scenario not in Scenario.values:
        errors["scenario"] = f"one of {', '.join(Scenario.values)}"
    if severity not in Incident.Severity.values:
        errors["severity"] = f"one of {', '.join(Incident.Severity.values)}"
    if not target.is_active:
        errors["target"] = f"{target.name} is deactivated"
    elif target.system_id and target.system_id != system.pk:
        errors["target"] = f"{target.name} receives {target.system.name}, not {system.name}"
    elif is_drill and target.is_production:
        errors["target"] = "a drill runs against a staging or scratch target, never production"
    if errors:
        raise IncidentError(next(f"{k}: {v}" for k, v in errors.items()), errors)
    now = timezone.now()
    noticed_at, noticed_reason = _noticed(noticed_at, noticed_reason, now)
    runbook = current_runbook(scenario)
    rto, rpo = objectives_for(system)
    with transaction.atomic():
        incident = Incident(system=system, scenario=scenario, severity=severity, is_drill=bool(is_drill),
                            target=target, runbook=runbook, summary=(summary or "").strip()[:500], declared_by=actor,
                            declared_at=now, noticed_at=noticed_at, noticed_reason=noticed_reason,
                            rto_target_seconds=rto, rpo_target_seconds=rpo)
        try:
            # The partial unique index decides between two declarations, not a prior read.
            with transaction.atomic():
                incident.save(force_insert=True)
        except IntegrityError:
            current = open_incidents(drills=bool(is_drill)).filter(system=system).first()
            what = "drill" if is_drill else "incident"
            raise IncidentConflict(f"an {what} is already open on {system.name}"
                                   + (f" ({current.short_id}, {current.get_state_display()})" if current else ""),
                                   open_incident=current) from None
        IncidentStep.objects.bulk_create([IncidentStep(
            incident=incident, position=i, code=s["code"], title=s["title"], phase=s["phase"], kind=s["kind"],
            action=s["action"], help=s.get("help", ""), expected_seconds=s["expected_seconds"],
            required=s["required"], evidence_required=s["evidence_required"]) for i, s in enumerate(runbook.steps)])
        audit_record(actor=actor, action=AuditAction.INCIDENT_DECLARED, obj=incident, request=request, details={
            "incident": str(incident.pk), "system": system.name, "scenario": scenario, "severity": severity,
            "drill": incident.is_drill, "target": target.name, "environment": target.environment,
            "runbook_version": runbook.version, "noticed_at": noticed_at.isoformat() if noticed_at else None,
            "noticed_reason": noticed_reason, "rto_target_seconds": rto, "rpo_target_seconds": rpo})
    return incident


def incident_mark_recovering(incident: Incident, *, actor, request=None) -> None:
    """declared → recovering when its first step starts (inside the caller's transaction)."""
    if Incident.objects.filter(pk=incident.pk, state=Incident.State.DECLARED).update(state=Incident.State.RECOVERING):
        incident.state = Incident.State.RECOVERING
        audit_record(actor=actor, action=AuditAction.INCIDENT_RECOVERING, obj=incident, request=request,
                     details={"incident": str(incident.pk)})


def open_required_steps(incident: Incident) -> list[IncidentStep]:
    return [s for s in incident.steps.all() if s.required and not s.is_finished]


def incident_settle(incident: Incident, *, actor=None, request=None) -> Incident:
    """declared | recovering → recovered once every required step is done or skipped and every health-check step
    passed. The RTO clock stops when the last of those steps finished (not when this ran)."""
    steps = list(incident.steps.all())
    health = [s for s in steps if s.action == "health_checks"]
    if any(s.required and not s.is_finished for s in steps):
        return incident
    if any(s.state != IncidentStep.State.DONE for s in health):
        return incident
    last = max((s.finished_at for s in steps if s.finished_at), default=timezone.now())
    with transaction.atomic():
        if Incident.objects.filter(pk=incident.pk, state__in=[Incident.State.DECLARED, Incident.State.RECOVERING]
                                   ).update(state=Incident.State.RECOVERED, recovered_at=last):
            incident.refresh_from_db()
            audit_record(actor=actor, action=AuditAction.INCIDENT_RECOVERED, obj=incident, request=request,
                         details={"incident": str(incident.pk), "recovered_at": last.isoformat(),
                                  "rto_seconds": incident.rto_seconds, "rpo_seconds": incident.rpo_seconds,
                                  "rto_target_seconds": incident.rto_target_seconds,
                                  "rpo_target_seconds": incident.rpo_target_seconds})
    return incident


REVIEW_FIELDS = ("cause", "remediation", "follow_ups")

# Sections a higher layer adds to the report and the detail JSON (name → function of the incident);
# restores never imports them, they register themselves (compliance's escalation: "notifications").
REPORT_SECTIONS: dict = {}


def report_section_register(name: str, build) -> None:
    """Add ``build(incident)`` to every report (and the incident's JSON) under ``name``."""
    REPORT_SECTIONS[name] = build


def _sections(incident: Incident) -> dict:
    return {name: build(incident) for name, build in REPORT_SECTIONS.items()}


def incident_close(*, actor, incident: Incident, review: dict, request=None) -> Incident:
    """Close an incident (managers) with its post-incident review (cause, remediation, follow-ups).

    Refused (``IncidentConflict``, audited as ``incident.close_refused``) while a required step
    is open. The report is stored with the incident and its SHA-256 goes into the audit chain.
    """
    require_cap(actor, CLOSE_CAP, action="incident.close", obj=incident)
    review = review if isinstance(review, dict) else {}
    clean = {k: str(review.get(k) or "").strip()[:4000] for k in REVIEW_FIELDS}
    if not clean["cause"]:
        raise IncidentError("review.cause: say what caused it", {"review.cause": "required"})
    if not incident.is_open:
        raise IncidentConflict(f"this {'drill' if incident.is_drill else 'incident'} is already closed")
    still_open = open_required_steps(incident)
    if still_open:
        why = ("required steps are still open: " + "; ".join(f"{s.position + 1}. {s.title} ({s.state})"
                                                             for s in still_open[:5]))
        with transaction.atomic():
            audit_record(actor=actor, action=AuditAction.INCIDENT_CLOSE_REFUSED, obj=incident, request=request,
                         outcome="failure", details={"incident": str(incident.pk), "reason": why[:500],
                                                     "open_steps": [s.code for s in still_open]})
        raise IncidentConflict(why)
    with transaction.atomic():
        locked = Incident.objects.select_for_update().get(pk=incident.pk)
        if not locked.is_open:
            raise IncidentConflict("this incident was closed meanwhile")
        now = timezone.now()
        locked.state, locked.closed_at, locked.closed_by, locked.review = Incident.State.CLOSED, now, actor, clean
        report = incident_report(locked)
        digest = report_hash(report)
        locked.report, locked.report_hash = report, digest
        locked.save(update_fields=["state", "closed_at", "closed_by", "review", "report", "report_hash"])
        audit_record(actor=actor, action=AuditAction.INCIDENT_CLOSED, obj=locked, request=request, details={
            "incident": str(locked.pk), "report_sha256": digest, "rto_seconds": locked.rto_seconds,
            "rpo_seconds": locked.rpo_seconds, "drill": locked.is_drill})
    return locked


def report_hash(report: dict) -> str:
    """SHA-256 of the report's canonical JSON (what the audit chain signs)."""
    return hashlib.sha256(canonical_bytes(report)).hexdigest()


def _iso(value):
    return value.isoformat() if value else None


def _user(user):
    return user.get_username() if user else None


def _measure(seconds, target) -> dict:
    return {"seconds": round(seconds, 1) if seconds is not None else None, "target_seconds": target,
            "met": None if seconds is None else seconds <= target}


def approvals_of(incident: Incident) -> list[dict]:
    """The production approvals the incident's restores asked for: who asked, who could approve, who decided."""
    found = []
    for step in incident.steps.filter(restore_run__isnull=False).select_related(
            "restore_run__approval__requested_by", "restore_run__approval__decided_by", "restore_run__target"):
        approval = step.restore_run.approval
        if approval is None:
            continue
        asked = sorted(u.get_username() for u in get_users_with_perms(
            step.restore_run.target, only_with_perms_in=[APPROVE_RESTORE.split(".")[1]], with_superusers=False)
                       if u.pk != approval.requested_by_id and u.is_active)
        found.append({"step": step.code, "restore_run": str(step.restore_run_id), "state": approval.state,
                      "requested_by": _user(approval.requested_by), "requested_at": _iso(approval.created_at),
                      "asked": asked, "decided_by": _user(approval.decided_by), "decided_at": _iso(approval.decided_at),
                      "expires_at": _iso(approval.expires_at)})
    return found


def step_json(step: IncidentStep) -> dict:
    duration = step.duration_seconds
    return {
        "position": step.position + 1, "code": step.code, "title": step.title, "phase": step.phase,
        "kind": step.kind, "action": step.action or None, "required": step.required,
        "evidence_required": step.evidence_required, "state": step.state, "help": step.help,
        "assignee": _user(step.assignee), "started_by": _user(step.started_by), "finished_by": _user(step.finished_by),
        "started_at": _iso(step.started_at), "finished_at": _iso(step.finished_at),
        "expected_seconds": step.expected_seconds, "duration_seconds": round(duration, 1) if duration else duration,
        "deviation_seconds": round(duration - step.expected_seconds, 1) if duration is not None else None,
        "note": step.note, "evidence_url": step.evidence_url or None, "decision": step.decision or None,
        "skip_reason": step.skip_reason or None, "error": step.error or None, "result": step.result,
        "restore_run": str(step.restore_run_id) if step.restore_run_id else None, "attempts": step.attempts,
        "worker_host": step.worker_host or None,
    }


def deviations_of(incident: Incident, steps: list[IncidentStep]) -> list[dict]:
    found = []
    for step in steps:
        duration = step.duration_seconds
        if duration is not None and duration > step.expected_seconds:
            found.append({"step": step.code, "kind": "slower", "detail": f"took {duration:.0f} s, expected "
                                                                        f"{step.expected_seconds} s"})
        if step.state == IncidentStep.State.SKIPPED:
            found.append({"step": step.code, "kind": "skipped" + (" (required)" if step.required else ""),
                          "detail": step.skip_reason})
        if step.attempts > 1:
            found.append({"step": step.code, "kind": "retried", "detail": f"{step.attempts} attempts"})
        if step.state == IncidentStep.State.FAILED:
            found.append({"step": step.code, "kind": "failed", "detail": step.error[:300]})
    rto, rpo = incident.rto_seconds, incident.rpo_seconds
    if rto is not None and rto > incident.rto_target_seconds:
        found.append({"step": None, "kind": "rto missed",
                      "detail": f"RTO {rto:.0f} s > {incident.rto_target_seconds} s"})
    if rpo is not None and rpo > incident.rpo_target_seconds:
        found.append({"step": None, "kind": "rpo missed",
                      "detail": f"RPO {rpo:.0f} s > {incident.rpo_target_seconds} s"})
    return found


def current_step(steps: list[IncidentStep]) -> IncidentStep | None:
    """The next step to work on: the first one not done or skipped."""
    return next((s for s in steps if not s.is_finished), None)


def incident_report(incident: Incident) -> dict:
    """The report: timeline (actor, start, end, duration against the expected one), deviations, RTO and RPO against
    their targets, approvals, and the post-incident review. The same dict is the JSON and the printable page."""
    steps = list(incident.steps.select_related("assignee", "started_by", "finished_by").order_by("position"))
    return {
        "incident": str(incident.pk), "drill": incident.is_drill, "system": incident.system.name,
        "scenario": incident.scenario, "scenario_label": incident.get_scenario_display(),
        "severity": incident.severity, "state": incident.state, "summary": incident.summary,
        "target": {"name": incident.target.name, "environment": incident.target.environment},
        "runbook": {"scenario": incident.runbook.scenario, "version": incident.runbook.version,
                    "title": incident.runbook.title},
        "declared_by": _user(incident.declared_by), "declared_at": _iso(incident.declared_at),
        "noticed_at": _iso(incident.noticed_at), "noticed_reason": incident.noticed_reason,
        "recovered_at": _iso(incident.recovered_at), "closed_at": _iso(incident.closed_at),
        "closed_by": _user(incident.closed_by),
        "recovery_point": {"kind": incident.recovery_kind or ("artifact" if incident.recovery_artifact_id else None),
                           "artifact": str(incident.recovery_artifact_id) if incident.recovery_artifact_id else None,
                           "at": _iso(incident.recovery_point_at)},
        "rto": _measure(incident.rto_seconds, incident.rto_target_seconds),
        "rpo": _measure(incident.rpo_seconds, incident.rpo_target_seconds),
        "timeline": [step_json(s) for s in steps],
        "deviations": deviations_of(incident, steps),
        "approvals": approvals_of(incident),
        "review": {k: (incident.review or {}).get(k, "") for k in REVIEW_FIELDS},
        **_sections(incident),
    }


def incident_json(incident: Incident, now=None) -> dict:
    """An incident as the API and the live page show it: state, clock, phase, next step, and the steps."""
    steps = list(incident.steps.select_related("assignee", "started_by", "finished_by").order_by("position"))
    nxt = current_step(steps)
    return {
        "id": str(incident.pk), "system": incident.system.name, "scenario": incident.scenario,
        "severity": incident.severity, "drill": incident.is_drill, "state": incident.state,
        "target": incident.target.name, "summary": incident.summary, "declared_by": _user(incident.declared_by),
        "declared_at": _iso(incident.declared_at), "noticed_at": _iso(incident.noticed_at),
        "clock_started_at": _iso(incident.failure_at), "elapsed_seconds": round(incident.elapsed_seconds(now), 1),
        "recovered_at": _iso(incident.recovered_at), "closed_at": _iso(incident.closed_at),
        "runbook_version": incident.runbook.version,
        "phase": nxt.phase if nxt else None,
        "next_step": {"position": nxt.position + 1, "code": nxt.code, "title": nxt.title, "kind": nxt.kind,
                      "state": nxt.state, "assignee": _user(nxt.assignee or nxt.started_by)} if nxt else None,
        "rto": _measure(incident.rto_seconds, incident.rto_target_seconds),
        "rpo": _measure(incident.rpo_seconds, incident.rpo_target_seconds),
        "recovery_point_at": _iso(incident.recovery_point_at),
        "steps": [step_json(s) for s in steps],
        "report_sha256": incident.report_hash or None,
        **_sections(incident),
    }


def last_recovered(*, drills: bool) -> Incident | None:
    """The incident (or drill) recovered most recently: its RTO and RPO are the ones measured."""
    return (Incident.objects.filter(is_drill=drills, recovered_at__isnull=False).select_related("system")
            .order_by("-recovered_at").first())


def newest_step_finish(incident: Incident):
    return incident.steps.aggregate(last=Max("finished_at"))["last"]
