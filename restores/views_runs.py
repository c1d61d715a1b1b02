"""Pages of restore runs and verifications: request, live progress, approval, rollback, the checklist.

Views parse input, fetch the run through ``access_run`` (the same 404 for "missing" and
"not yours"), call one service of ``restores.requests`` / ``rollback`` / ``recovery_checks`` /
``verifications`` / ``cancel`` / ``adoption`` and redirect.
A ``Denied`` raised by a service becomes a 403 and an ``access.denied`` audit event.
"""

import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.db.models import Q
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from backups.models import Artifact, System
from compliance.audit.models import AuditEvent
from drpanel import runs
from drpanel.passwords import PasswordError
from drpanel.permissions import Cap, capability_required, has_cap, has_object_right
from restores import adoption, cancel, recovery_checks, requests, rollback, runstate, verifications
from restores.execution import RESTORE_RUNS
from restores.forms import recovery_point_from
from restores.models import APPROVE_RESTORE, RecoveryCheck, RestoreRun, VerificationRun
from restores.moments import RELATIVE_CHOICES
from restores.offsite_recovery import offsite_sources
from restores.selectors import access_run, access_verification, restorable_targets, visible_runs, visible_targets

STATE_HELP = {
    "requested": "The request was recorded.",
    "awaiting_approval": "Waiting for a manager other than the requester to approve it, with their password.",
    "approved": "Approved; it is being queued.",
    "queued": "Waiting for a worker on the restore queue. Nothing has been touched yet.",
    "running": "A worker is restoring into a side database; the target is only touched at the swap.",
    "succeeded": "Restored, swapped in and healthy.",
    "failed": "The restore failed.",
    "rolled_back": "Rolled back: the database (and config) the target had before this restore are live again.",
    "rejected": "Rejected: this request is closed for good; ask again if needed.",
    "expired": "Expired: nobody approved it in time; it was rejected automatically.",
    "cancelled": "Cancelled before its swap: its job was stopped, the side database dropped, the target untouched.",
}


def _messages_for(request, exc: Exception) -> None:
    messages.error(request, str(exc))


# --- the list --------------------------------------------------------------------------------

@capability_required(Cap.VIEW_PANEL)
@require_GET
def run_list(request):
    state = request.GET.get("state", "")
    rows = visible_runs(request.user)
    if state in RestoreRun.State.values:
        rows = rows.filter(state=state)
    rows = list(rows[:100])
    awaiting = [r for r in visible_runs(request.user).filter(state=RestoreRun.State.AWAITING_APPROVAL)
                if r.requested_by_id != request.user.pk and has_object_right(request.user, APPROVE_RESTORE, r.target)]
    verifications_list = VerificationRun.objects.select_related("artifact__system", "requested_by")[:30]
    return render(request, "restores/run_list.html", {
        "runs": rows, "awaiting": awaiting, "verifications": verifications_list, "state": state,
        "states": RestoreRun.State.choices,
    })


# --- requesting a restore --------------------------------------------------------------------

def _default_mode(artifact: Artifact) -> str:
    return RestoreRun.Mode.CONFIG if artifact.kind == Artifact.Kind.CONFIG else RestoreRun.Mode.DATABASE


