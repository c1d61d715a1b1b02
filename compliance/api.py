"""``/api/v1/`` endpoints of compliance: the audit trail (events, signed exports, public keys) and the
monthly certifications (months, records, signing, evidence bundles)."""

from django.http import Http404
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from compliance.api_escalation import urlpatterns as escalation_urlpatterns
from compliance.api_ops import urlpatterns as ops_urlpatterns
from compliance.audit.export import FORMATS, audit_export_start, export_response, public_key_response
from compliance.audit.models import AuditEvent
from compliance.audit.query import TIME_PATTERN, AuditFilter, FilterError, event_json
from compliance.audit.signing import current_public_key, fingerprint, public_pem, retired_public_keys
from compliance.certification_bundle import bundle_response
from compliance.certification_record import (
    CertificationConflict,
    CertificationError,
    certification_assemble,
    check_period,
    content_hash,
    parse_period,
)
from compliance.certifications import (
    certification_document,
    certification_months,
    certification_sign,
    current_certification,
)
from drpanel.api import (
    PAGE_PARAMETERS,
    InputSerializer,
    PasswordField,
    StrictCharField,
    api_error,
    capability,
    page_schema,
    paginate,
    validated_body,
)
from drpanel.permissions import Cap
from drpanel.schema import ErrorSerializer, error_response

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


class PublicKeySerializer(serializers.Serializer):
    fingerprint = serializers.CharField()
    current = serializers.BooleanField()
    pem = serializers.CharField()


def _filter(request) -> AuditFilter:
    try:
        return AuditFilter.from_params(request.query_params)
    except FilterError as exc:
        raise ValidationError({"filter": str(exc)}) from None


class AuditEventsView(APIView):
    """Events, newest first (by ``seq``), filtered; ``cursor`` = ``next`` for the next (older) page."""

    permission_classes = [capability(Cap.READ_AUDIT)]

    @extend_schema(operation_id="audit_events_list", parameters=[
        *FILTER_PARAMETERS,
        OpenApiParameter("before", {"type": "integer", "minimum": 1}, description="only events with a lower seq"),
        *PAGE_PARAMETERS,
    ], responses=page_schema("AuditEventPage", AuditEventSerializer))
    def get(self, request):
        rows = _filter(request).apply(AuditEvent.objects.all())
        before = request.query_params.get("before")
        if before is not None:
            if not before.isdigit() or int(before) < 1:
                raise ValidationError({"before": ["must be a positive integer"]})
            rows = rows.filter(seq__lt=int(before))
        return paginate(request, rows, event_json, order=("-seq",))


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

    @extend_schema(operation_id="audit_public_keys_list", parameters=PAGE_PARAMETERS,
                   responses=page_schema("PublicKeyList", PublicKeySerializer))
    def get(self, request):
        current = current_public_key()
        keys = [{"fingerprint": fingerprint(current), "current": True, "pem": public_pem(current)}]
        keys += [{"fingerprint": fingerprint(key), "current": False, "pem": public_pem(key)}
                 for _, key in retired_public_keys() if fingerprint(key) != keys[0]["fingerprint"]]
        # The current key first, then the retired ones in the keyring's order: a short, stable list.
        return paginate(request, keys, lambda key: key)


# --- certifications ---------------------------------------------------------------------------

# No pattern in the schema: any other text names no month and is answered 404, like a missing id.
PERIOD_PARAMETER = OpenApiParameter("id", str, OpenApiParameter.PATH, description="the month, YYYY-MM (e.g. 2026-11)")


class CertificationMonthSerializer(serializers.Serializer):
    period = serializers.CharField(help_text="YYYY-MM")
    year = serializers.IntegerField()
    month = serializers.IntegerField()
    state = serializers.CharField(help_text="draft (not signed) or signed")
    signed_by = serializers.CharField(allow_null=True)
    signed_at = serializers.CharField(allow_null=True)
    content_hash = serializers.CharField(allow_null=True)
    superseded_records = serializers.IntegerField()
    url = serializers.CharField()


class CertificationSerializer(serializers.Serializer):
    period = serializers.CharField()
    state = serializers.CharField(help_text="draft (assembled now, not stored) or signed")
    id = serializers.IntegerField(allow_null=True)
    content_hash = serializers.CharField(help_text="SHA-256 of the canonical JSON of record (for a draft: of the "
                                                   "record as assembled now)")
    signed_by = serializers.CharField(allow_null=True)
    signed_at = serializers.CharField(allow_null=True)
    attestation = serializers.CharField(allow_blank=True)
    reason = serializers.CharField(allow_blank=True)
    supersedes = serializers.JSONField(allow_null=True)
    record = serializers.DictField()


class CertificationSignatureSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    period = serializers.CharField()
    state = serializers.CharField(help_text="signed")
    content_hash = serializers.CharField()
    supersedes = serializers.IntegerField(allow_null=True)


def _month(period: str) -> tuple[int, int]:
    try:
        year, month = parse_period(period)
        check_period(year, month)
    except CertificationError:
        raise Http404("No such month (YYYY-MM, not in the future).") from None
    return year, month


class CertificationSignRequestSerializer(InputSerializer):
    password = PasswordField(required=False, help_text="Your password, again (else the session must have "
                                                       "re-authenticated in the last minutes).")
    attestation = StrictCharField(max_length=4000, help_text="What you checked and what you certify.")
    reason = StrictCharField(required=False, allow_blank=True, default="",
                             help_text="Why a month already signed is signed again.")


class CertificationListView(APIView):
    """Every month the panel can certify, newest first: its state, signer and content hash."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="certifications_list", parameters=PAGE_PARAMETERS,
                   responses=page_schema("CertificationList", CertificationMonthSerializer))
    def get(self, request):
        return paginate(request, certification_months(), lambda row: row.as_dict())


class CertificationDetailView(APIView):
    """One month's record: the signed one in force, or (``state`` draft) the record as assembled now."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="certifications_retrieve", parameters=[PERIOD_PARAMETER],
                   responses=inline_serializer("CertificationAnswer", {"data": CertificationSerializer()}))
    def get(self, request, id):
        year, month = _month(id)
        cert = current_certification(year, month)
        if cert is not None:
            return Response({"data": certification_document(cert)})
        record = certification_assemble(year=year, month=month)
        return Response({"data": {"period": record["period"]["label"], "state": "draft", "id": None,
                                  "content_hash": content_hash(record), "signed_by": None, "signed_at": None,
                                  "attestation": "", "reason": "", "supersedes": None, "record": record}})


class CertificationSignView(APIView):
    """Sign the month ``{"password", "attestation", "reason"?}`` (managers; not the month's drill operator).

    403 when refused (role, password, drill operator; audited), 409 when the month is already
    signed and no ``reason`` is given (a reason makes a new record that supersedes it).
    """

    permission_classes = [capability(Cap.SIGN_CERTIFICATION)]

    @extend_schema(operation_id="certifications_sign", parameters=[PERIOD_PARAMETER],
                   request=CertificationSignRequestSerializer,
                   responses={201: inline_serializer("CertificationSignAnswer",
                                                       {"data": CertificationSignatureSerializer()}),
                              409: error_response(409)})
    def post(self, request, id):
        year, month = _month(id)
        body = validated_body(request, CertificationSignRequestSerializer)
        try:
            cert = certification_sign(actor=request.user, year=year, month=month, request=request,
                                      password=body.get("password", ""), attestation=body["attestation"],
                                      reason=body["reason"])
        except CertificationConflict as exc:
            return api_error(409, str(exc))
        except CertificationError as exc:
            return api_error(400, str(exc))
        return Response({"data": {"id": cert.pk, "period": cert.label, "state": cert.state,
                                  "content_hash": cert.content_hash, "supersedes": cert.supersedes_id}}, status=201)


class CertificationBundleView(APIView):
    """The evidence bundle (ZIP) of the month's signed record; audited. 409 while the month is not signed."""

    permission_classes = [capability(Cap.READ_AUDIT)]
    content_negotiation_class = _FormatIsOurs

    @extend_schema(operation_id="certifications_bundle", parameters=[PERIOD_PARAMETER], responses={
        (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="certification.json, the "
                                                  "signed audit export, public-key.pem, README.txt, verifiers"),
        (409, "application/json"): error_response(409, "The month is not signed: there is no bundle yet.")})
    def get(self, request, id):
        year, month = _month(id)
        cert = current_certification(year, month)
        if cert is None:
            return api_error(409, f"{id} is not signed: there is no bundle yet.")
        return bundle_response(actor=request.user, cert=cert, request=request)


urlpatterns = [
    path("certifications", CertificationListView.as_view(), name="certification-list"),
    path("certifications/<str:id>", CertificationDetailView.as_view(), name="certification-detail"),
    path("certifications/<str:id>/sign", CertificationSignView.as_view(), name="certification-sign"),
    path("certifications/<str:id>/bundle", CertificationBundleView.as_view(), name="certification-bundle"),
    path("audit/events", AuditEventsView.as_view(), name="audit-events"),
    path("audit/export", AuditExportView.as_view(), name="audit-export"),
    path("audit/public-key", AuditPublicKeyView.as_view(), name="audit-public-key"),
    path("audit/public-keys", AuditPublicKeysView.as_view(), name="audit-public-keys"),
    *ops_urlpatterns,
    *escalation_urlpatterns,
]
