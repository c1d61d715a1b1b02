"""The API's shared parts: capability permissions, the one error body (``api_error`` and the audited
exception handler), the one list shape (``paginate``: ``{"results": [...], "next": cursor}``), strict
input (serializers that refuse wrong types and unknown fields, ``validated_body``), ``/me`` and the
caller's tokens. docs/api.md says how an endpoint uses them."""

import datetime
import uuid
from collections.abc import Callable, Mapping, Sequence

from django.core import signing
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from drpanel.models import ApiToken
from drpanel.passwords import PasswordError, PasswordLocked, retry_after_seconds
from drpanel.permissions import Cap, Denied, has_cap, record_denial, roles_of
from drpanel.services import api_token_create, api_token_revoke


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
    if response is not None:
        if isinstance(exc, exceptions.ValidationError):
            response.data = validation_error_body(exc.detail)
        else:
            # 401, 403, 404, 405, 406, 415, 429…: DRF says ``{"detail"}``; the API adds the (empty) field messages.
            detail = response.data.get("detail") if isinstance(response.data, dict) else None
            response.data = error_body(str(detail) if detail else "Request refused.")
    return response


def error_body(detail: str, errors: Mapping[str, list[str]] | None = None) -> dict:
    """The API's one error body: a sentence for people, and the messages per refused field (maybe none)."""
    return {"detail": detail, "errors": {str(name): list(messages) for name, messages in (errors or {}).items()}}


def api_error(code: int, detail: str, errors: Mapping[str, list[str]] | None = None, *, headers=None) -> Response:
    """An error answer built by a view (a refusal that is not an exception: 409, a service's 400…)."""
    return Response(error_body(detail, errors), status=code, headers=headers)


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


class StrictCharField(serializers.CharField):
    """A string field that refuses numbers and booleans instead of turning them into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """``true`` or ``false`` only: 0, 1, "yes" are refused rather than read as booleans."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only: strings and booleans are refused."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictUUIDField(serializers.UUIDField):
    """A UUID written as text: DRF's field would also read an integer (or a boolean) as one."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class InputSerializer(serializers.Serializer):
    """A request body: a JSON object holding only the declared fields. An undeclared field is refused
    by name (a misspelt ``"drill"`` must not be silently ignored), so is any other JSON value."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(str(name) for name in data if name not in self.fields)
            if unknown:
                raise exceptions.ValidationError({name: ["not a field of this request"] for name in unknown})
        return super().to_internal_value(data)


class NoBody(InputSerializer):
    """The body of an action that takes no input: nothing, or an empty object."""


def validated_body(request, serializer: type[serializers.Serializer] = NoBody, **kwargs) -> dict:
    """The request's body checked by ``serializer``: its validated data, or a 400 naming each refused field."""
    body = serializer(data=request.data, **kwargs)
    body.is_valid(raise_exception=True)
    return body.validated_data


class PasswordField(StrictCharField):
    """The password re-entered: text, taken as typed (no trimming); ``password_confirm`` decides if it is right."""

    def __init__(self, **kwargs):
        kwargs = {"trim_whitespace": False, "allow_blank": True, "max_length": 4096,
                  "style": {"input_type": "password"}, "help_text": "Your password, again.", **kwargs}
        super().__init__(**kwargs)


def password_refusal(exc: PasswordError) -> Response:
    """A refused password as the API answers it, with the reason (the event is audited): 403 when it
    was wrong, 429 with ``Retry-After`` when too many wrong ones locked it (it was not even checked)."""
    if isinstance(exc, PasswordLocked):
        return api_error(status.HTTP_429_TOO_MANY_REQUESTS, str(exc),
                         headers={"Retry-After": str(retry_after_seconds())})
    return api_error(status.HTTP_403_FORBIDDEN, str(exc))


# --- one list shape: {"results": [...], "next": <cursor or null>} ------------------------------

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
PAGE_PARAMETERS = [
    OpenApiParameter("cursor", {"type": "string", "minLength": 1},
                     description="`next` of the previous page (opaque; only the list that gave it reads it)."),
    OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                     description=f"Page size (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})."),
]


def page_schema(name: str, item) -> serializers.Serializer:
    """The OpenAPI answer of a list: ``item`` (a serializer or a field) in ``results``, and ``next``."""
    results = item(many=True) if isinstance(item, type) else serializers.ListField(child=item)
    return inline_serializer(name, {
        "results": results,
        "next": serializers.CharField(allow_null=True, help_text="The cursor of the next page (pass it as "
                                                                 "`cursor`); null on the last page."),
    })


def _json_value(value):
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _cursor_salt(request) -> str:
    # A cursor is read only by the list that gave it (not replayed on another list).
    return f"drpanel.api.cursor:{request.path}"


