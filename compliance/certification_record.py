"""The monthly DR certification's record: its months, and the record assembled from the panel's data.

``certification_assemble(year=, month=)`` reads (never writes) what happened in one calendar
month (UTC; a row belongs to the month it was requested or created in):

- ``scope`` — the systems catalogued by the end of the month;
- ``backups`` — backup runs per kind: succeeded, failed, still open;
- ``restores`` — every restore run, with its measured RTO (request → healthy) against the
  RTO target and RPO (the artifact's age when it went live) against the RPO target;
- ``restore_tests`` — every ``restore-test`` verification, with the same two figures
  (RTO: request → the throw-away database restored and checked; RPO: the artifact's age then);
- ``verifications`` — every verification run by outcome, failures by reason (``missing``,
  ``checksum``, ``size``, ``other``, read from the run's error);
- ``failures`` — each failed backup, verification and restore, with its remediation: the
  later success that fixed it, or "open";
- ``approvals`` — each approval asked for in the month, with who asked and who decided;
- ``contacts`` — whether each active contact was verified in the last ``CONTACT_REVIEW_DAYS``;
- ``checklists`` — ``checklist_month_summary``;
- ``audit_head`` — the chain's last ``seq`` and ``hash`` when the record was assembled.

Every figure is counted from rows; what was not measured is ``null`` or an empty list.

``content_hash(record)`` is the SHA-256 of its canonical JSON
(``compliance.audit.canonical.canonical_bytes``); ``compliance.certifications`` signs it.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, date, datetime

from django.conf import settings
from django.urls import reverse

from backups.models import Artifact, BackupRun, System
from compliance.approval_kinds import APPROVAL_KINDS
from compliance.audit.canonical import canonical_bytes
from compliance.checklists import checklist_month_summary
from compliance.contacts import is_due_for_review
from compliance.measurements import drill_filter, rpo_target_seconds, rto_target_seconds
from compliance.models import AuditEvent, Certification, Contact
from drpanel import clock
from drpanel.models import Approval
from restores.models import Incident, RestoreRun, VerificationRun

RECORD_TYPE = "drpanel-dr-certification"
RECORD_VERSION = 1
FAILURE_REASONS = ("missing", "checksum", "size", "other")
_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")
_SIZES = re.compile(r"(\d+) bytes; expected [0-9a-f]*…?, (\d+|None) bytes")

REMEDIATION_ADVICE = {
    "missing": "The stored object is gone: check the storage location, then copy the artifact back from "
               "another location or take a new backup.",
    "checksum": "The stored bytes changed: treat the copy as damaged, restore from an intact copy and find out "
                "what wrote to the location.",
    "size": "The stored object has the wrong size (truncated or overwritten): re-copy it from an intact copy.",
    "other": "Read the run's error and its steps.",
}


class CertificationError(Exception):
    """A certification cannot be made as asked; the message says why (HTTP 400)."""


class CertificationConflict(CertificationError):
    """The month is already signed, or signed at the same moment by someone else (HTTP 409)."""


# --- periods -----------------------------------------------------------------------------------

def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    """The first moment of the month and of the next one (UTC)."""
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_label(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def parse_period(label: str) -> tuple[int, int]:
    """``YYYY-MM`` → ``(year, month)``; ``CertificationError`` for anything else."""
    found = _PERIOD.fullmatch(label or "")
    if not found or not 1 <= int(found[2]) <= 12 or int(found[1]) < 2000:
        raise CertificationError(f"{label!r} is not a month (YYYY-MM)")
    return int(found[1]), int(found[2])


def check_period(year: int, month: int) -> None:
    """Refuse a month that has not begun (there is nothing to certify yet)."""
    if not 1 <= month <= 12 or year < 2000:
        raise CertificationError(f"{year}-{month} is not a month")
    today = clock.today()
    if (year, month) > (today.year, today.month):
        raise CertificationError(f"{period_label(year, month)} has not begun yet")


def months(now: datetime | None = None) -> list[tuple[int, int]]:
    """Every month the panel could certify, newest first: from its first system (or record) to now."""
    today = (now or clock.now()).date()
    starts = [date(today.year, today.month, 1)]
    first_system = System.objects.order_by("created_at").values_list("created_at", flat=True).first()
    if first_system is not None:
        starts.append(date(first_system.year, first_system.month, 1))
    starts += [date(y, m, 1) for y, m in Certification.objects.values_list("year", "month")]
    first = min(starts)
    result, cursor = [], date(today.year, today.month, 1)
    while cursor >= first:
        result.append((cursor.year, cursor.month))
        cursor = date(cursor.year - (cursor.month == 1), (cursor.month - 2) % 12 + 1, 1)
    return result


# --- assembling the record ----------------------------------------------------------------------

def content_hash(record: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of ``record``."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def failure_reason(error: str) -> str:
    """Why a verification failed, from its error: ``missing``, ``checksum``, ``size`` or ``other``."""
    text = error or ""
    if "is missing from" in text or "no intact copy" in text:
        return "missing"
    sizes = _SIZES.search(text)
    if sizes and sizes[1] != sizes[2]:
        return "size"
    if text.startswith("checksum:") or "SHA-256" in text:
        return "checksum"
    return "other"


def iso_time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def _met(seconds: float | None, target: int) -> bool | None:
    return None if seconds is None else seconds <= target


def username_of(user) -> str | None:
    return user.get_username() if user is not None else None


def _artifact_url(pk) -> str:
    return reverse("backups:artifact-detail", args=[pk])


def _restore_runs(start: datetime, end: datetime, rto_target: int, rpo_target: int) -> list[dict]:

    drills = set(RestoreRun.objects.filter(drill_filter(), created_at__gte=start, created_at__lt=end)
                 .values_list("pk", flat=True))
    rows = []
    for run in (RestoreRun.objects.filter(created_at__gte=start, created_at__lt=end)
                .select_related("target", "artifact__system", "recovery_system", "requested_by",
                                "approval__decided_by")
                .order_by("created_at")):
        rto, rpo = _seconds(run.rto_seconds), _seconds(run.rpo_seconds)
        rows.append({
            "id": str(run.pk), "url": reverse("restores:run-detail", args=[run.pk]),
            "system": run.source_system.name, "artifact": str(run.artifact_id) if run.artifact_id else None,
            "artifact_url": _artifact_url(run.artifact_id) if run.artifact_id else None, "target": run.target.name,
            "environment": run.target.environment, "mode": run.mode, "drill": run.pk in drills,
            "state": run.state, "requested_by": username_of(run.requested_by),
            "approved_by": username_of(run.approval.decided_by) if run.approval else None,
            "requested_at": iso_time(run.created_at), "healthy_at": iso_time(run.healthy_at),
            "rto_seconds": rto, "rto_met": _met(rto, rto_target),
            "rpo_seconds": rpo, "rpo_met": _met(rpo, rpo_target), "error": run.error[:500] or None,
        })
    return rows


def _restore_tests(start: datetime, end: datetime, rto_target: int, rpo_target: int) -> list[dict]:

    rows = []
    for run in (VerificationRun.objects.filter(level=VerificationRun.Level.RESTORE_TEST, created_at__gte=start,
                                               created_at__lt=end)
                .select_related("artifact__system", "requested_by").order_by("created_at")):
        passed = run.state == VerificationRun.State.SUCCEEDED and run.finished_at is not None
        rto = _seconds((run.finished_at - run.created_at).total_seconds()) if passed else None
        rpo = _seconds((run.finished_at - run.artifact.created_at).total_seconds()) if passed else None
        rows.append({
            "id": str(run.pk), "url": reverse("restores:verification-detail", args=[run.pk]),
            "system": run.artifact.system.name, "artifact": str(run.artifact_id),
            "artifact_url": _artifact_url(run.artifact_id), "state": run.state, "trigger": run.trigger,
            "requested_by": username_of(run.requested_by), "requested_at": iso_time(run.created_at),
            "finished_at": iso_time(run.finished_at), "rto_seconds": rto, "rto_met": _met(rto, rto_target),
            "rpo_seconds": rpo, "rpo_met": _met(rpo, rpo_target), "error": run.error[:500] or None,
        })
    return rows


def _measured(rows: list[dict], key: str, target: int) -> dict:
    values = [r[f"{key}_seconds"] for r in rows if r[f"{key}_seconds"] is not None]
    return {"target_seconds": target, "measured": len(values), "met": sum(v <= target for v in values),
            "over": sum(v > target for v in values), "worst_seconds": max(values) if values else None,
            "best_seconds": min(values) if values else None}


def _backups(start: datetime, end: datetime) -> dict:
    by_kind = {kind: {"succeeded": 0, "failed": 0, "open": 0} for kind in Artifact.Kind.values}
    per_system: dict[str, dict] = {}
    runs = BackupRun.objects.filter(created_at__gte=start, created_at__lt=end).values_list(
        "system__name", "system_id", "kind", "state")
    for name, system_id, kind, state in runs:
        bucket = state if state in ("succeeded", "failed") else "open"
        by_kind.setdefault(kind, {"succeeded": 0, "failed": 0, "open": 0})[bucket] += 1
        row = per_system.setdefault(name, {"system": name, "url": reverse("backups:system-detail", args=[system_id]),
                                           "succeeded": 0, "failed": 0, "open": 0})
        row[bucket] += 1
    total = {key: sum(k[key] for k in by_kind.values()) for key in ("succeeded", "failed", "open")}
    return {"by_kind": by_kind, "per_system": sorted(per_system.values(), key=lambda r: r["system"]), "total": total}


def _verifications(start: datetime, end: datetime) -> tuple[dict, list]:

    counts = {"total": 0, "passed": 0, "failed": dict.fromkeys(FAILURE_REASONS, 0), "failed_total": 0, "open": 0}
    by_level: dict[str, dict] = {}
    failed = []
    for run in (VerificationRun.objects.filter(created_at__gte=start, created_at__lt=end)
                .select_related("artifact__system").order_by("created_at")):
        counts["total"] += 1
        level = by_level.setdefault(run.level, {"passed": 0, "failed": 0, "open": 0})
        if run.state == VerificationRun.State.SUCCEEDED:
            counts["passed"] += 1
            level["passed"] += 1
        elif run.state == VerificationRun.State.FAILED:
            reason = failure_reason(run.error)
            counts["failed"][reason] += 1
            counts["failed_total"] += 1
            level["failed"] += 1
            failed.append((run, reason))
        else:
            counts["open"] += 1
            level["open"] += 1
    counts["by_level"] = by_level
    return counts, failed


def _later_success(qs, after: datetime, url_name: str) -> dict:
    fix = qs.filter(created_at__gt=after).order_by("created_at").first()
    if fix is None:
        return {"state": "open", "by": None, "url": None, "at": None}
    return {"state": "remediated", "by": str(fix.pk), "url": reverse(url_name, args=[fix.pk]),
            "at": iso_time(getattr(fix, "finished_at", None) or fix.created_at)}


def _failures(start: datetime, end: datetime, failed_verifications: list) -> list[dict]:

    rows = []
    for run in (BackupRun.objects.filter(created_at__gte=start, created_at__lt=end, state=BackupRun.State.FAILED)
                .select_related("system").order_by("created_at")):
        fix = _later_success(BackupRun.objects.filter(system=run.system_id, kind=run.kind,
                                                      state=BackupRun.State.SUCCEEDED), run.created_at,
                             "backups:run-detail")
        rows.append({"what": "backup", "id": str(run.pk), "url": reverse("backups:run-detail", args=[run.pk]),
                     "system": run.system.name, "detail": f"{run.kind} backup", "at": iso_time(run.created_at),
                     "error": run.error[:500], "reason": None,
                     "remediation": fix | {"note": f"a later {run.kind} backup of {run.system.name} succeeded"
                                           if fix["state"] == "remediated" else
                                           f"no {run.kind} backup of {run.system.name} has succeeded since"}})
    for run, reason in failed_verifications:
        levels = [lvl for lvl in VerificationRun.Level.values
                  if VerificationRun.Level.values.index(lvl) >= VerificationRun.Level.values.index(run.level)]
        fix = _later_success(VerificationRun.objects.filter(artifact=run.artifact_id, level__in=levels,
                                                            state=VerificationRun.State.SUCCEEDED), run.created_at,
                             "restores:verification-detail")
        rows.append({"what": "verification", "id": str(run.pk),
                     "url": reverse("restores:verification-detail", args=[run.pk]),
                     "system": run.artifact.system.name, "detail": f"{run.level} verification of "
                                                                   f"{str(run.artifact_id)[:8]}",
                     "at": iso_time(run.created_at), "error": run.error[:500], "reason": reason,
                     "remediation": fix | {"note": "a later verification of the same artifact passed"
                                           if fix["state"] == "remediated" else REMEDIATION_ADVICE[reason]}})
    for run in (RestoreRun.objects.filter(created_at__gte=start, created_at__lt=end, state=RestoreRun.State.FAILED)
                .select_related("target", "artifact__system", "recovery_system").order_by("created_at")):
        fix = _later_success(RestoreRun.objects.filter(target=run.target_id, state=RestoreRun.State.SUCCEEDED),
                             run.created_at, "restores:run-detail")
        rows.append({"what": "restore", "id": str(run.pk), "url": reverse("restores:run-detail", args=[run.pk]),
                     "system": run.source_system.name, "detail": f"restore into {run.target.name}",
                     "at": iso_time(run.created_at), "error": run.error[:500], "reason": None,
                     "remediation": fix | {"note": f"a later restore into {run.target.name} succeeded"
                                           if fix["state"] == "remediated" else
                                           "no restore into this target has succeeded since"}})
    return sorted(rows, key=lambda r: r["at"])


def _approval_url(approval: Approval) -> str | None:
    kind = APPROVAL_KINDS.get(approval.kind)
    return kind.url(approval) if kind else None


def _approvals(start: datetime, end: datetime) -> dict:
    counts = {"requested": 0, "approved": 0, "rejected": 0, "expired": 0, "pending": 0}
    rows = []
    for approval in (Approval.objects.filter(created_at__gte=start, created_at__lt=end)
                     .select_related("requested_by", "decided_by").order_by("created_at")):
        counts["requested"] += 1
        state = approval.state
        bucket = "approved" if state in (Approval.State.APPROVED, Approval.State.CONSUMED) else state
        if bucket in counts:
            counts[bucket] += 1
        rows.append({"id": approval.pk, "kind": approval.kind, "subject": approval.object_id,
                     "url": _approval_url(approval), "state": state,
                     "requested_by": username_of(approval.requested_by), "decided_by": username_of(approval.decided_by),
                     "requested_at": iso_time(approval.created_at), "decided_at": iso_time(approval.decided_at),
                     "expires_at": iso_time(approval.expires_at)})
    return {"counts": counts, "items": rows}


def _contacts() -> dict:
    today = clock.today()
    rows = [{"id": c.pk, "name": c.name, "level": c.level, "last_verified_on": c.last_verified_on.isoformat()
             if c.last_verified_on else None, "verified_recently": not is_due_for_review(c, today)}
            for c in Contact.objects.active().in_roster_order()]
    return {"review_days": settings.CONTACT_REVIEW_DAYS, "as_of": today.isoformat(), "active": len(rows),
            "verified_recently": sum(r["verified_recently"] for r in rows),
            "due_for_review": sum(not r["verified_recently"] for r in rows), "items": rows,
            "url": reverse("compliance:contact-list")}


def _checklists(year: int, month: int) -> dict:
    summary = checklist_month_summary(year, month)
    for row in summary["periods"]:
        row["url"] = reverse("compliance:checklist-period-detail", args=[row["cadence"], row["label"]])
    return summary


def _audit_head() -> dict:
    head = AuditEvent.objects.order_by("-seq").values("seq", "hash").first()
    if head is None:
        return {"seq": None, "hash": None, "url": None}
    return {"seq": head["seq"], "hash": head["hash"], "url": reverse("compliance:audit-detail", args=[head["seq"]])}


def _incidents(start: datetime, end: datetime) -> list[dict]:
    """Incidents and drills declared in the month: their RTO and RPO against their systems' targets."""
    rows = (Incident.objects.filter(declared_at__gte=start, declared_at__lt=end)
            .select_related("system", "runbook").order_by("declared_at"))
    found = []
    for i in rows:
        rto, rpo = _seconds(i.rto_seconds), _seconds(i.rpo_seconds)
        found.append({"id": str(i.pk), "url": reverse("restores:incident-report", args=[i.pk]), "drill": i.is_drill,
                      "system": i.system.name, "scenario": i.scenario, "runbook_version": i.runbook.version,
                      "state": i.state, "declared_at": iso_time(i.declared_at),
                      "recovered_at": iso_time(i.recovered_at) if i.recovered_at else None,
                      "rto_seconds": rto, "rto_target_seconds": i.rto_target_seconds,
                      "rto_met": _met(rto, i.rto_target_seconds), "rpo_seconds": rpo,
                      "rpo_target_seconds": i.rpo_target_seconds, "rpo_met": _met(rpo, i.rpo_target_seconds),
                      "report_sha256": i.report_hash or None})
    return found


