"""``POST /api/v1/incidents/{id}/acknowledge``: the incident page's button, with the same rights and audit events.

Answers 200 with the escalation (who was called, when they acknowledged), 403 for auditors and
outsiders (audited by the exception handler), 404 for an unknown incident, 409 when there is
nothing to acknowledge or it already was.
"""

from django.urls import path
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from compliance.escalation import EscalationError, escalation_report, incident_acknowledge
from compliance.models import IncidentEscalation
from drpanel.api import capability
from drpanel.permissions import Cap
from drpanel.schema import error_response
from restores.models import Incident


class IncidentAcknowledgeView(APIView):
    """Acknowledge an incident: its escalation through the roster stops."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="incidents_acknowledge", request=None, responses={
        200: inline_serializer("IncidentAcknowledged", {"notifications": serializers.JSONField()}),
        404: error_response(404), 409: error_response(409)})
    def post(self, request, pk):
        incident = Incident.objects.select_related("system").filter(pk=pk).first()
        if incident is None:
            return Response({"detail": "No such incident.", "errors": {}}, status=status.HTTP_404_NOT_FOUND)
        try:
            incident_acknowledge(actor=request.user, incident=incident, via=IncidentEscalation.Via.API,
                                 request=request)
        except EscalationError as exc:
            return Response({"detail": str(exc), "errors": {}}, status=status.HTTP_409_CONFLICT)
        return Response({"notifications": escalation_report(incident)})


urlpatterns = [
    path("incidents/<uuid:pk>/acknowledge", IncidentAcknowledgeView.as_view(), name="incident-acknowledge"),
]
