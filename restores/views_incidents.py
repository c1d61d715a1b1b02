"""Pages of disaster mode: declare, the live incident page, its steps, closing, the report, and the runbooks.

Views parse input, call one service of ``restores.incidents`` / ``incident_steps`` /
``runbooks`` and redirect; a ``Denied`` becomes a 403 and an ``access.denied`` event.
The incident page's live region polls ``incident-live`` (``static/js/panel.js``).
"""

import json
import uuid

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from backups.models import System
from drpanel import runs
from drpanel.permissions import Cap, capability_required, has_cap
from drpanel.templatetags.panel_time import format_at
from restores import incident_steps, incidents, runbooks
from restores.models import Incident, RunbookTemplate, Scenario
from restores.runstate import RestoreConflict, RestoreError
from restores.selectors import visible_targets


def _incident(pk) -> Incident:
    incident = Incident.objects.select_related("system", "target", "runbook", "declared_by", "closed_by").filter(
        pk=pk).first()
    if incident is None:
        raise Http404("No such incident.")
    incident_steps.incident_steps_sync(incident)
    incident.refresh_from_db()
    return incident


# What a refused form said, given back to the page it came from (the session carries it across the redirect):
# a refused step or close loses nothing the person typed.
KEPT_SESSION_KEY = "incident_kept"
KEPT_FIELDS = ("note", "evidence_url", "reason", "point_kind", "point_time", "cause", "remediation", "follow_ups")


def _keep(request, incident: Incident, form: str, data) -> None:
    request.session[KEPT_SESSION_KEY] = {"incident": str(incident.pk), "form": form,
                                         "fields": {k: str(data.get(k, ""))[:4000] for k in KEPT_FIELDS if data.get(k)}}


def _kept(request, incident: Incident) -> dict:
    """``{form: fields}`` a refused form left for this incident's page (read once)."""
    kept = request.session.pop(KEPT_SESSION_KEY, None)
    if not isinstance(kept, dict) or kept.get("incident") != str(incident.pk):
        return {}
    return {kept.get("form", ""): kept.get("fields") or {}}


def _context(request, incident: Incident, kept: dict | None = None) -> dict:
    steps = list(incident.steps.select_related("assignee", "started_by", "finished_by", "restore_run__approval"
                                               ).order_by("position"))
    nxt = incidents.current_step(steps)
    approvals = {a["step"]: a for a in incidents.approvals_of(incident)}
    kept = kept or {}
    for step in steps:
        step.approval_info = approvals.get(step.code)
        step.waiting = runs.pool_waiting(incident_steps.INCIDENT_STEP_RUNS, step)
        step.kept_complete = kept.get(f"{step.position + 1}/complete", {})
        step.kept_skip = kept.get(f"{step.position + 1}/skip", {})
        step.kept_start = kept.get(f"{step.position + 1}/start", {})
    return {
        "kept_close": kept.get("close", {}),
        "incident": incident, "steps": steps, "next_step": nxt,
        "can_run": has_cap(request.user, incidents.RUN_CAP) and incident.is_open,
        "can_close": has_cap(request.user, incidents.CLOSE_CAP) and incident.is_open,
        "open_required": [s for s in steps if s.required and not s.is_finished],
        "rto": incident.rto_seconds, "rpo": incident.rpo_seconds, "zone": timezone.localtime().strftime("%Z"),
    }


@capability_required(Cap.VIEW_PANEL)
@require_http_methods(["GET", "POST"])
def incident_list(request):
    if request.method == "POST":
        data = request.POST
        system = System.objects.filter(pk=data.get("system") if str(data.get("system", "")).isdigit() else None
                                       ).first()
        target = visible_targets(request.user).filter(
            pk=data.get("target") if str(data.get("target", "")).isdigit() else None).first()
        if system is None or target is None:
            messages.error(request, "Choose the system and the target to recover into.")
            return redirect("restores:incident-list")
        try:
            incident = incidents.incident_declare(
                actor=request.user, system=system, scenario=data.get("scenario", ""),
                severity=data.get("severity", ""), target=target, is_drill=data.get("drill") == "on",
                summary=data.get("summary", ""), noticed_at=data.get("noticed_at") or None,
                noticed_reason=data.get("noticed_reason", ""), request=request)
        except incidents.IncidentConflict as exc:
            messages.error(request, str(exc))
            if exc.open_incident is not None:
                return redirect("restores:incident-detail", exc.open_incident.pk)
            return redirect("restores:incident-list")
        except RestoreError as exc:
            messages.error(request, str(exc))
            return redirect("restores:incident-list")
        messages.success(request, f"Declared: the clock runs from {format_at(incident.failure_at, 'H:i:s')}.")
        return redirect("restores:incident-detail", incident.pk)
    rows = Incident.objects.select_related("system", "target", "declared_by")[:100]
    return render(request, "restores/incident_list.html", {
        "incidents": rows, "systems": System.objects.order_by("name"),
        "targets": visible_targets(request.user).filter(is_active=True),
        "scenarios": Scenario.choices, "severities": Incident.Severity.choices,
        "can_declare": has_cap(request.user, incidents.RUN_CAP), "preselect": request.GET.get("system", ""),
        "drill": request.GET.get("drill") == "1",
    })


