"""Pages of the backup catalog: artifacts, systems, storage locations, backup runs, inventory, keys."""

import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from backups import continuous, deletion, errors, hooks, inventory, keyrotation, systems
from backups import runs as backup_runs
from backups.forms import LocationForm, SystemForm
from backups.keys import get_keyring
from backups.models import Artifact, ArtifactCopy, BackupRun, ContinuousState, InventoryRun, StorageLocation, System
from backups.offsite_catalog import offsite_summary
from backups.retention import retention_plan
from backups.schedules import policy_status
from backups.selectors import artifact_page, filtered_artifacts
from compliance.audit.models import AuditEvent
from drpanel import runs
from drpanel.approvals import WAITING, ApprovalError, approval_reject, open_approvals
from drpanel.models import Approval
from drpanel.passwords import PasswordError
from drpanel.permissions import Cap, capability_required, has_cap

BACKUP_ERRORS = (errors.BackupError, ApprovalError, PasswordError)


def access_artifact(user, pk) -> Artifact:
    return get_object_or_404(Artifact.objects.select_related("system"), pk=pk)


# --- artifacts ------------------------------------------------------------------------------

@capability_required(Cap.VIEW_PANEL)
@require_GET
def artifact_list(request):
    page = artifact_page(request.GET)
    _, cleaned = filtered_artifacts(request.GET)
    keep = {k: v for k, v in request.GET.items() if k in ("system", "kind", "status", "location", "from", "to")}
    next_url = None
    if page.next_cursor:
        next_url = "?" + urlencode({**keep, "sort": page.sort, "cursor": page.next_cursor})
    toggled = {"created": "created" if page.sort == "-created" else "-created",
               "size": "size" if page.sort == "-size" else "-size"}
    sort_links = {name: "?" + urlencode({**keep, "sort": value}) for name, value in toggled.items()}
    return render(request, "backups/artifact_list.html", {
        "page": page, "artifacts": page.artifacts, "next_url": next_url, "first_url": "?" + urlencode(
            {**keep, "sort": page.sort}), "paged": bool(request.GET.get("cursor")), "filters": cleaned,
        "systems": System.objects.all(), "locations": StorageLocation.objects.order_by("-role", "name"),
        "sort_links": sort_links,
        "kinds": Artifact.Kind.choices, "statuses": Artifact.Status.choices,
        "can_start": has_cap(request.user, Cap.START_JOBS),
        "can_adopt": has_cap(request.user, Cap.MANAGE_PANEL),
        "last_sync": InventoryRun.objects.first(),
    })


@capability_required(Cap.VIEW_PANEL)
@require_GET
def artifact_detail(request, pk):
    artifact = access_artifact(request.user, pk)
    copies = artifact.copies.select_related("location").order_by("-location__role", "location__name")
    events = AuditEvent.objects.filter(object_type="backups.artifact", object_id=str(artifact.pk)).order_by("-seq")
    approvals = Approval.objects.filter(content_type__app_label="backups", content_type__model="artifact",
                                        object_id=str(artifact.pk)).select_related("requested_by", "decided_by")
    pending = open_approvals(artifact, deletion.DELETE_APPROVAL).filter(state=Approval.State.PENDING).first()
    return render(request, "backups/artifact_detail.html", {
        "artifact": artifact, "copies": copies, "events": events[:200], "approvals": approvals,
        "pending": pending, "tables": (artifact.manifest or {}).get("tables") or [],
        "manifest_json": json.dumps(artifact.manifest, indent=2, sort_keys=True),
        "runs": artifact.runs.all(),
        "can_start": has_cap(request.user, Cap.START_JOBS),
        "can_manage": has_cap(request.user, Cap.MANAGE_PANEL),
        "adopting": artifact.verifications.filter(trigger="adoption", state__in=["queued", "running"]).first(),
        "can_approve": pending is not None and deletion.may_approve_deletion(request.user)
        and pending.requested_by_id != request.user.pk,
        "is_requester": pending is not None and pending.requested_by_id == request.user.pk,
        "restore_running": hooks.restore_running(artifact.system),
        "active_key_id": get_keyring().active_key_id,
    })


@capability_required(Cap.START_JOBS)
@require_POST
def artifact_delete_request(request, pk):
    artifact = access_artifact(request.user, pk)
    try:
        deletion.artifact_delete_request(actor=request.user, artifact=artifact, reason=request.POST.get("reason", ""),
                                         request=request)
        messages.success(request, "Deletion requested: a manager must approve it, with their password.")
    except BACKUP_ERRORS as exc:
        messages.error(request, str(exc))
    return redirect("backups:artifact-detail", pk=artifact.pk)


