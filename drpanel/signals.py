"""Audit of sign-in, sign-out and lockouts (receivers of Django's and django-axes' signals)."""

import time

from axes.signals import user_locked_out
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.middleware import SIGNED_IN_AT


@receiver(user_logged_in)
def audit_login(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        request.session[SIGNED_IN_AT] = time.time()  # the start of the session's fixed lifetime
    audit_record(actor=user, action=AuditAction.AUTH_LOGIN, obj=user, request=request)


@receiver(user_logged_out)
def audit_logout(sender, request, user, **kwargs):
    if user is not None:
        audit_record(actor=user, action=AuditAction.AUTH_LOGOUT, obj=user, request=request)


def _attempted(credentials: dict) -> str:
    return str(credentials.get("username") or "")[:150]


@receiver(user_login_failed)
def audit_login_failed(sender, credentials, request=None, **kwargs):
    username = _attempted(credentials)
    # The same event whether or not the account exists: the log must not help enumeration
    # more than the login page does, but an auditor needs the attempted name.
    audit_record(actor=None, action=AuditAction.AUTH_LOGIN_FAILED, outcome="failure", request=request,
                 object_type="auth.user", object_repr=username,
                 details={"known_user": get_user_model().objects.filter(username=username).exists()})


@receiver(user_locked_out)
def audit_lockout(sender, request, username=None, ip_address=None, **kwargs):
    audit_record(actor=None, action=AuditAction.AUTH_LOCKOUT, outcome="denied", request=request,
                 object_type="auth.user", object_repr=str(username or "")[:150],
                 details={"ip_address": ip_address})
