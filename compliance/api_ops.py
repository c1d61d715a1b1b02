"""``/api/v1/`` endpoints of day-to-day DR operations: the contact roster, checklists, alerts, health.

Writes go through the same services as the pages (``compliance.contacts``,
``compliance.checklists``, ``compliance.alerts``), so permissions and audit events are the
pages' own. Refusals: 403 (capability; audited), 400 (a refused value, per field),
409 (the item or alert is not in a state that allows it).
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from backups.models import System
from compliance.alerts import AlertStateError, alert_acknowledge
from compliance.audit.verify import audit_verify
from compliance.checklists import (
    ChecklistError,
    checklist_evaluate,
    checklist_item_tick,
    checklist_item_untick,
    checklist_today,
    is_open,
    item_as_dict,
    period_as_dict,
)
from compliance.contacts import (
    contact_as_dict,
    contact_create,
    contact_update,
    contact_verify,
    contacts_roster,
)
from compliance.health import health_evaluate
from compliance.measurements import rpo_for
from compliance.models import Alert, ChecklistItem, Contact
from drpanel import clock
from drpanel.api import (
    PAGE_PARAMETERS,
    InputSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    api_error,
    capability,
    page_schema,
    paginate,
    validated_body,
)
from drpanel.permissions import Cap
from drpanel.schema import error_response


class ContactSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    level = serializers.ChoiceField(Contact.Level.choices)
    level_label = serializers.CharField()
    position = serializers.IntegerField()
    name = serializers.CharField()
    role = serializers.CharField(allow_blank=True)
    phone = serializers.CharField(allow_blank=True)
    email = serializers.CharField(allow_blank=True)
    response_minutes = serializers.IntegerField(allow_null=True)
    notes = serializers.CharField(allow_blank=True)
    active = serializers.BooleanField()
    last_verified_on = serializers.DateField(allow_null=True)
    last_verified_by = serializers.CharField(allow_null=True)
    review_due = serializers.BooleanField()


class ChecklistPeriodSerializer(serializers.Serializer):
    cadence = serializers.ChoiceField(["daily", "weekly", "monthly"])
    label = serializers.CharField()
    start = serializers.DateField()
    end = serializers.DateField()
    closed = serializers.BooleanField()
    template_version = serializers.IntegerField()
    changed_since_opened = serializers.BooleanField()
    counts = serializers.DictField(child=serializers.IntegerField())
    items = serializers.ListField(child=serializers.DictField(), help_text="Each item: code, title, kind, status, "
                                                                          "note, evidence links, who ticked it.")


class ChecklistTodaySerializer(serializers.Serializer):
    date = serializers.DateField()
    periods = ChecklistPeriodSerializer(many=True)


class AlertSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    severity = serializers.ChoiceField(Alert.Severity.choices)
    subject = serializers.CharField()
    message = serializers.CharField(allow_blank=True)
    evidence_url = serializers.CharField(allow_blank=True, allow_null=True)
    state = serializers.ChoiceField(Alert.State.choices)
    opened_at = serializers.DateTimeField()
    acknowledged_at = serializers.DateTimeField(allow_null=True)
    acknowledged_by = serializers.CharField(allow_null=True)
    resolved_at = serializers.DateTimeField(allow_null=True)
    escalation_step = serializers.IntegerField()
    next_escalation_at = serializers.DateTimeField(allow_null=True)


class ChecklistTodayView(APIView):
    """Today's daily checklist, this week's and this month's: each item's state and evidence links."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="checklists_today",
                   responses=inline_serializer("ChecklistTodayAnswer", {"data": ChecklistTodaySerializer()}))
    def get(self, request):
        return Response({"data": checklist_today()})


def alert_as_dict(alert: Alert) -> dict:
    return {
        "id": alert.pk,
        "kind": alert.kind,
        "severity": alert.severity,
        "subject": alert.subject,
        "message": alert.message,
        "evidence_url": alert.evidence_url,
        "state": alert.state,
        "opened_at": alert.opened_at.isoformat(),
        "acknowledged_at": alert.acknowledged_at.isoformat() if alert.acknowledged_at else None,
        "acknowledged_by": (alert.acknowledged_by.get_username() if alert.acknowledged_by
                            else alert.acknowledged_by_contact.name if alert.acknowledged_by_contact else None),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "escalation_step": alert.escalation_step,
        "next_escalation_at": alert.next_escalation_at.isoformat() if alert.next_escalation_at else None,
    }