@capability_required(Cap.START_JOBS)
@require_http_methods(["GET", "POST"])
def run_create(request):
    data = request.POST if request.method == "POST" else request.GET
    artifact = get_object_or_404(Artifact.objects.select_related("system"), pk=_uuid(data.get("artifact")))
    targets = list(restorable_targets(request.user, artifact))
    target = next((t for t in targets if str(t.pk) == data.get("target", "")), None)
    if request.method == "POST" and target is None and str(data.get("target", "")).isdigit():
        # A target the user sees but may not restore into: the service refuses it (403, audited).
        target = visible_targets(request.user).filter(pk=int(data["target"])).first()
    mode = data.get("mode") or _default_mode(artifact)
    if mode not in RestoreRun.Mode.values:
        mode = _default_mode(artifact)
    status = 200
    if request.method == "POST":
        if target is None:
            messages.error(request, "Choose a target you may restore into.")
            status = 400
        else:
            try:
                run = requests.restore_request(
                    actor=request.user, artifact=artifact, target=target, mode=mode,
                    confirm=request.POST.get("confirm", ""), is_drill=request.POST.get("is_drill") == "on",
                    reason=request.POST.get("reason", ""), request=request)
            except runstate.RestoreConflict as exc:
                _messages_for(request, exc)
                status = 409
            except runstate.RestoreError as exc:
                _messages_for(request, exc)
                status = 400
            else:
                if run.state == RestoreRun.State.AWAITING_APPROVAL:
                    messages.success(request, f"Restore into {target.name} requested: it waits for a manager's "
                                              "approval.")
                else:
                    messages.success(request, f"Restore into {target.name} queued.")
                return redirect("restores:run-detail", pk=run.pk)
    return render(request, "restores/run_create.html", {
        "artifact": artifact, "targets": targets, "target": target, "mode": mode, "modes": RestoreRun.Mode.choices,
        "config_artifact": requests.config_artifact_for(artifact) if mode == RestoreRun.Mode.FULL else None,
        "approval_minutes": _approval_minutes(),
    }, status=status)


