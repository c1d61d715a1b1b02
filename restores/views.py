"""Pages of targets. The pages of restore runs and verifications are in ``restores.views_runs``."""

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from drpanel.approvals import WAITING, open_approvals
from drpanel.models import Approval
from drpanel.permissions import Cap, capability_required, has_cap
from restores import targets
from restores.forms import GrantForm, HealthCheckFormSet, SanityCheckFormSet, TargetForm, checks_from
from restores.models import TARGET_RIGHTS, Target
from restores.selectors import access_target, right_holders, rights_of, sees_all_targets, visible_targets


@capability_required(Cap.VIEW_PANEL)
@require_GET
def target_list(request):
    targets = visible_targets(request.user).prefetch_related("sanity_checks", "health_checks")
    rows = [{"target": t, "rights": rights_of(request.user, t)} for t in targets]
    return render(request, "restores/target_list.html", {
        "rows": rows, "sees_all": sees_all_targets(request.user),
        "can_manage": has_cap(request.user, Cap.MANAGE_PANEL), "rights": TARGET_RIGHTS,
    })


@capability_required(Cap.VIEW_PANEL)
@require_GET
def target_detail(request, pk: int):
    target = access_target(request.user, pk)
    can_manage = has_cap(request.user, Cap.MANAGE_PANEL)
    holders = right_holders(target)
    right_rows = [{"right": right, "label": label, "holders": holders[right]} for right, label in TARGET_RIGHTS.items()]
    return render(request, "restores/target_detail.html", {
        "target": target, "right_rows": right_rows,
        "my_rights": rights_of(request.user, target), "can_manage": can_manage,
        "grant_form": GrantForm() if can_manage else None,
        "pending": open_approvals(target).select_related("requested_by") if can_manage else [],
    })


def _apply_errors(error: ValidationError, form: TargetForm) -> list[str]:
    """Put a service's field errors on the form; return the others (checks) as plain messages."""
    other: list[str] = []
    for field_name, field_messages in error.message_dict.items():
        if field_name in form.fields:
            for message in field_messages:
                form.add_error(field_name, message)
        else:
            other.extend(field_messages)
    return other


def _target_form(request, target: Target | None):
    """Create (``target`` None) or edit a target with its two formsets; the service does the rest."""
    check_errors: list[str] = []
    if request.method == "POST":
        form = TargetForm(request.POST)
        sanity = SanityCheckFormSet(request.POST, prefix="sanity")
        health = HealthCheckFormSet(request.POST, prefix="health")
        if form.is_valid() and sanity.is_valid() and health.is_valid():
            fields = form.cleaned_data
            try:
                if target is None:
                    target = targets.target_create(actor=request.user, sanity_checks=checks_from(sanity),
                                                   health_checks=checks_from(health), **fields)
                    messages.success(request, f"Target “{target.name}” created.")
                else:
                    saved = targets.target_update(actor=request.user, target=target,
                                                  sanity_checks=checks_from(sanity),
                                                  health_checks=checks_from(health), request=request, **fields)
                    if isinstance(saved, Approval):
                        messages.info(request, WAITING)
                        return redirect("drpanel:approval-detail", pk=saved.pk)
                    messages.success(request, f"Target “{target.name}” saved.")
                return redirect("restores:target-detail", pk=target.pk)
            except ValidationError as exc:
                check_errors = _apply_errors(exc, form)
        if "://" in request.POST.get("database_ref", ""):
            # Someone pasted the URL itself (with its password?): never echo it back into the page.
            form.data = form.data.copy()
            form.data["database_ref"] = ""
    elif target is None:
        form = TargetForm(initial={"is_active": True})
        sanity = SanityCheckFormSet(prefix="sanity")
        health = HealthCheckFormSet(prefix="health")
    else:
        form = TargetForm(initial=TargetForm.initial_for(target))
        sanity = SanityCheckFormSet(prefix="sanity", initial=[
            {"name": c.name, "query": c.query, "expectation": c.expectation} for c in target.sanity_checks.all()])
        health = HealthCheckFormSet(prefix="health", initial=[
            {"url": c.url, "expected_status": c.expected_status} for c in target.health_checks.all()])
    status = 400 if request.method == "POST" else 200
    return render(request, "restores/target_form.html", {
        "form": form, "sanity": sanity, "health": health, "target": target, "check_errors": check_errors,
        "pending": open_approvals(target).select_related("requested_by") if target is not None else [],
    }, status=status)


@capability_required(Cap.MANAGE_PANEL)
@require_http_methods(["GET", "POST"])
def target_create(request):
    return _target_form(request, None)


@capability_required(Cap.MANAGE_PANEL)
@require_http_methods(["GET", "POST"])
def target_edit(request, pk: int):
    return _target_form(request, get_object_or_404(Target, pk=pk))


@capability_required(Cap.MANAGE_PANEL)
@require_POST
def target_right_grant(request, pk: int):
    target = get_object_or_404(Target, pk=pk)
    form = GrantForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a user and a right.")
        return redirect("restores:target-detail", pk=target.pk)
    user, right = form.cleaned_data["user"], form.cleaned_data["right"]
    try:
        granted = targets.target_right_grant(actor=request.user, target=target, user=user, right=right,
                                             request=request)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        if isinstance(granted, Approval):
            messages.info(request, WAITING)
            return redirect("drpanel:approval-detail", pk=granted.pk)
        if granted:
            messages.success(request, f"{user.get_username()} now holds {right} on {target.name}.")
        else:
            messages.info(request, f"{user.get_username()} already held {right} on {target.name}.")
    return redirect("restores:target-detail", pk=target.pk)


@capability_required(Cap.MANAGE_PANEL)
@require_POST
def target_right_revoke(request, pk: int):
    target = get_object_or_404(Target, pk=pk)
    user = get_object_or_404(get_user_model(), username=request.POST.get("user", ""))
    right = request.POST.get("right", "")
    try:
        revoked = targets.target_right_revoke(actor=request.user, target=target, user=user, right=right)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        if revoked:
            messages.success(request, f"{user.get_username()} no longer holds {right} on {target.name}.")
        else:
            messages.info(request, f"{user.get_username()} did not hold {right} on {target.name}.")
    return redirect("restores:target-detail", pk=target.pk)