def certification_assemble(*, year: int, month: int) -> dict:
    """The record of one month, from the panel's rows (reads only; see the module docstring)."""
    start, end = month_bounds(year, month)
    rto_target, rpo_target = rto_target_seconds(), rpo_target_seconds()
    restores = _restore_runs(start, end, rto_target, rpo_target)
    restore_tests = _restore_tests(start, end, rto_target, rpo_target)
    verifications, failed_verifications = _verifications(start, end)
    scope = [{"id": s.pk, "name": s.name, "url": reverse("backups:system-detail", args=[s.pk])}
             for s in System.objects.filter(created_at__lt=end).order_by("name")]
    measured = restores + restore_tests
    record = {
        "type": RECORD_TYPE,
        "v": RECORD_VERSION,
        "period": {"year": year, "month": month, "label": period_label(year, month), "from": iso_time(start),
                   "to": iso_time(end), "complete": clock.now() >= end},
        "assembled_at": iso_time(clock.now()),
        "targets": {"rto_seconds": rto_target, "rpo_seconds": rpo_target},
        "scope": scope,
        "backups": _backups(start, end),
        "restores": restores,
        "restore_tests": restore_tests,
        "incidents": _incidents(start, end),
        "rto": _measured(measured, "rto", rto_target),
        "rpo": _measured(measured, "rpo", rpo_target),
        "verifications": verifications,
        "failures": _failures(start, end, failed_verifications),
        "approvals": _approvals(start, end),
        "contacts": _contacts(),
        "checklists": _checklists(year, month),
        "audit_head": _audit_head(),
    }
    # What PostgreSQL's jsonb gives back must hash the same: keep only JSON's own types.
    return json.loads(canonical_bytes(record))
