"""``/api/v1/`` endpoints of compliance: the audit trail (events, signed exports, public keys)."""

from django.urls import path, reverse
from django.utils.http import urlencode
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from compliance.api_ops import urlpatterns as ops_urlpatterns
from compliance.audit_export import FORMATS, audit_export_start, export_response, public_key_response
from compliance.audit_query import AuditFilter, FilterError, event_json, events_page
from compliance.signing import current_public_key, fingerprint, public_pem, retired_public_keys
from drpanel.api import capability
from drpanel.permissions import Cap

FILTER_PARAMETERS = [
    OpenApiParameter("from", OpenApiTypes.DATETIME, description="inclusive; a bare date means its start (UTC)"),
    OpenApiParameter("to", OpenApiTypes.DATETIME, description="exclusive; a bare date includes that day"),
    OpenApiParameter("actor", str, description="username"),
    OpenApiParameter("action", str, description="exact, or a prefix ending in * (e.g. restore.*)"),
    OpenApiParameter("object_type", str, description="e.g. auth.user"),
    OpenApiParameter("object_id", str),
    OpenApiParameter("outcome", str, enum=["success", "failure", "denied"]),
]


def _filter(request) -> AuditFilter:
    try:
        return AuditFilter.from_params(request.query_params)
    except FilterError as exc:
        raise ValidationError({"filter": str(exc)}) from None


def _positive_int(request, name: str, default: int | None, maximum: int | None = None) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValidationError({name: "must be a positive integer"})
    return min(int(value), maximum) if maximum else int(value)


class AuditEventsView(APIView):
    """Events, newest first, filtered; page with ``before`` = the ``seq`` given in ``next``."""

    permission_classes = [capability(Cap.READ_AUDIT)]

    @extend_schema(parameters=[*FILTER_PARAMETERS, OpenApiParameter("before", int), OpenApiParameter("limit", int)],
                   responses=OpenApiTypes.OBJECT)
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

    @extend_schema(parameters=[OpenApiParameter("format", str, enum=list(FORMATS)), *FILTER_PARAMETERS],
                   responses={(200, "application/jsonl"): OpenApiTypes.BINARY,
                              (200, "application/zip"): OpenApiTypes.BINARY})
    def get(self, request):
        export_format = request.query_params.get("format") or "jsonl"
        if export_format not in FORMATS:
            raise ValidationError({"format": f"use one of: {', '.join(FORMATS)}"})
        plan = audit_export_start(actor=request.user, format=export_format, flt=_filter(request),
                                  request=request, via="api")
        return export_response(plan)


class AuditPublicKeyView(APIView):
    """The audit log's current public key (PEM): it verifies checkpoints and export digests."""

    permission_classes = [capability(Cap.READ_AUDIT)]

    @extend_schema(responses={(200, "application/x-pem-file"): OpenApiTypes.STR})
    def get(self, request):
        return public_key_response(current_public_key())


class AuditPublicKeysView(APIView):
    """Every public key that verifies the log's signatures: the current one and retired ones."""

    permission_classes = [capability(Cap.READ_AUDIT)]

    @extend_schema(responses=OpenApiTypes.OBJECT)
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