@capability_required(Cap.VIEW_PANEL)
@require_POST
def approval_approve(request, pk):
    approval = get_object_or_404(Approval, pk=pk, kind=deletion.DELETE_APPROVAL)
    artifact = approval.subject
    try:
        deletion.artifact_delete_approve(actor=request.user, approval=approval,
                                         password=request.POST.get("password", ""), request=request)
        messages.success(request, "Approved: the artifact was deleted from every location.")
    except BACKUP_ERRORS as exc:
        messages.error(request, str(exc))
    return redirect("backups:artifact-detail", pk=artifact.pk)


@capability_required(Cap.VIEW_PANEL)
@require_POST
def approval_reject_view(request, pk):
    approval = get_object_or_404(Approval, pk=pk, kind=deletion.DELETE_APPROVAL)
    try:
        approval_reject(actor=request.user, approval=approval, may_approve=deletion.may_approve_deletion,
                        note=request.POST.get("note", ""), request=request)
        messages.success(request, "The deletion request was closed; the artifact stays.")
    except BACKUP_ERRORS as exc:
        messages.error(request, str(exc))
    return redirect("backups:artifact-detail", pk=approval.object_id)


@capability_required(Cap.MANAGE_PANEL)
@require_POST
def artifact_rewrap(request, pk):
    artifact = access_artifact(request.user, pk)
    try:
        keyrotation.artifact_rewrap(actor=request.user, artifact=artifact)
        messages.success(request, f"Re-wrapped under {artifact.key_id}; every copy was rewritten and re-checked.")
    except BACKUP_ERRORS as exc:
        messages.error(request, str(exc))
    except Exception as exc:  # storage and format errors carry operator-readable messages
        messages.error(request, f"Re-wrap failed: {exc}")
    return redirect("backups:artifact-detail", pk=artifact.pk)


# --- systems ------------------------------------------------------------------------------------

@capability_required(Cap.VIEW_PANEL)
@require_GET
def system_list(request):
    systems = list(System.objects.all())
    rows = [{"system": s, "policy": policy_status(s),
             "active": BackupRun.objects.filter(system=s, state__in=["queued", "running"]).order_by("-created_at")}
            for s in systems]
    return render(request, "backups/system_list.html", {
        "rows": rows, "can_start": has_cap(request.user, Cap.START_JOBS),
        "can_manage": has_cap(request.user, Cap.MANAGE_PANEL)})


@capability_required(Cap.VIEW_PANEL)
@require_GET
def system_detail(request, pk):
    system = get_object_or_404(System, pk=pk)
    plan = retention_plan(system)
    return render(request, "backups/system_detail.html", {
        "system": system, "policy": policy_status(system), "runs": system.runs.select_related("artifact")[:20],
        "plan": plan, "plan_keep": len(plan.keep), "can_start": has_cap(request.user, Cap.START_JOBS),
        "can_manage": has_cap(request.user, Cap.MANAGE_PANEL),
        "continuous": ContinuousState.objects.filter(system=system).first(),
        "wal_timelines": system.wal_timelines.all(), "rpo_seconds": continuous.rpo_seconds(system),
        "setup": continuous.setup_instructions(system) if system.continuous_enabled else None,
        "offsite": offsite_summary(system) if system.continuous_enabled else []})


@capability_required(Cap.START_JOBS)
@require_POST
def system_continuous_check(request, pk):
    system = get_object_or_404(System, pk=pk)
    try:
        continuous.continuous_check_request(actor=request.user, system=system, request=request)
    except BACKUP_ERRORS as exc:
        messages.error(request, str(exc))
    else:
        messages.info(request, "A worker runs barman check now; reload this page in a moment.")
    return redirect("backups:system-detail", pk=system.pk)


@capability_required(Cap.START_JOBS)
@require_POST
def system_backup(request, pk):
    system = get_object_or_404(System, pk=pk)
    try:
        run = backup_runs.backup_request(actor=request.user, system=system, kind=request.POST.get("kind", ""),
                                         request=request)
    except BACKUP_ERRORS as exc:
        messages.error(request, str(exc))
        return redirect("backups:system-list")
    return redirect("backups:run-detail", pk=run.pk)