def page_limit(request, default: int = DEFAULT_LIMIT) -> int:
    """``?limit=``: 1 to ``MAX_LIMIT``; anything else is a 400 naming ``limit``."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise exceptions.ValidationError({"limit": [f"an integer from 1 to {MAX_LIMIT}"]})
    return int(raw)


def _read_cursor(request, order) -> object | None:
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    refused = exceptions.ValidationError({"cursor": ["not a cursor this list gave (with these parameters)"]})
    try:
        cursor = signing.loads(raw, salt=_cursor_salt(request))
    except signing.BadSignature:
        raise refused from None
    if not isinstance(cursor, dict) or cursor.get("order") != (list(order) if order else None):
        raise refused
    at = cursor.get("at")
    if order and not (isinstance(at, list) and len(at) == len(order)):
        raise refused
    if not order and not (isinstance(at, int) and at >= 0):
        raise refused
    return at


def _after(order: Sequence[str], values: list) -> Q:
    """Rows strictly after ``values`` in ``order`` (keyset: no OFFSET, stable while rows are added)."""
    after = Q()
    for i, field in enumerate(order):
        name = field.lstrip("-")
        step = Q(**{f"{name}__{'lt' if field.startswith('-') else 'gt'}": values[i]})
        for earlier, value in zip(order[:i], values[:i], strict=True):
            step &= Q(**{earlier.lstrip("-"): value})
        after |= step
    return after


def paginate(request, rows: QuerySet | Sequence, serialize: Callable, *, order: Sequence[str] | None = None,
             default_limit: int = DEFAULT_LIMIT) -> Response:
    """One page of a list as the API answers every list: ``{"results": [...], "next": <cursor or null>}``.

    With ``order`` (model fields, ``-`` for descending, never null, the last one unique such as ``"-pk"``),
    ``rows`` is a queryset paged by keyset; without it, ``rows`` is already in a stable order (a short
    roster, a computed list) and is paged by position. ``?limit=`` and ``?cursor=`` are checked here: a
    wrong one is a 400 naming it. ``serialize`` turns one row into its JSON."""
    limit = page_limit(request, default_limit)
    at = _read_cursor(request, order)
    if order:
        rows = rows.order_by(*order)
        try:
            if at is not None:
                rows = rows.filter(_after(order, at))
            window = list(rows[:limit + 1])
        except (ValueError, TypeError, DjangoValidationError):
            # Only a cursor signed with this panel's key gets here: a value its field cannot take.
            raise exceptions.ValidationError({"cursor": ["not a cursor this list gave"]}) from None
    else:
        start = at or 0
        window = list(rows[start:start + limit + 1])
    page, more = window[:limit], len(window) > limit
    next_cursor = None
    if more:
        if order:
            last = page[-1]
            position = [_json_value(getattr(last, field.lstrip("-"))) for field in order]
        else:
            position = (at or 0) + limit
        next_cursor = signing.dumps({"order": list(order) if order else None, "at": position},
                                    salt=_cursor_salt(request))
    return Response({"results": [serialize(row) for row in page], "next": next_cursor})


class MeView(APIView):
    """Who the token (or session) belongs to, and their roles."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=inline_serializer("Me", {
        "username": serializers.CharField(),
        "roles": serializers.ListField(child=serializers.CharField()),
    }))
    def get(self, request):
        return Response({"username": request.user.get_username(), "roles": roles_of(request.user)})


# --- the caller's own API tokens -----------------------------------------------------------------

class TokenSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The first characters, to recognise a token; never the token.")
    kind = serializers.ChoiceField(choices=ApiToken.Kind.choices,
                                   help_text="api: the API as its user; metrics: GET /metrics only.")
    read_only = serializers.BooleanField(help_text="Only GET, HEAD and OPTIONS.")
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(help_text="After this the token no longer works.")
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    active = serializers.BooleanField(help_text="Neither revoked nor expired.")


class TokenRequestSerializer(InputSerializer):
    name = StrictCharField(max_length=100, required=False, allow_blank=True)
    password = PasswordField()
    kind = serializers.ChoiceField(choices=ApiToken.Kind.choices, required=False, default=ApiToken.Kind.API)
    read_only = StrictBooleanField(required=False, default=False, help_text="Only for kind api.")

    def validate(self, attrs):
        if attrs.get("read_only") and attrs.get("kind") == ApiToken.Kind.METRICS:
            raise exceptions.ValidationError({"read_only": ["a metrics token is scrape-only already"]})
        return attrs


def token_json(token) -> dict:
    return {"id": token.pk, "name": token.name, "prefix": token.prefix, "kind": token.kind,
            "read_only": token.read_only, "created_at": token.created_at.isoformat(),
            "expires_at": token.expires_at.isoformat(),
            "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
            "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
            "active": token.is_active}


class TokenListView(APIView):
    """``GET``: the caller's own tokens (never their values). ``POST`` ``{"name", "password", "kind", "read_only"}``:
    a new token for the caller, their password re-entered; 201 with its value, shown this once (only its hash is
    stored), and its expiry."""

    permission_classes = [IsAuthenticated]

    @extend_schema(operation_id="tokens_list", parameters=PAGE_PARAMETERS,
                   responses=page_schema("TokenList", TokenSerializer))
    def get(self, request):
        return paginate(request, ApiToken.objects.filter(user=request.user), token_json, order=("-created_at", "-pk"))

    @extend_schema(operation_id="tokens_create",
                   request=TokenRequestSerializer,
                   responses={201: inline_serializer("NewToken", {
                       "token": serializers.CharField(help_text="The token itself; it is not shown again."),
                       "data": TokenSerializer()})})
    def post(self, request):
        body = validated_body(request, TokenRequestSerializer)
        try:
            token, raw = api_token_create(actor=request.user, user=request.user, name=body.get("name", ""),
                                          password=body["password"], request=request, kind=body["kind"],
                                          read_only=body["read_only"])
        except PasswordError as exc:
            return password_refusal(exc)
        return Response({"token": raw, "data": token_json(token)}, status=status.HTTP_201_CREATED)


class TokenRevokeView(APIView):
    """Revoke one of the caller's own tokens (final; another user's token is a 404)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(operation_id="tokens_revoke", request=None, responses=inline_serializer(
        "TokenAnswer", {"data": TokenSerializer()}))
    def post(self, request, pk: int):
        validated_body(request)
        token = api_token_revoke(actor=request.user, token=get_object_or_404(ApiToken, pk=pk, user=request.user))
        return Response({"data": token_json(token)})