class AlertListView(APIView):
    """Alerts, newest first: ``?state=open|acknowledged|resolved`` (default: all)."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(
        operation_id="alerts_list",
        parameters=[OpenApiParameter("state", str, enum=list(Alert.State.values), required=False), *PAGE_PARAMETERS],
        responses=page_schema("AlertList", AlertSerializer))
    def get(self, request):
        alerts = Alert.objects.select_related("acknowledged_by", "acknowledged_by_contact")
        state = request.query_params.get("state")
        if state is not None:  # "state=" is refused like any unknown state, not read as "all"
            if state not in Alert.State.values:
                raise ValidationError({"state": [f"one of {', '.join(Alert.State.values)}"]})
            alerts = alerts.filter(state=state)
        return paginate(request, alerts, alert_as_dict, order=("-opened_at", "-pk"))


def _conflict(exc: Exception) -> Response:
    return api_error(status.HTTP_409_CONFLICT, str(exc))


def _refused_fields(exc: DjangoValidationError) -> ValidationError:
    """A model validation error as the API's 400 (messages per field)."""
    if hasattr(exc, "error_dict"):
        return ValidationError({name: messages for name, messages in exc.message_dict.items()})
    return ValidationError({"non_field_errors": exc.messages})


# --- contacts --------------------------------------------------------------------------------

class ContactWriteSerializer(InputSerializer):
    """A contact's editable fields (``compliance.contacts.EDITABLE_FIELDS``); the model validates the rest."""

    level = serializers.ChoiceField(Contact.Level.choices)
    position = StrictIntegerField(min_value=1, max_value=32767, required=False)
    name = StrictCharField(max_length=150)
    role = StrictCharField(max_length=150, required=False, allow_blank=True)
    phone = StrictCharField(max_length=40, required=False, allow_blank=True)
    email = serializers.EmailField(required=False, allow_blank=True)
    response_minutes = StrictIntegerField(min_value=1, max_value=2_000_000, required=False, allow_null=True)
    notes = StrictCharField(max_length=2000, required=False, allow_blank=True)
    active = StrictBooleanField(required=False)


ContactAnswer = inline_serializer("ContactAnswer", {"data": ContactSerializer()})


class ContactListView(APIView):
    """``GET``: the emergency roster in escalation order (L1, L2, L3, Emergency, Vendor), inactive included.

    ``POST``: add a contact (managers, admins); 201 with it.
    """

    def get_permissions(self):
        return [capability(Cap.EDIT_CONTACTS if self.request.method == "POST" else Cap.VIEW_PANEL)()]

    @extend_schema(operation_id="contacts_list", parameters=PAGE_PARAMETERS,
                   responses=page_schema("ContactList", ContactSerializer))
    def get(self, request):
        today = clock.today()
        # The roster's escalation order (``in_roster_order``: the level's rank, position, name, id) as the keyset.
        return paginate(request, contacts_roster(), lambda contact: contact_as_dict(contact, today),
                        order=("level_rank", "position", "name", "pk"))

    @extend_schema(operation_id="contacts_create", request=ContactWriteSerializer, responses={201: ContactAnswer})
    def post(self, request):
        body = validated_body(request, ContactWriteSerializer)
        try:
            contact = contact_create(actor=request.user, **body)
        except DjangoValidationError as exc:
            raise _refused_fields(exc) from None
        return Response({"data": contact_as_dict(contact, clock.today())}, status=status.HTTP_201_CREATED)