@capability_required(Cap.START_JOBS)
@require_http_methods(["GET", "POST"])
def point_create(request):
    """Ask for a point-in-time restore of a continuously protected system (database-only; whole-server into a
    server target)."""
    data = request.POST if request.method == "POST" else request.GET
    system = get_object_or_404(System, name=data.get("system", ""), continuous_enabled=True)
    targets = list(restorable_targets(request.user).filter(Q(system__isnull=True) | Q(system=system)))
    target = next((t for t in targets if str(t.pk) == data.get("target", "")), None)
    if request.method == "POST" and target is None and str(data.get("target", "")).isdigit():
        # A target the user sees but may not restore into: the service refuses it (403, audited).
        target = visible_targets(request.user).filter(pk=int(data["target"])).first()
    now = timezone.localtime()
    form = {"kind": data.get("kind") or "time", "name": data.get("name", ""),
            "time": data.get("time") or (now - timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S"),
            "source": data.get("source") or "barman"}
    sources = offsite_sources(system)
    location = next((s["location"] for s in sources if str(s["location"].pk) == form["source"]), None)
    status = 200
    if request.method == "POST":
        try:
            point = recovery_point_from(form["kind"], form["time"], form["name"])
        except ValueError as exc:
            messages.error(request, str(exc))
            status = 400
        else:
            if location is None and form["source"] != "barman":
                messages.error(request, "Choose Barman's home or an enabled off-site location as the source.")
                status = 400
            elif target is None:
                messages.error(request, "Choose a target you may restore into.")
                status = 400
            else:
                try:
                    run = requests.restore_request_point(
                        actor=request.user, system=system, point=point, target=target,
                        mode=RestoreRun.Mode.SERVER if target.is_server else RestoreRun.Mode.DATABASE,
                        confirm=request.POST.get("confirm", ""),
                        is_drill=request.POST.get("is_drill") == "on", reason=request.POST.get("reason", ""),
                        request=request, location=location)
                except runstate.RestoreError as exc:
                    _messages_for(request, exc)
                    status = 409 if isinstance(exc, runstate.RestoreConflict) else 400
                else:
                    messages.success(request, f"Restore of {system.name} at {point} into {target.name} "
                                     + ("requested: it waits for a manager's approval."
                                        if run.state == RestoreRun.State.AWAITING_APPROVAL else "queued."))
                    return redirect("restores:run-detail", pk=run.pk)
    return render(request, "restores/point_create.html", {
        "system": system, "targets": targets, "target": target, "form": form,
        "first_base": requests.first_base_backup(system), "zone": now.strftime("%Z"), "now": now,
        "relative_choices": RELATIVE_CHOICES, "sources": sources,
        "approval_minutes": _approval_minutes()}, status=status)


def _approval_minutes() -> int:
    return settings.APPROVAL_TTL_MINUTES


def _uuid(value):
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        raise Http404("No such artifact.") from None


# --- one run ---------------------------------------------------------------------------------

def _run_context(request, run: RestoreRun) -> dict:
    user = request.user
    approver = has_object_right(user, APPROVE_RESTORE, run.target)
    awaiting = run.state == RestoreRun.State.AWAITING_APPROVAL
    blocker = rollback.rollback_blocker(run) if run.swapped_at else None
    return {
        "run": run, "state_help": STATE_HELP.get(run.state, ""),
        "can_approve": awaiting and approver and run.requested_by_id != user.pk,
        "is_requester": run.requested_by_id == user.pk,
        "can_reject": awaiting and (approver or run.requested_by_id == user.pk),
        "approver": approver,
        "can_rollback": approver and run.swapped_at is not None and blocker is None,
        "rollback_blocker": blocker,
        "can_tick": has_cap(user, Cap.TICK_CHECKLISTS),
        "can_cancel": (run.state in (RestoreRun.State.QUEUED, RestoreRun.State.RUNNING) and run.swapped_at is None
                       and cancel.may_cancel(user, run.requested_by_id)),
        "now": timezone.now(),
        "waiting": runs.pool_waiting(RESTORE_RUNS, run),
    }


@capability_required(Cap.VIEW_PANEL)
@require_GET
def run_detail(request, pk):
    run = access_run(request.user, pk)
    events = AuditEvent.objects.filter(
        Q(object_type="restores.restorerun", object_id=str(run.pk))).order_by("seq")
    context = _run_context(request, run)
    context.update({"events": events[:300], "checks": list(run.recovery_checks.select_related("ticked_by")),
                    "approval": run.approval})
    return render(request, "restores/run_detail.html", context)


@capability_required(Cap.VIEW_PANEL)
@require_GET
def run_progress(request, pk):
    run = access_run(request.user, pk)
    return render(request, "restores/_run_progress.html", _run_context(request, run))


@capability_required(Cap.VIEW_PANEL)
@require_POST
def run_approve(request, pk):
    run = access_run(request.user, pk)
    try:
        requests.restore_approve(actor=request.user, run=run, password=request.POST.get("password", ""),
                                 note=request.POST.get("note", ""), request=request)
        messages.success(request, "Approved: the restore is queued.")
    except (runstate.RestoreError, PasswordError) as exc:
        _messages_for(request, exc)
    return redirect("restores:run-detail", pk=run.pk)


@capability_required(Cap.VIEW_PANEL)
@require_POST
def run_reject(request, pk):
    run = access_run(request.user, pk)
    try:
        requests.restore_reject(actor=request.user, run=run, note=request.POST.get("note", ""), request=request)
        messages.success(request, "Withdrawn." if run.requested_by_id == request.user.pk else "Rejected.")
    except runstate.RestoreError as exc:
        _messages_for(request, exc)
    return redirect("restores:run-detail", pk=run.pk)


@capability_required(Cap.VIEW_PANEL)
@require_POST
def run_rollback(request, pk):
    run = access_run(request.user, pk)
    try:
        run = rollback.restore_rollback(actor=request.user, run=run, password=request.POST.get("password", ""),
                                        request=request)
        messages.success(request, f"Rolled back in {run.rollback_seconds * 1000:.0f} ms: the previous state of "
                                  f"{run.target.name} is live again.")
    except (runstate.RestoreError, PasswordError) as exc:
        _messages_for(request, exc)
    return redirect("restores:run-detail", pk=run.pk)


@capability_required(Cap.VIEW_PANEL)
@require_POST
def run_cancel(request, pk):
    run = access_run(request.user, pk)
    try:
        cancel.restore_cancel(actor=request.user, run=run, request=request)
        messages.success(request, f"Cancelled: {run.target.name} was not touched.")
    except runstate.RestoreError as exc:
        _messages_for(request, exc)
    return redirect("restores:run-detail", pk=run.pk)


@capability_required(Cap.TICK_CHECKLISTS)
@require_POST
def check_tick(request, pk, check_pk: int):
    run = access_run(request.user, pk)
    check = get_object_or_404(RecoveryCheck, pk=check_pk, run=run)
    try:
        recovery_checks.recovery_check_tick(actor=request.user, check=check, note=request.POST.get("note", ""),
                                            request=request)
        messages.success(request, f"“{check.title}” ticked.")
    except runstate.RestoreError as exc:
        _messages_for(request, exc)
    return redirect(reverse("restores:run-detail", kwargs={"pk": run.pk}) + "#checklist")


@capability_required(Cap.TICK_CHECKLISTS)
@require_POST
def checks_refresh(request, pk):
    run = access_run(request.user, pk)
    recovery_checks.recovery_checks_refresh(run, actor=request.user, request=request)
    messages.success(request, "The automatic items were checked again.")
    return redirect(reverse("restores:run-detail", kwargs={"pk": run.pk}) + "#checklist")


# --- verifications -----------------------------------------------------------------------------

@capability_required(Cap.START_JOBS)
@require_POST
def verification_create(request):
    artifact = get_object_or_404(Artifact.objects.select_related("system"), pk=_uuid(request.POST.get("artifact")))
    try:
        run = verifications.verification_request(actor=request.user, artifact=artifact,
                                                 level=request.POST.get("level", ""), request=request)
    except verifications.VerificationError as exc:
        _messages_for(request, exc)
        return redirect("backups:artifact-detail", pk=artifact.pk)
    messages.success(request, f"Verification at the {run.level} level queued.")
    return redirect("restores:verification-detail", pk=run.pk)


@capability_required(Cap.VIEW_PANEL)
@require_POST
def artifact_adopt(request, pk):
    """Adopt a quarantined artifact (admins; the service refuses anyone else, audited)."""
    artifact = get_object_or_404(Artifact.objects.select_related("system"), pk=pk)
    try:
        run = adoption.artifact_adopt(actor=request.user, artifact=artifact, request=request)
    except adoption.AdoptionError as exc:
        _messages_for(request, exc)
        return redirect("backups:artifact-detail", pk=artifact.pk)
    messages.success(request, f"Adopted: the artifact stays quarantined until its verification up to the "
                              f"{run.level} level passes.")
    return redirect("restores:verification-detail", pk=run.pk)


@capability_required(Cap.VIEW_PANEL)
@require_GET
def verification_detail(request, pk):
    run = access_verification(request.user, pk)
    can_cancel = (run.state in (VerificationRun.State.QUEUED, VerificationRun.State.RUNNING)
                  and cancel.may_cancel(request.user, run.requested_by_id))
    return render(request, "restores/verification_detail.html", {
        "run": run, "levels": verifications.ladder_of(run.artifact), "can_cancel": can_cancel,
        "waiting": runs.pool_waiting(verifications.VERIFICATION_RUNS, run)})


@capability_required(Cap.VIEW_PANEL)
@require_POST
def verification_cancel(request, pk):
    run = access_verification(request.user, pk)
    try:
        cancel.verification_cancel(actor=request.user, run=run, request=request)
        messages.success(request, "Verification cancelled.")
    except runstate.RestoreError as exc:
        _messages_for(request, exc)
    return redirect("restores:verification-detail", pk=run.pk)


@capability_required(Cap.VIEW_PANEL)
@require_GET
def verification_progress(request, pk):
    run = access_verification(request.user, pk)
    return render(request, "restores/_verification_progress.html", {
        "run": run, "waiting": runs.pool_waiting(verifications.VERIFICATION_RUNS, run)})
