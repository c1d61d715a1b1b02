"""The notifications page (contacts area): channels per contact and per level, and recent deliveries."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from compliance.forms import ChannelForm
from compliance.models import NotificationChannel
from compliance.notifications import (
    EVENTS,
    channel_create,
    channel_set_active,
    channel_test,
    deliveries_recent,
)
from drpanel.permissions import Cap, capability_required, has_cap, require_cap

RECENT = 100


def _page(request, form, status=200):
    return render(request, "compliance/notification_list.html", {
        "form": form, "can_edit": has_cap(request.user, Cap.EDIT_CONTACTS), "events": EVENTS,
        "channels": NotificationChannel.objects.select_related("contact").order_by("level", "contact__name", "pk"),
        "deliveries": deliveries_recent(RECENT), "recent": RECENT,
    }, status=status)


@capability_required(Cap.VIEW_PANEL)
@require_http_methods(["GET", "POST"])
def notification_list(request):
    if request.method == "GET":
        return _page(request, ChannelForm())
    require_cap(request.user, Cap.EDIT_CONTACTS, action="notification_channel.create")
    form = ChannelForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            channel = channel_create(actor=request.user, kind=data["kind"], contact=data["contact"],
                                     level=data["level"], label=data["label"], address=data["address"],
                                     url_ref=data["url_ref"], events=list(data["events"]))
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"{channel} added.")
            return redirect("compliance:notification-list")
    return _page(request, form, status=400)


@capability_required(Cap.EDIT_CONTACTS)
@require_POST
def channel_active_view(request, pk: int):
    channel = get_object_or_404(NotificationChannel, pk=pk)
    channel = channel_set_active(actor=request.user, channel=channel, active=request.POST.get("active") == "1")
    messages.success(request, f"{channel} switched {'on' if channel.active else 'off'}.")
    return redirect("compliance:notification-list")


@capability_required(Cap.EDIT_CONTACTS)
@require_POST
def channel_test_view(request, pk: int):
    channel = get_object_or_404(NotificationChannel, pk=pk, active=True)
    channel_test(actor=request.user, channel=channel)
    messages.success(request, f"A test message to {channel} is queued; its delivery shows below.")
    return redirect("compliance:notification-list")