@capability_required(Cap.VIEW_PANEL)
@require_GET
def incident_detail(request, pk: uuid.UUID):
    incident = _incident(pk)
    return render(request, "restores/incident_detail.html", _context(request, incident, _kept(request, incident)))


@capability_required(Cap.VIEW_PANEL)
@require_GET
def incident_live(request, pk: uuid.UUID):
    return render(request, "restores/_incident_live.html", _context(request, _incident(pk)))


STEP_VERBS = ("start", "complete", "skip")


@capability_required(Cap.VIEW_PANEL)
@require_POST
def incident_step(request, pk: uuid.UUID, position: int, verb: str):
    if verb not in STEP_VERBS:
        raise Http404("No such action.")
    incident = _incident(pk)
    data = request.POST
    try:
        step = incident_steps.access_step(incident, position)
        if verb == "start":
            assignee = None
            if data.get("assignee"):
                assignee = get_user_model().objects.filter(username=data["assignee"], is_active=True).first()
                if assignee is None:
                    raise incidents.IncidentError("assignee: no such active user")
            # The recovery point step of a continuously protected system: latest, a moment, or the newest full.
            point = data.get("point_kind", "")
            if point == "time":
                point = data.get("point_time", "").strip() or "time"
            step = incident_steps.incident_step_start(actor=request.user, step=step, assignee=assignee, point=point,
                                                      request=request)
            messages.success(request, f"Step {position} {step.get_state_display()}.")
        elif verb == "complete":
            incident_steps.incident_step_complete(actor=request.user, step=step, note=data.get("note", ""),
                                                  evidence_url=data.get("evidence_url", ""),
                                                  decision=data.get("decision", ""), request=request)
            messages.success(request, f"Step {position} done.")
        else:
            incident_steps.incident_step_skip(actor=request.user, step=step, reason=data.get("reason", ""),
                                              request=request)
            messages.success(request, f"Step {position} skipped.")
    except RestoreError as exc:
        messages.error(request, str(exc))
        _keep(request, incident, f"{position}/{verb}", data)
    return redirect(reverse("restores:incident-detail", args=[incident.pk]) + f"#step-{position}")


@capability_required(Cap.VIEW_PANEL)
@require_POST
def incident_close(request, pk: uuid.UUID):
    incident = _incident(pk)
    review = {k: request.POST.get(k, "") for k in incidents.REVIEW_FIELDS}
    try:
        incidents.incident_close(actor=request.user, incident=incident, review=review, request=request)
        messages.success(request, "Closed: the report's hash is signed into the audit log.")
        return redirect("restores:incident-report", incident.pk)
    except RestoreError as exc:
        messages.error(request, str(exc))
        _keep(request, incident, "close", request.POST)
    return redirect(reverse("restores:incident-detail", args=[incident.pk]) + "#close")


@capability_required(Cap.VIEW_PANEL)
@require_GET
def incident_report(request, pk: uuid.UUID):
    incident = _incident(pk)
    report = incident.report if incident.report_hash else incidents.incident_report(incident)
    if request.GET.get("format") == "json":
        return JsonResponse({"report": report, "report_sha256": incident.report_hash or None,
                             "signed": bool(incident.report_hash)})
    return render(request, "restores/incident_report.html", {"incident": incident, "report": report})


@capability_required(Cap.VIEW_PANEL)
@require_GET
def runbook_list(request):
    return render(request, "restores/runbook_list.html", {
        "runbooks": runbooks.runbooks_current(), "history": RunbookTemplate.objects.select_related("created_by"),
        "can_edit": has_cap(request.user, Cap.MANAGE_PANEL)})


@capability_required(Cap.MANAGE_PANEL)
@require_http_methods(["GET", "POST"])
def runbook_edit(request, scenario: str):
    if scenario not in Scenario.values:
        raise Http404("No such scenario.")
    current = runbooks.current_runbook(scenario)
    text = json.dumps(current.steps, indent=2, ensure_ascii=False)
    errors = {}
    if request.method == "POST":
        text = request.POST.get("steps", "")
        try:
            steps = json.loads(text)
        except json.JSONDecodeError as exc:
            errors = {"steps": f"not JSON: {exc}"}
        else:
            try:
                runbook = runbooks.runbook_edit(actor=request.user, scenario=scenario, steps=steps,
                                                title=request.POST.get("title", ""), note=request.POST.get("note", ""),
                                                request=request)
                messages.success(request, f"Saved as version {runbook.version}.")
                return redirect("restores:runbook-list")
            except runbooks.RunbookError as exc:
                errors = exc.errors or {"steps": str(exc)}
            except RestoreConflict as exc:
                errors = {"steps": str(exc)}
    return render(request, "restores/runbook_edit.html", {
        "runbook": current, "text": text, "errors": errors, "actions": runbooks.ACTIONS}, status=400 if errors else 200)
