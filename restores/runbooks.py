"""Runbooks: one versioned template per scenario, the steps' shape, and the admin's edit (a new version, audited).

A version is written once and never changed: ``runbook_edit`` writes the next one, and an
incident keeps the version it was declared with (``Incident.runbook``). The first versions
are seeded by a data migration from ``restores.runbook_seed``.
"""

import re

from django.db import IntegrityError, transaction

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.permissions import Cap, require_cap
from restores.models import IncidentStep, RecoveryObjective, RunbookTemplate, Scenario
from restores.runbook_seed import SEED
from restores.runstate import RestoreConflict, RestoreError

# What an automatic step does (``restores.incident_steps`` runs each).
ACTIONS = {
    "assess": "Assess damage: connect, SELECT 1, compare table counts with the newest manifest",
    "recovery_point": "Choose the recovery point (the newest verified full)",
    "restore_database": "Restore the database into the incident's target (production: a manager approves)",
    "restore_config": "Restore the configuration closest to the recovery point",
    "health_checks": "Run health checks on the target (database, row counts, health URLs)",
    "recovery_checklist": "Open the post-recovery checklist of the restore",
}
CODE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
MAX_STEPS = 40
STEP_FIELDS = {"code", "title", "phase", "kind", "action", "expected_seconds", "required", "evidence_required", "help"}


class RunbookError(RestoreError):
    """A runbook that cannot be saved; ``errors`` maps ``steps[i].field`` to what is wrong."""

    def __init__(self, message: str, errors: dict | None = None):
        super().__init__(message)
        self.errors = errors or {}


def validate_steps(steps) -> list[dict]:
    """The steps of a runbook, checked field by field; ``RunbookError`` names every wrong one."""
    errors: dict[str, str] = {}
    if not isinstance(steps, list) or not steps:
        raise RunbookError("a runbook has at least one step", {"steps": "a non-empty list of steps"})
    if len(steps) > MAX_STEPS:
        raise RunbookError(f"a runbook has at most {MAX_STEPS} steps", {"steps": f"at most {MAX_STEPS}"})
    clean, codes = [], set()
    for i, step in enumerate(steps):
        where = f"steps[{i}]"
        if not isinstance(step, dict):
            errors[where] = "a step is an object"
            continue
        unknown = sorted(set(step) - STEP_FIELDS)
        if unknown:
            errors[f"{where}.{unknown[0]}"] = "not a field of a step"
        code, title, phase = step.get("code"), step.get("title"), step.get("phase")
        kind, action = step.get("kind"), step.get("action") or ""
        seconds = step.get("expected_seconds")
        if not isinstance(code, str) or not CODE.match(code):
            errors[f"{where}.code"] = "lowercase letters, digits and '-', at most 40"
        elif code in codes:
            errors[f"{where}.code"] = f"{code!r} is used twice"
        codes.add(code)
        if not isinstance(title, str) or not title.strip() or len(title) > 200:
            errors[f"{where}.title"] = "a title of 1 to 200 characters"
        if not isinstance(phase, str) or not phase.strip() or len(phase) > 60:
            errors[f"{where}.phase"] = "a phase of 1 to 60 characters"
        if kind not in IncidentStep.Kind.values:
            errors[f"{where}.kind"] = f"one of {', '.join(IncidentStep.Kind.values)}"
        elif kind == IncidentStep.Kind.AUTOMATIC and action not in ACTIONS:
            errors[f"{where}.action"] = f"an automatic step does one of {', '.join(ACTIONS)}"
        elif kind != IncidentStep.Kind.AUTOMATIC and action:
            errors[f"{where}.action"] = "only automatic steps have an action"
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= 86400:
            errors[f"{where}.expected_seconds"] = "a whole number of seconds, 1 to 86400"
        for flag in ("required", "evidence_required"):
            if not isinstance(step.get(flag, False), bool):
                errors[f"{where}.{flag}"] = "true or false"
        if step.get("evidence_required") and kind != IncidentStep.Kind.MANUAL:
            errors[f"{where}.evidence_required"] = "only manual steps take an evidence link"
        help_text = step.get("help", "")
        if not isinstance(help_text, str) or len(help_text) > 500:
            errors[f"{where}.help"] = "text of at most 500 characters"
        if not errors:
            clean.append({"code": code, "title": title.strip(), "phase": phase.strip(), "kind": kind,
                          "action": action, "expected_seconds": seconds, "required": step.get("required", True),
                          "evidence_required": step.get("evidence_required", False), "help": help_text.strip()})
    if errors:
        first = next(iter(errors.items()))
        raise RunbookError(f"{first[0]}: {first[1]}", errors)
    return clean