class ContactDetailView(APIView):
    """``GET`` one contact; ``PATCH`` changes the fields given (managers, admins; audited before/after)."""

    def get_permissions(self):
        return [capability(Cap.EDIT_CONTACTS if self.request.method == "PATCH" else Cap.VIEW_PANEL)()]

    @extend_schema(operation_id="contacts_retrieve", responses=ContactAnswer)
    def get(self, request, pk: int):
        return Response({"data": contact_as_dict(get_object_or_404(Contact, pk=pk), clock.today())})

    @extend_schema(operation_id="contacts_partial_update", request=ContactWriteSerializer(partial=True),
                   responses=ContactAnswer)
    def patch(self, request, pk: int):
        contact = get_object_or_404(Contact, pk=pk)
        body = validated_body(request, ContactWriteSerializer, partial=True)
        try:
            contact = contact_update(actor=request.user, contact=contact, **body)
        except DjangoValidationError as exc:
            raise _refused_fields(exc) from None
        return Response({"data": contact_as_dict(contact, clock.today())})


class ContactVerifyView(APIView):
    """Record that the contact's details were confirmed today (managers, admins)."""

    permission_classes = [capability(Cap.EDIT_CONTACTS)]

    @extend_schema(operation_id="contacts_verify", request=None, responses=ContactAnswer)
    def post(self, request, pk: int):
        contact = get_object_or_404(Contact, pk=pk)
        validated_body(request)
        contact = contact_verify(actor=request.user, contact=contact)
        return Response({"data": contact_as_dict(contact, clock.today())})


# --- checklist items -------------------------------------------------------------------------

class TickSerializer(InputSerializer):
    note = StrictCharField(max_length=2000, help_text="What was checked.")
    evidence_url = StrictCharField(max_length=500, required=False, allow_blank=True,
                                         help_text="A panel path (/…) or an http(s) address.")
    evidence_ref = StrictCharField(max_length=200, required=False, allow_blank=True,
                                         help_text="`<object_type>:<object_id>` of an evidence candidate, for "
                                                   "items that require evidence.")


ChecklistItemAnswer = inline_serializer("ChecklistItemAnswer", {"data": serializers.DictField()})
CHECKLIST_CONFLICT = error_response(409, "Refused: the item is automatic, its period is closed, it is already "
                                         "ticked (or not by you), or its evidence was refused; `detail` says which.")


def _item_json(item: ChecklistItem) -> dict:
    return {"id": item.pk, "period": item.period.label, "cadence": item.period.cadence,
            **item_as_dict(item, closed=not is_open(item.period))}


class ChecklistItemTickView(APIView):
    """Tick a manual item of an open checklist with a note (and evidence when the item requires it)."""

    permission_classes = [capability(Cap.TICK_CHECKLISTS)]

    @extend_schema(operation_id="checklist_items_tick", request=TickSerializer,
                   responses={200: ChecklistItemAnswer, 409: CHECKLIST_CONFLICT})
    def post(self, request, pk: int):
        item = get_object_or_404(ChecklistItem.objects.select_related("period"), pk=pk)
        body = validated_body(request, TickSerializer)
        try:
            item = checklist_item_tick(actor=request.user, item=item, **body)
        except ChecklistError as exc:
            return _conflict(exc)
        return Response({"data": _item_json(item)})


class ChecklistItemUntickView(APIView):
    """Take back one's own tick while the checklist is open (the tick stays in the audit log)."""

    permission_classes = [capability(Cap.TICK_CHECKLISTS)]

    @extend_schema(operation_id="checklist_items_untick", request=None,
                   responses={200: ChecklistItemAnswer, 409: CHECKLIST_CONFLICT})
    def post(self, request, pk: int):
        item = get_object_or_404(ChecklistItem.objects.select_related("period"), pk=pk)
        validated_body(request)
        try:
            item = checklist_item_untick(actor=request.user, item=item)
        except ChecklistError as exc:
            return _conflict(exc)
        return Response({"data": _item_json(item)})


class ChecklistEvaluateView(APIView):
    """Evaluate today's automatic checklist items now, from the data (operators, managers)."""

    permission_classes = [capability(Cap.TICK_CHECKLISTS)]

    @extend_schema(operation_id="checklists_evaluate", request=None,
                   responses={200: inline_serializer("ChecklistEvaluated", {"data": ChecklistPeriodSerializer()}),
                              409: CHECKLIST_CONFLICT})
    def post(self, request):
        validated_body(request)
        try:
            period = checklist_evaluate(actor=request.user)
        except ChecklistError as exc:
            return _conflict(exc)
        return Response({"data": period_as_dict(period)})


# --- the audit chain -------------------------------------------------------------------------

