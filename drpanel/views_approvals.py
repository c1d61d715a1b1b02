"""Pages of the changes that weaken protection: a pending approval (approve, reject), and a user's roles.

Each page is thin: the kind's service (``compliance.approval_kinds.PROTECTION_KINDS``) checks who may
decide, the password and the binding, applies the change and audits every step.
"""

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from compliance.approval_kinds import PROTECTION_KINDS
from drpanel import approvals, roles
from drpanel.models import Approval
from drpanel.passwords import PasswordError
from drpanel.permissions import Cap, Role, capability_required

WAITING = approvals.WAITING


def _approval(pk: int) -> tuple[Approval, object]:
    approval = get_object_or_404(Approval.objects.select_related("requested_by", "decided_by"), pk=pk,
                                 kind__in=list(PROTECTION_KINDS))
    return approval, PROTECTION_KINDS[approval.kind]


@capability_required(Cap.VIEW_PANEL)
@require_GET
def approval_detail(request, pk: int):
    approval, kind = _approval(pk)
    pending = approval.state == Approval.State.PENDING
    mine = approval.requested_by_id == request.user.pk
    return render(request, "drpanel/approval_detail.html", {
        "approval": approval, "kind": kind, "waiting": WAITING, "pending": pending, "mine": mine,
        "can_decide": pending and not mine and kind.may_decide(request.user, approval),
        "change": approval.params.get("change"), "before": approval.params.get("before")})


@capability_required(Cap.VIEW_PANEL)
@require_POST
def approval_approve(request, pk: int):
    approval, kind = _approval(pk)
    try:
        kind.approve(actor=request.user, approval=approval, password=request.POST.get("password", ""),
                     request=request)
    except (PasswordError, approvals.ApprovalError, ValidationError) as exc:
        messages.error(request, " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc))
    else:
        messages.success(request, "Approved: the change is applied.")
    return redirect("drpanel:approval-detail", pk=approval.pk)


@capability_required(Cap.VIEW_PANEL)
@require_POST
def approval_reject(request, pk: int):
    approval, kind = _approval(pk)
    try:
        approvals.approval_reject(actor=request.user, approval=approval, note=request.POST.get("note", ""),
                                  may_approve=lambda user: kind.may_decide(user, approval), request=request)
    except approvals.ApprovalError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Rejected: nothing changed.")
    return redirect("drpanel:approval-detail", pk=approval.pk)


class RoleChangeForm(forms.Form):
    """A user's roles and privileged flags, as the role-change service takes them."""

    roles = forms.MultipleChoiceField(choices=[(r.value, r.value) for r in Role], required=False,
                                      widget=forms.CheckboxSelectMultiple)
    is_staff = forms.BooleanField(required=False, label="Staff (may sign in to the admin site)")
    is_superuser = forms.BooleanField(required=False, label="Superuser (every right, unchecked)")
    reason = forms.CharField(required=False, max_length=500)


@capability_required(Cap.MANAGE_PANEL)
@require_http_methods(["GET", "POST"])
def user_roles(request, pk: int):
    user = get_object_or_404(get_user_model(), pk=pk)
    initial = {"roles": list(user.groups.values_list("name", flat=True)), "is_staff": user.is_staff,
               "is_superuser": user.is_superuser}
    form = RoleChangeForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            result = roles.role_change_request(actor=request.user, user=user, roles=data["roles"],
                                               is_staff=data["is_staff"], is_superuser=data["is_superuser"],
                                               reason=data["reason"], request=request)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            if isinstance(result, Approval):
                messages.info(request, WAITING)
                return redirect("drpanel:approval-detail", pk=result.pk)
            messages.success(request, f"Roles of {user.get_username()} saved.")
            return redirect("drpanel:user-roles", pk=user.pk)
    return render(request, "drpanel/user_roles.html", {"form": form, "subject": user, "waiting": WAITING,
                                                       "pending": approvals.open_approvals(user)},
                  status=400 if request.method == "POST" else 200)