def current_runbook(scenario: str) -> RunbookTemplate:
    """The newest version of ``scenario``'s runbook; a scenario with none gets version 1 from the guide (the
    migration seeds it; a database emptied since, as transactional tests do, gets it back here)."""
    runbook = RunbookTemplate.objects.filter(scenario=scenario).order_by("-version").first()
    if runbook is not None:
        return runbook
    if scenario not in SEED:
        raise RunbookError(f"there is no runbook for {scenario!r}", {"scenario": "no runbook for this scenario"})
    runbook, _ = RunbookTemplate.objects.get_or_create(scenario=scenario, version=1, defaults={
        "title": SEED[scenario]["title"], "steps": SEED[scenario]["steps"], "note": "seeded from the recovery guide"})
    return runbook


def runbooks_current() -> list[RunbookTemplate]:
    """The newest version of every scenario's runbook."""
    return [current_runbook(scenario) for scenario in Scenario.values]


def runbook_edit(*, actor, scenario: str, steps, title: str = "", note: str = "", request=None) -> RunbookTemplate:
    """Write the next version of ``scenario``'s runbook (admins). Incidents already declared keep theirs."""
    require_cap(actor, Cap.MANAGE_PANEL, action="runbook.edit")
    if scenario not in Scenario.values:
        raise RunbookError(f"unknown scenario {scenario!r}", {"scenario": f"one of {', '.join(Scenario.values)}"})
    clean = validate_steps(steps)
    note = (note or "").strip()
    if not note:
        raise RunbookError("say what changed in this version", {"note": "required"})
    previous = current_runbook(scenario)
    with transaction.atomic():
        try:
            # The unique (scenario, version) decides between two admins saving at once.
            with transaction.atomic():
                runbook = RunbookTemplate.objects.create(
                    scenario=scenario, version=previous.version + 1, title=(title or previous.title).strip()[:200],
                    steps=clean, note=note[:500], created_by=actor)
        except IntegrityError:
            raise RestoreConflict("someone saved this runbook meanwhile: reload it and edit the newest version"
                                  ) from None
        before = {s["code"] for s in previous.steps}
        after = {s["code"] for s in clean}
        audit_record(actor=actor, action=AuditAction.RUNBOOK_EDITED, obj=runbook, request=request, details={
            "scenario": scenario, "version": runbook.version, "previous_version": previous.version,
            "note": note[:300], "added": sorted(after - before), "removed": sorted(before - after),
            "steps": len(clean)})
    return runbook


def objective_set(*, actor, system, rto_minutes: int, rpo_minutes: int, request=None) -> RecoveryObjective:
    """Set a system's RTO and RPO targets (admins); incidents declared later measure against them."""
    require_cap(actor, Cap.MANAGE_PANEL, action="recovery_objective.set", obj=system)
    errors = {}
    for name, value in (("rto_minutes", rto_minutes), ("rpo_minutes", rpo_minutes)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 7 * 24 * 60:
            errors[name] = "a whole number of minutes, 1 to 10080"
    if errors:
        raise RunbookError(next(f"{k}: {v}" for k, v in errors.items()), errors)
    with transaction.atomic():
        objective, _ = RecoveryObjective.objects.update_or_create(
            system=system, defaults={"rto_minutes": rto_minutes, "rpo_minutes": rpo_minutes})
        audit_record(actor=actor, action=AuditAction.RECOVERY_OBJECTIVE_SET, obj=system, request=request,
                     details={"system": system.name, "rto_minutes": rto_minutes, "rpo_minutes": rpo_minutes})
    return objective