class AuditVerifyView(APIView):
    """Verify the whole audit chain now (auditors, managers, admins); the verification is audited."""

    permission_classes = [capability(Cap.READ_AUDIT)]

    @extend_schema(operation_id="audit_verify", request=None, responses=inline_serializer("AuditVerified", {
        "ok": serializers.BooleanField(), "count": serializers.IntegerField(),
        "head_seq": serializers.IntegerField(allow_null=True), "head_hash": serializers.CharField(allow_null=True),
        "checkpoints": serializers.IntegerField(), "broken_seq": serializers.IntegerField(allow_null=True),
        "reason": serializers.CharField(allow_blank=True), "detail": serializers.CharField(allow_blank=True),
        "seconds": serializers.FloatField()}))
    def post(self, request):
        validated_body(request)
        result = audit_verify(actor=request.user, request=request, via="api")
        return Response({"ok": result.ok, "count": result.count, "head_seq": result.head_seq,
                         "head_hash": result.head_hash, "checkpoints": result.checkpoints,
                         "broken_seq": result.broken_seq, "reason": result.reason, "detail": result.detail,
                         "seconds": round(result.seconds, 3)})


# --- alerts and health -----------------------------------------------------------------------

AlertAnswer = inline_serializer("AlertAnswer", {"data": AlertSerializer()})


class AlertDetailView(APIView):
    """One alert: its state, escalation step and who acknowledged it."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="alerts_retrieve", responses=AlertAnswer)
    def get(self, request, pk: int):
        alert = get_object_or_404(Alert.objects.select_related("acknowledged_by", "acknowledged_by_contact"), pk=pk)
        return Response({"data": alert_as_dict(alert)})


class AlertAcknowledgeView(APIView):
    """Take an open alert: its escalation stops (operators, managers, admins; auditors are refused)."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="alerts_acknowledge", request=None,
                   responses={200: AlertAnswer, 409: error_response(409, "Refused: the alert is not open.")})
    def post(self, request, pk: int):
        alert = get_object_or_404(Alert, pk=pk)
        validated_body(request)
        try:
            alert = alert_acknowledge(actor=request.user, alert=alert)
        except AlertStateError as exc:
            return _conflict(exc)
        return Response({"data": alert_as_dict(alert)})


class SystemHealthView(APIView):
    """A system's health now: score, band, the five checks with their evidence, and its RPO."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="systems_health", responses=inline_serializer("SystemHealth", {
        "data": inline_serializer("SystemHealthData", {
            "system": serializers.CharField(), "system_id": serializers.IntegerField(),
            "score": serializers.IntegerField(), "status": serializers.ChoiceField(["healthy", "warning",
                                                                                   "critical"]),
            "checks": serializers.ListField(child=serializers.DictField()),
            "rpo": serializers.DictField()})}))
    def get(self, request, pk: int):
        system = get_object_or_404(System, pk=pk)
        now = clock.now()
        return Response({"data": {**health_evaluate(system, now).as_dict(), "rpo": rpo_for(system, now).as_dict()}})


urlpatterns = [
    path("contacts", ContactListView.as_view(), name="contact-list"),
    path("contacts/<int:pk>", ContactDetailView.as_view(), name="contact-detail"),
    path("contacts/<int:pk>/verify", ContactVerifyView.as_view(), name="contact-verify"),
    path("checklists/today", ChecklistTodayView.as_view(), name="checklist-today"),
    path("checklists/evaluate", ChecklistEvaluateView.as_view(), name="checklist-evaluate"),
    path("checklists/items/<int:pk>/tick", ChecklistItemTickView.as_view(), name="checklist-item-tick"),
    path("checklists/items/<int:pk>/untick", ChecklistItemUntickView.as_view(), name="checklist-item-untick"),
    path("alerts", AlertListView.as_view(), name="alert-list"),
    path("alerts/<int:pk>", AlertDetailView.as_view(), name="alert-detail"),
    path("alerts/<int:pk>/acknowledge", AlertAcknowledgeView.as_view(), name="alert-acknowledge"),
    path("systems/<int:pk>/health", SystemHealthView.as_view(), name="system-health"),
    path("audit/verify", AuditVerifyView.as_view(), name="audit-verify"),
]
