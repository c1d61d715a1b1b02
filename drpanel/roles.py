"""Who holds the privileged roles: role and flag changes of users, and permissions of privileged groups.

Making someone a Manager or an Admin, staff or superuser, and giving the Manager or Admin group
more permissions, weakens protection: one admin alone could otherwise make itself (or an account it
controls) superuser and then approve its own production restores. So ``role_change_request`` and
``group_permissions_change_request`` apply such a change only through a pending ``Approval`` that another
Manager or Admin — neither the requester nor the user it is about — decides with their password
(``role_change_approve`` / ``group_permissions_change_approve``). Taking roles or permissions away
applies at once. The Django admin shows these fields read-only and links here (``drpanel/admin.py``).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.db import transaction

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.approvals import approval_consume, protection_change_approve, protection_change_request
from drpanel.models import Approval
from drpanel.permissions import Cap, Role, require_cap

ROLE_CHANGE_APPROVAL = "user.roles"
GROUP_PERMISSIONS_APPROVAL = "group.permissions"
PRIVILEGED_ROLES = (Role.MANAGER.value, Role.ADMIN.value)


def _user_state(user) -> dict:
    """A user's roles and flags, JSON-stable: what a role change binds as "before"."""
    return {"username": user.get_username(), "is_active": user.is_active, "is_staff": user.is_staff,
            "is_superuser": user.is_superuser,
            "roles": sorted(user.groups.filter(name__in=[r.value for r in Role]).values_list("name", flat=True))}


def _role_params(user, change: dict) -> dict:
    return {"change": change, "before": _user_state(user)}


def _grants_privilege(before: dict, change: dict) -> list[str]:
    reasons = [f"role {role}" for role in change["roles"] if role in PRIVILEGED_ROLES and role not in before["roles"]]
    reasons += [flag for flag in ("is_staff", "is_superuser") if change[flag] and not before[flag]]
    return reasons


def _apply_roles(*, actor, user, change: dict, before: dict, approval: Approval | None, request=None):
    groups = {group.name: group for group in Group.objects.filter(name__in=[r.value for r in Role])}
    user.groups.remove(*[groups[name] for name in before["roles"] if name not in change["roles"]])
    user.groups.add(*[groups[name] for name in change["roles"] if name not in before["roles"]])
    user.is_staff, user.is_superuser = change["is_staff"], change["is_superuser"]
    user.save(update_fields=["is_staff", "is_superuser"])
    details = {"user": user.get_username(), "user_id": user.pk, "from": before, "to": change}
    if approval is not None:
        details.update(approval=approval.pk, requested_by=approval.requested_by.get_username(),
                       approved_by=approval.decided_by.get_username())
    audit_record(actor=actor, action=AuditAction.USER_ROLES_CHANGED, obj=user, request=request, details=details)
    return user


def role_change_request(*, actor, user, roles: list[str] | None = None, is_staff: bool | None = None,
                        is_superuser: bool | None = None, reason: str = "", request=None):
    """Set ``user``'s roles (Role names) and staff/superuser flags (Admin only; ``None`` keeps a value).

    Returns the user when applied at once, or the pending ``Approval`` when the change grants a privilege."""
    if actor is not None:
        require_cap(actor, Cap.MANAGE_PANEL, action="user.roles", obj=user)
    before = _user_state(user)
    roles = before["roles"] if roles is None else sorted(set(roles))
    unknown = set(roles) - {r.value for r in Role}
    if unknown:
        raise ValidationError(f"Unknown roles: {', '.join(sorted(unknown))}.")
    change = {"roles": roles, "is_staff": before["is_staff"] if is_staff is None else bool(is_staff),
              "is_superuser": before["is_superuser"] if is_superuser is None else bool(is_superuser)}
    if change == {key: before[key] for key in change}:
        return user
    reasons = _grants_privilege(before, change)
    if actor is not None and reasons:
        return protection_change_request(actor=actor, kind=ROLE_CHANGE_APPROVAL, subject=user,
                                         params=_role_params(user, change), request=request,
                                         reason=reason or f"give {user.get_username()} " + ", ".join(reasons))
    with transaction.atomic():
        return _apply_roles(actor=actor, user=user, change=change, before=before, approval=None, request=request)


