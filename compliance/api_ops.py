"""``/api/v1/`` endpoints of day-to-day DR operations: the contact roster, today's checklist, alerts."""

from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from compliance.checklists import checklist_today
from compliance.contacts import contact_as_dict, contacts_roster
from compliance.models import Alert, Contact
from drpanel import clock
from drpanel.api import capability
from drpanel.permissions import Cap


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


class ContactListView(APIView):
    """The emergency roster in escalation order (L1, L2, L3, Emergency, Vendor), inactive contacts included."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="contacts_list",
                   responses=inline_serializer("ContactList", {"data": ContactSerializer(many=True)}))
    def get(self, request):
        today = clock.today()
        return Response({"data": [contact_as_dict(c, today) for c in contacts_roster()]})


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
    """Alerts, newest first (at most 200): ``?state=open|acknowledged|resolved`` (default: all)."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(
        operation_id="alerts_list",
        parameters=[OpenApiParameter("state", str, enum=list(Alert.State.values), required=False)],
        responses=inline_serializer("AlertList", {"data": AlertSerializer(many=True)}))
    def get(self, request):
        alerts = Alert.objects.select_related("acknowledged_by", "acknowledged_by_contact")
        state = request.query_params.get("state")
        if state is not None:  # "state=" is refused like any unknown state, not read as "all"
            if state not in Alert.State.values:
                return Response({"detail": f"state is one of {', '.join(Alert.State.values)}"}, status=400)
            alerts = alerts.filter(state=state)
        return Response({"data": [alert_as_dict(a) for a in alerts[:200]]})


urlpatterns = [
    path("contacts", ContactListView.as_view(), name="contact-list"),
    path("checklists/today", ChecklistTodayView.as_view(), name="checklist-today"),
    path("alerts", AlertListView.as_view(), name="alert-list"),
]
