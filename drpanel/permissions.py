"""Roles, capabilities and the access helpers every view, API endpoint and service uses.

Roles are Django groups (made by ``drpanel/migrations/0002_roles.py``); each grants
panel-wide capabilities, the permissions of ``drpanel.Capability``. Rights on one target
(``restores.restore_to_target``, ``restores.approve_restore``) are django-guardian object
permissions and are checked with ``has_object_right``.

A refusal raises ``Denied`` (a ``PermissionDenied``). Whoever answers the request turns
it into a 403 and writes the ``access.denied`` audit event *after* the service's
transaction has rolled back, so the denial is recorded even though nothing else is.
"""

import time
from enum import StrEnum
from functools import wraps

from django.conf import settings
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import urlencode

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction


class Role(StrEnum):
    OPERATOR = "Operator"
    MANAGER = "Manager"
    AUDITOR = "Auditor"
    ADMIN = "Admin"


class Cap(StrEnum):
    """Panel-wide capabilities (permissions of ``drpanel.Capability``)."""

    VIEW_PANEL = "view_panel"
    START_JOBS = "start_jobs"
    TICK_CHECKLISTS = "tick_checklists"
    SIGN_CERTIFICATION = "sign_certification"
    EDIT_CONTACTS = "edit_contacts"
    READ_AUDIT = "read_audit"
    MANAGE_PANEL = "manage_panel"


# DESIGN.md's role table. Approvals and rollbacks are per target (guardian), not here.
ROLE_CAPABILITIES: dict[Role, tuple[Cap, ...]] = {
    Role.OPERATOR: (Cap.VIEW_PANEL, Cap.START_JOBS, Cap.TICK_CHECKLISTS),
    Role.MANAGER: (Cap.VIEW_PANEL, Cap.START_JOBS, Cap.TICK_CHECKLISTS, Cap.SIGN_CERTIFICATION,
                   Cap.EDIT_CONTACTS, Cap.READ_AUDIT),
    Role.AUDITOR: (Cap.VIEW_PANEL, Cap.READ_AUDIT),
    Role.ADMIN: (Cap.VIEW_PANEL, Cap.START_JOBS, Cap.EDIT_CONTACTS, Cap.READ_AUDIT, Cap.MANAGE_PANEL),
}


def ensure_roles(**kwargs) -> None:
    """Re-create any missing role group with its capabilities (connected to ``post_migrate``).

    The data migration creates the roles; this brings back a role that was deleted (or
    flushed, as transactional tests do) without touching the grants of existing ones.
    """
    for role, caps in ROLE_CAPABILITIES.items():
        group, created = Group.objects.get_or_create(name=role.value)
        if created:
            group.permissions.add(*Permission.objects.filter(
                content_type__app_label="drpanel", codename__in=[str(c) for c in caps]))


class Denied(PermissionDenied):
    """A refused action; carries what was refused for the audit event."""

    def __init__(self, message: str = "You do not have permission to do this.", *, need: str = "",
                 obj=None, action: str = ""):
        super().__init__(message)
        self.message = message
        self.need = need
        self.obj = obj
        self.action = action


class PermissionBackend(ModelBackend):
    """Django's ``ModelBackend`` (``AUTHENTICATION_BACKENDS``), reading a user's own and role permissions in one
    statement instead of two ORM queries.

    Every API request authenticates a user object of its own, so its first ``has_perm`` always reads the
    permissions from the database. Django's two queries took 1.7–1.9 ms a user (1.1 of it in Python, building them),
    the same union through the ORM 1.6–1.9 ms, this one statement 0.3–0.4 ms (docs/development.md). The answer is
    the same set (``get_all_permissions``, tested against Django's), cached on the user object as Django's is.
    """

    def get_all_permissions(self, user_obj, obj=None):
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if not hasattr(user_obj, "_perm_cache"):
            if user_obj.is_superuser:
                rows = Permission.objects.values_list("content_type__app_label", "codename")
            else:
                with connection.cursor() as cursor:
                    cursor.execute(_PERMISSIONS_SQL, [user_obj.pk, user_obj.pk])
                    rows = cursor.fetchall()
            user_obj._perm_cache = {f"{app}.{codename}" for app, codename in rows}
        return user_obj._perm_cache


# The permissions a user holds directly or through a role (Django's own tables: ``auth.User`` is not swapped), with
# the user's id twice. tests/drpanel/test_permissions.py compares its answers with Django's backend.
_PERMISSIONS_SQL = """
    SELECT content_type.app_label, permission.codename
      FROM auth_permission AS permission
      JOIN django_content_type AS content_type ON content_type.id = permission.content_type_id
     WHERE permission.id IN (SELECT permission_id FROM auth_user_user_permissions WHERE user_id = %s
                             UNION ALL
                             SELECT granted.permission_id FROM auth_group_permissions AS granted
                               JOIN auth_user_groups AS member ON member.group_id = granted.group_id
                              WHERE member.user_id = %s)
"""


def roles_of(user) -> list[str]:
    if not getattr(user, "is_authenticated", False):
        return []
    names = set(user.groups.values_list("name", flat=True))
    return [role.value for role in Role if role.value in names]


def has_cap(user, cap: Cap | str) -> bool:
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.has_perm(f"drpanel.{cap}"))


def require_cap(user, cap: Cap | str, *, action: str = "", obj=None) -> None:
    """For services: refuse unless ``user`` holds the capability."""
    if not has_cap(user, cap):
        raise Denied(need=str(cap), obj=obj, action=action)


def has_object_right(user, perm: str, obj) -> bool:
    """A django-guardian object permission such as ``restores.restore_to_target``."""
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.has_perm(perm, obj))


def require_object_right(user, perm: str, obj, *, action: str = "") -> None:
    if not has_object_right(user, perm, obj):
        raise Denied(need=perm, obj=obj, action=action)


def record_denial(request, exc: PermissionDenied) -> None:
    """Write the ``access.denied`` event for a refused request (its own transaction)."""
    details = {"path": request.path[:300], "method": request.method}
    obj = None
    if isinstance(exc, Denied):
        details.update({"need": exc.need, "attempted": exc.action, "reason": exc.message})
        obj = exc.obj
    elif str(exc):
        details["reason"] = str(exc)[:300]
    user = getattr(request, "user", None)
    audit_record(actor=user, action=AuditAction.ACCESS_DENIED, obj=obj, outcome="denied", details=details,
                 request=request)


def capability_required(cap: Cap | str):
    """View decorator: sign-in required, then the capability, else 403 (audited)."""

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            require_cap(request.user, cap, action=f"{request.method} {request.path}")
            return view(request, *args, **kwargs)

        wrapper.required_capability = str(cap)
        return wrapper

    return decorator


# --- re-authentication ----------------------------------------------------------------------

REAUTH_SESSION_KEY = "drpanel_reauth_at"


def recently_reauthenticated(request) -> bool:
    stamp = request.session.get(REAUTH_SESSION_KEY)
    return bool(stamp) and time.time() - stamp < settings.REAUTH_VALID_MINUTES * 60


def mark_reauthenticated(request) -> None:
    request.session[REAUTH_SESSION_KEY] = time.time()


def reauth_required(view):
    """View decorator for approvals and sign-offs: the password again, valid for a few minutes."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not recently_reauthenticated(request):
            url = reverse("drpanel:reauth") + "?" + urlencode({REDIRECT_FIELD_NAME: request.get_full_path()})
            return redirect(url)
        return view(request, *args, **kwargs)

    return wrapper
