"""Audit of sign-in, sign-out and lockouts (receivers of Django's and django-axes' signals).

Failures and lockouts of known usernames are one event each; those of usernames that do not exist
are counted per window instead (``drpanel.signin``)."""

import time

from axes.signals import user_locked_out
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.client_ip import client_address
from drpanel.middleware import SIGNED_IN_AT
from drpanel.signin import unknown_signin_failure_count


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


def _known(username: str) -> bool:
    return bool(username) and get_user_model().objects.filter(username=username).exists()


@receiver(user_login_failed)
def audit_login_failed(sender, credentials, request=None, **kwargs):
    username = _attempted(credentials)
    if not _known(username):
        # Counted per window, one event per window (drpanel.signin): anonymous guessing must not grow
        # the chain one event per request.
        unknown_signin_failure_count(address=client_address(request) if request is not None else None)
        return
    audit_record(actor=None, action=AuditAction.AUTH_LOGIN_FAILED, outcome="failure", request=request,
                 object_type="auth.user", object_repr=username, details={"known_user": True})


@receiver(user_locked_out)
def audit_lockout(sender, request, username=None, ip_address=None, **kwargs):
    username = str(username or "")[:150]
    if not _known(username):
        unknown_signin_failure_count(address=ip_address, lockout=True)
        return
    audit_record(actor=None, action=AuditAction.AUTH_LOCKOUT, outcome="denied", request=request,
                 object_type="auth.user", object_repr=username, details={"ip_address": ip_address})