def _edit(request, *, form_class, instance, save, template, success, title):
    form = form_class(request.POST or None, instance=instance)
    if request.method == "POST" and form.is_valid():
        try:
            saved = save(actor=request.user, values=form.cleaned_data, request=request,
                         **({"system": instance} if form_class is SystemForm else {"location": instance}))
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            if isinstance(saved, Approval):
                messages.info(request, WAITING)
                return redirect("drpanel:approval-detail", pk=saved.pk)
            messages.success(request, f"Saved {saved}.")
            return redirect(success)
    pending = open_approvals(instance).select_related("requested_by") if instance is not None else []
    return render(request, template, {"form": form, "instance": instance, "title": title, "pending": pending},
                  status=400 if request.method == "POST" else 200)


@capability_required(Cap.MANAGE_PANEL)
@require_http_methods(["GET", "POST"])
def system_edit(request, pk=None):
    system = get_object_or_404(System, pk=pk) if pk else None
    return _edit(request, form_class=SystemForm, instance=system, save=systems.system_save,
                 template="backups/system_form.html", success="backups:system-list",
                 title=f"Edit {system}" if system else "New system")


# --- storage locations (Admin) -----------------------------------------------------------------

@capability_required(Cap.MANAGE_PANEL)
@require_GET
def location_list(request):
    locations = StorageLocation.objects.order_by("-role", "name")
    checks = {loc.pk: systems.location_check(loc) for loc in locations if request.GET.get("check")}
    rows = [{"location": loc, "copies": loc.copies.exclude(status=ArtifactCopy.Status.DELETED).count(),
             "checked": loc.pk in checks, "problem": checks.get(loc.pk)} for loc in locations]
    return render(request, "backups/location_list.html", {"rows": rows})


@capability_required(Cap.MANAGE_PANEL)
@require_http_methods(["GET", "POST"])
def location_edit(request, pk=None):
    location = get_object_or_404(StorageLocation, pk=pk) if pk else None
    return _edit(request, form_class=LocationForm, instance=location, save=systems.location_save,
                 template="backups/location_form.html", success="backups:location-list",
                 title=f"Edit {location}" if location else "New storage location")


# --- backup runs --------------------------------------------------------------------------------

@capability_required(Cap.VIEW_PANEL)
@require_GET
def run_detail(request, pk):
    run = get_object_or_404(BackupRun.objects.select_related("system", "artifact", "requested_by"), pk=pk)
    return render(request, "backups/run_detail.html", {"run": run,
                                                       "waiting": runs.pool_waiting(backup_runs.BACKUP_RUNS, run)})


@capability_required(Cap.VIEW_PANEL)
@require_GET
def run_progress(request, pk):
    run = get_object_or_404(BackupRun.objects.select_related("system", "artifact"), pk=pk)
    return render(request, "backups/_run_progress.html", {"run": run,
                                                          "waiting": runs.pool_waiting(backup_runs.BACKUP_RUNS, run)})


# --- inventory ----------------------------------------------------------------------------------

@capability_required(Cap.START_JOBS)
@require_POST
def inventory_start(request):
    run = inventory.inventory_request(actor=request.user, request=request)
    messages.success(request, "Inventory sync queued.")
    return redirect("backups:inventory-detail", pk=run.pk)


@capability_required(Cap.VIEW_PANEL)
@require_GET
def inventory_detail(request, pk):
    run = get_object_or_404(InventoryRun, pk=pk)
    return render(request, "backups/inventory_detail.html", {"run": run,
                                                             "locations": (run.summary or {}).get("locations", {})})


# --- keys (Admin) -------------------------------------------------------------------------------

@capability_required(Cap.MANAGE_PANEL)
@require_GET
def key_list(request):
    keyring = get_keyring()

    usage = dict(Artifact.objects.live().values_list("key_id").annotate(n=Count("pk")).values_list("key_id", "n"))
    keys = [{"key_id": k, "active": k == keyring.active_key_id, "artifacts": usage.get(k, 0), "held": True}
            for k in keyring.key_ids()]
    keys += [{"key_id": k or "(none)", "active": False, "artifacts": n, "held": False}
             for k, n in usage.items() if k not in keyring.key_ids()]
    pending = sum(n for k, n in usage.items() if k != keyring.active_key_id and not k.startswith("legacy:") and k)
    return render(request, "backups/key_list.html", {
        "keys": keys, "active": keyring.active_key_id, "pending": pending, "source": keyring.config.source,
        "legacy": sorted(keyring.legacy_passphrases)})


@capability_required(Cap.MANAGE_PANEL)
@require_POST
def key_rotate(request):
    try:
        key_id = keyrotation.key_rotation_request(actor=request.user, request=request)
        messages.success(request, f"Re-wrapping every artifact under {key_id}: a job is on its way. "
                                  "Each artifact's page shows its key once done.")
    except BACKUP_ERRORS as exc:
        messages.error(request, str(exc))
    return redirect("backups:key-list")
