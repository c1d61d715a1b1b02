"""``/api/v1/`` endpoints of compliance: the audit trail (events, signed exports, public keys)."""

from django.urls import path, reverse
from django.utils.http import urlencode
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from compliance.api_ops import urlpatterns as ops_urlpatterns
from compliance.audit_export import FORMATS, audit_export_start, export_response, public_key_response
from compliance.audit_query import TIME_PATTERN, AuditFilter, FilterError, event_json, events_page
from compliance.signing import current_public_key, fingerprint, public_pem, retired_public_keys
from drpanel.api import capability
from drpanel.permissions import Cap
from drpanel.schema import ErrorSerializer

_TIME = {"type": "string", "pattern": f"{TIME_PATTERN}|^$"}
FILTER_PARAMETERS = [
    OpenApiParameter("from", _TIME, description="inclusive: a date (its start, UTC) or an ISO 8601 date-time "
                                                "(UTC when it has no offset); empty means no bound"),
    OpenApiParameter("to", _TIME, description="exclusive; a bare date includes that day"),
    OpenApiParameter("actor", {"type": "string", "maxLength": 150}, description="username"),
    OpenApiParameter("action", {"type": "string", "maxLength": 100},
                     description="exact, or a prefix ending in * (e.g. restore.*)"),
    OpenApiParameter("object_type", {"type": "string", "maxLength": 100}, description="e.g. auth.user"),
    OpenApiParameter("object_id", {"type": "string", "maxLength": 64}),
    OpenApiParameter("outcome", str, enum=["", "success", "failure", "denied"], description="empty means any"),
]


class AuditEventSerializer(serializers.Serializer):
    """An event's hashed fields (the canonical encoding, version 1) and its hash."""

    v = serializers.IntegerField()
    seq = serializers.IntegerField()
    occurred_at = serializers.CharField(help_text="UTC, YYYY-MM-DDTHH:MM:SS.ffffffZ")
    actor_id = serializers.IntegerField(allow_null=True)
    actor_username = serializers.CharField()
    client_ip = serializers.CharField(allow_null=True)
    user_agent = serializers.CharField(allow_blank=True)
    request_id = serializers.CharField(allow_blank=True)
    action = serializers.CharField()
    object_type = serializers.CharField(allow_blank=True)
    object_id = serializers.CharField(allow_blank=True)
    object_repr = serializers.CharField(allow_blank=True)
    outcome = serializers.ChoiceField(["success", "failure", "denied"])
    details = serializers.DictField()
    prev_hash = serializers.CharField()
    hash = serializers.CharField()


class AuditEventPageSerializer(serializers.Serializer):
    results = AuditEventSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="The URL of the next (older) page; null on the last.")


class PublicKeySerializer(serializers.Serializer):
    fingerprint = serializers.CharField()
    current = serializers.BooleanField()
    pem = serializers.CharField()


class PublicKeysSerializer(serializers.Serializer):
    keys = PublicKeySerializer(many=True)


def _filter(request) -> AuditFilter:
    try:
        return AuditFilter.from_params(request.query_params)
    except FilterError as exc:
        raise ValidationError({"filter": str(exc)}) from None


def _positive_int(request, name: str, default: int | None, maximum: int | None = None) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValidationError({name: "must be a positive integer"})
    return min(int(value), maximum) if maximum else int(value)


class AuditEventsView(APIView):
    """Events, newest first, filtered; page with ``before`` = the ``seq`` given in ``next``."""

    permission_classes = [capability(Cap.READ_AUDIT)]

    @extend_schema(operation_id="audit_events_list", parameters=[
        *FILTER_PARAMETERS,
        OpenApiParameter("before", {"type": "integer", "minimum": 1}, description="only events with a lower seq"),
        OpenApiParameter("limit", {"type": "integer", "minimum": 1}, description="page size (default 50, at most 500)"),
    ], responses=AuditEventPageSerializer)
    def get(self, request):
        flt = _filter(request)
        page = events_page(flt, before=_positive_int(request, "before", None),
                           size=_positive_int(request, "limit", 50, maximum=500))
        next_url = None
        if page.older is not None:
            query = {**flt.query_params(), "before": page.older, "limit": len(page.events)}
            next_url = f"{reverse('api:audit-events')}?{urlencode(query)}"
        return Response({"results": [event_json(event) for event in page.events], "next": next_url})


class _FormatIsOurs(DefaultContentNegotiation):
    """``?format=`` names the export's format here, not one of DRF's renderers."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class AuditExportView(APIView):
    """A signed export, streamed: JSON Lines (digest last), or CSV in a ZIP with its digest. Audited."""

    permission_classes = [capability(Cap.READ_AUDIT)]
    content_negotiation_class = _FormatIsOurs

    @extend_schema(operation_id="audit_export", parameters=[
        OpenApiParameter("format", str, enum=list(FORMATS), description="default jsonl"), *FILTER_PARAMETERS,
    ], responses={
        (200, "application/jsonl"): OpenApiResponse(OpenApiTypes.BINARY,
                                                    description="JSON Lines, the signed digest last"),
        (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="the CSV and its signed digest"),
        (400, "application/json"): OpenApiResponse(ErrorSerializer, description="a filter or the format is refused"),
    })
    def get(self, request):
        export_format = request.query_params.get("format", "jsonl")
        if export_format not in FORMATS:
            raise ValidationError({"format": f"use one of: {', '.join(FORMATS)}"})
        plan = audit_export_start(actor=request.user, format=export_format, flt=_filter(request),
                                  request=request, via="api")
        return export_response(plan)


class AuditPublicKeyView(APIView):
    """The audit log's current public key (PEM): it verifies checkpoints and export digests."""

    permission_classes = [capability(Cap.READ_AUDIT)]

    @extend_schema(operation_id="audit_public_key", responses={
        (200, "application/x-pem-file"): OpenApiResponse(OpenApiTypes.STR, description="PEM; its fingerprint in "
                                                                                     "X-Key-Fingerprint")})
    def get(self, request):
        return public_key_response(current_public_key())


class AuditPublicKeysView(APIView):
    """Every public key that verifies the log's signatures: the current one and retired ones."""

    permission_classes = [capability(Cap.READ_AUDIT)]

    @extend_schema(operation_id="audit_public_keys_list", responses=PublicKeysSerializer)
    def get(self, request):
        current = current_public_key()
        keys = [{"fingerprint": fingerprint(current), "current": True, "pem": public_pem(current)}]
        keys += [{"fingerprint": fingerprint(key), "current": False, "pem": public_pem(key)}
                 for _, key in retired_public_keys() if fingerprint(key) != keys[0]["fingerprint"]]
        return Response({"keys": keys})


urlpatterns = [
    path("audit/events", AuditEventsView.as_view(), name="audit-events"),
    path("audit/export", AuditExportView.as_view(), name="audit-export"),
    path("audit/public-key", AuditPublicKeyView.as_view(), name="audit-public-key"),
    path("audit/public-keys", AuditPublicKeysView.as_view(), name="audit-public-keys"),
    *ops_urlpatterns,
]
