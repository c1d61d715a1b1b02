"""The API's shared parts: capability permissions, the audited exception handler, ``/me``."""

from django.core.exceptions import PermissionDenied
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from drpanel.permissions import Cap, Denied, has_cap, record_denial, roles_of


def capability(cap: Cap):
    """A DRF permission class requiring one panel-wide capability."""

    class HasCapability(BasePermission):
        message = f"This needs the {cap} capability."

        def has_permission(self, request, view):
            if has_cap(request.user, cap):
                return True
            # Raise our own Denied so the handler audits what was needed.
            if request.user and request.user.is_authenticated:
                raise Denied(self.message, need=str(cap), action=f"{request.method} {request.path}")
            return False

    HasCapability.__name__ = f"Has_{cap}"
    return HasCapability


def exception_handler(exc, context):
    """DRF's handler, plus: every 403 is audited and answered with a reason, and every error has
    one body, ``{"detail": "...", "errors": {field: [messages]}}`` (``errors`` for refused values)."""
    request = context.get("request")
    if isinstance(exc, PermissionDenied | exceptions.PermissionDenied) and request is not None:
        if request.user and request.user.is_authenticated:
            record_denial(request, exc if isinstance(exc, Denied) else PermissionDenied(str(exc)))
        if isinstance(exc, PermissionDenied):
            exc = exceptions.PermissionDenied(getattr(exc, "message", None) or str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.ValidationError):
        response.data = validation_error_body(exc.detail)
    return response


def _messages(detail) -> list[str]:
    if isinstance(detail, dict):
        return [f"{key}: {message}" for key, value in detail.items() for message in _messages(value)]
    if isinstance(detail, list | tuple):
        return [message for item in detail for message in _messages(item)]
    return [str(detail)]


def validation_error_body(detail) -> dict:
    """A ValidationError's detail as the API's error body: one sentence, and the messages per field."""
    fields = detail if isinstance(detail, dict) else {"non_field_errors": detail}
    errors = {str(name): _messages(value) for name, value in fields.items()}
    first = next(((name, messages[0]) for name, messages in errors.items() if messages), None)
    if first is None:
        return {"detail": "Invalid request.", "errors": errors}
    name, message = first
    sentence = message if name == "non_field_errors" else f"{name}: {message}"
    return {"detail": sentence, "errors": errors}


class MeView(APIView):
    """Who the token (or session) belongs to, and their roles."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=inline_serializer("Me", {
        "username": serializers.CharField(),
        "roles": serializers.ListField(child=serializers.CharField()),
    }))
    def get(self, request):
        return Response({"username": request.user.get_username(), "roles": roles_of(request.user)})


class DashboardView(APIView):
    """The worst system's health (score, status, checks with evidence), RPO and RTO now, every system's health."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(responses=inline_serializer("Dashboard", {"data": serializers.DictField()}))
    def get(self, request):
        from compliance.dashboard import dashboard_json

        return Response({"data": dashboard_json()})