def role_change_approve(*, actor, approval: Approval, password: str, request=None):
    """Another Manager or Admin — not the requester, not the user concerned — approves a pending role change
    with their password; it applies at once, only if the user's roles and flags have not changed since."""
    user = approval.subject
    change = approval.params["change"]

    def apply(approved: Approval):
        with transaction.atomic():
            locked = get_user_model().objects.select_for_update().get(pk=user.pk)
            before = _user_state(locked)
            approval_consume(approval=approved, params=_role_params(locked, change), actor=actor)
            return _apply_roles(actor=actor, user=locked, change=change, before=before, approval=approved,
                                request=request)

    return protection_change_approve(actor=actor, approval=approval, password=password,
                                     params=_role_params(user, change), apply=apply,
                                     extra_rule=lambda approver: approver.pk != user.pk, request=request)


def _permission_names(group: Group) -> list[str]:
    return sorted(f"{app}.{codename}" for app, codename in
                  group.permissions.values_list("content_type__app_label", "codename"))


def _permissions(names) -> list[Permission]:
    found = []
    for name in sorted(set(names)):
        app_label, _, codename = name.partition(".")
        permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
        if permission is None:
            raise ValidationError(f"Unknown permission {name!r} (write app_label.codename).")
        found.append(permission)
    return found


def _group_params(group: Group, permissions: list[str]) -> dict:
    return {"change": {"permissions": permissions}, "before": {"name": group.name,
                                                               "permissions": _permission_names(group)}}


def _apply_permissions(*, actor, group: Group, permissions: list[str], approval: Approval | None, request=None):
    before = _permission_names(group)
    group.permissions.set(_permissions(permissions))
    details = {"group": group.name, "added": sorted(set(permissions) - set(before)),
               "removed": sorted(set(before) - set(permissions))}
    if approval is not None:
        details.update(approval=approval.pk, requested_by=approval.requested_by.get_username(),
                       approved_by=approval.decided_by.get_username())
    audit_record(actor=actor, action=AuditAction.ROLE_PERMISSIONS_CHANGED, obj=group, request=request,
                 details=details)
    return group


def group_permissions_change_request(*, actor, group: Group, permissions: list[str], reason: str = "",
                                     request=None):
    """Set a group's permissions (``app_label.codename``; Admin only). Adding any to the Manager or Admin
    group waits for a second person (the pending ``Approval`` is returned); removing applies at once."""
    if actor is not None:
        require_cap(actor, Cap.MANAGE_PANEL, action="group.permissions", obj=group)
    permissions = sorted({permission.content_type.app_label + "." + permission.codename
                          for permission in _permissions(permissions)})
    before = _permission_names(group)
    if permissions == before:
        return group
    added = sorted(set(permissions) - set(before))
    if actor is not None and added and group.name in PRIVILEGED_ROLES:
        return protection_change_request(actor=actor, kind=GROUP_PERMISSIONS_APPROVAL, subject=group,
                                         params=_group_params(group, permissions), request=request,
                                         reason=reason or f"give {group.name} " + ", ".join(added))
    with transaction.atomic():
        return _apply_permissions(actor=actor, group=group, permissions=permissions, approval=None, request=request)


def group_permissions_change_approve(*, actor, approval: Approval, password: str, request=None):
    """Another Manager or Admin approves a pending permission change of a privileged group with their password."""
    group = approval.subject
    permissions = approval.params["change"]["permissions"]

    def apply(approved: Approval):
        with transaction.atomic():
            locked = Group.objects.select_for_update().get(pk=group.pk)
            approval_consume(approval=approved, params=_group_params(locked, permissions), actor=actor)
            return _apply_permissions(actor=actor, group=locked, permissions=permissions, approval=approved,
                                      request=request)

    return protection_change_approve(actor=actor, approval=approval, password=password,
                                     params=_group_params(group, permissions), apply=apply, request=request)
