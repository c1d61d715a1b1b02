"""Pages of the alerts: the list, one alert with its notifications, acknowledging (button and link)."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from compliance.alerts import (
    AckLinkError,
    AlertStateError,
    alert_acknowledge,
    alert_acknowledge_by_link,
    can_acknowledge,
    notification_for_token,
)
from compliance.models import Alert, Contact
from drpanel.permissions import Cap, capability_required

STATE_FILTERS = ("open", "acknowledged", "resolved", "all")


@capability_required(Cap.VIEW_PANEL)
@require_GET
def alert_list(request):
    state = request.GET.get("state", "open")
    if state not in STATE_FILTERS:
        state = "open"
    alerts = Alert.objects.select_related("acknowledged_by", "acknowledged_by_contact")
    if state != "all":
        alerts = alerts.filter(state=state)
    counts = {s: Alert.objects.filter(state=s).count() for s in Alert.State.values}
    return render(request, "compliance/alert_list.html", {
        "alerts": alerts[:200], "state": state, "filters": STATE_FILTERS, "counts": counts,
        "can_acknowledge": can_acknowledge(request.user),
    })


@capability_required(Cap.VIEW_PANEL)
@require_GET
def alert_detail(request, pk: int):
    alert = get_object_or_404(Alert.objects.select_related("acknowledged_by", "acknowledged_by_contact"), pk=pk)
    return render(request, "compliance/alert_detail.html", {
        "alert": alert,
        "notifications": alert.notifications.select_related("contact").order_by("created_at", "pk"),
        "can_acknowledge": can_acknowledge(request.user),
        "levels": dict(Contact.Level.choices),
    })


@capability_required(Cap.VIEW_PANEL)
@require_POST
def alert_acknowledge_view(request, pk: int):
    alert = get_object_or_404(Alert, pk=pk)
    try:
        alert_acknowledge(actor=request.user, alert=alert)
    except AlertStateError as exc:
        messages.info(request, str(exc))
    else:
        messages.success(request, "Acknowledged: the escalation has stopped.")
    return redirect("compliance:alert-detail", pk=pk)


@never_cache
@require_http_methods(["GET", "POST"])
def alert_ack_link(request, token: str):
    """The link in an alert mail. GET only shows a button (mail scanners follow links); POST acknowledges."""
    if request.method == "POST":
        try:
            alert = alert_acknowledge_by_link(token=token)
        except AckLinkError as exc:
            return render(request, "compliance/alert_ack.html", {"error": str(exc)}, status=409)
        return render(request, "compliance/alert_ack.html", {"done": True, "alert": alert,
                                                              "contact": alert.acknowledged_by_contact})
    try:
        notification = notification_for_token(token)
    except AckLinkError as exc:
        return render(request, "compliance/alert_ack.html", {"error": str(exc)}, status=400)
    alert = notification.alert
    error = None
    if alert.state != Alert.State.OPEN:
        error = f"This alert is already {alert.state}; nothing more to do."
    elif notification.ack_used_at:
        error = "This link was already used."
    return render(request, "compliance/alert_ack.html", {
        "alert": alert, "contact": notification.contact, "level": notification.get_level_display(),
        "error": error}, status=409 if error else 200)
