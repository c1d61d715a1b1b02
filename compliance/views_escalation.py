"""Acknowledging an incident: the button on the incident page, and the link in the called contacts' messages."""

import uuid

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from compliance.escalation import (
    AckLinkError,
    EscalationError,
    call_for_token,
    incident_acknowledge,
    incident_acknowledge_by_link,
)
from drpanel.permissions import Cap, capability_required
from restores.models import Incident


@capability_required(Cap.VIEW_PANEL)
@require_POST
def incident_acknowledge_view(request, pk: uuid.UUID):
    incident = Incident.objects.filter(pk=pk).first()
    if incident is None:
        raise Http404("No such incident.")
    try:
        incident_acknowledge(actor=request.user, incident=incident, request=request)
    except EscalationError as exc:
        messages.info(request, str(exc))
    else:
        messages.success(request, "Acknowledged: the escalation has stopped.")
    return redirect("restores:incident-detail", pk)


@never_cache
@require_http_methods(["GET", "POST"])
def incident_ack_link(request, token: str):
    """The link in an incident message. GET only shows a button (mail scanners follow links); POST acknowledges."""
    if request.method == "POST":
        try:
            call = incident_acknowledge_by_link(token=token, request=request)
        except AckLinkError as exc:
            return render(request, "compliance/incident_ack.html", {"error": str(exc)}, status=409)
        escalation = call.escalation
        return render(request, "compliance/incident_ack.html", {
            "done": True, "call": call, "incident": escalation.incident,
            "stopped": escalation.acknowledged_by_contact_id == call.contact_id
            and escalation.acknowledged_at == call.acknowledged_at})
    try:
        call = call_for_token(token)
    except AckLinkError as exc:
        return render(request, "compliance/incident_ack.html", {"error": str(exc)}, status=400)
    return render(request, "compliance/incident_ack.html", {"call": call, "incident": call.escalation.incident})
