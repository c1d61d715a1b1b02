"""Plain helpers of the notification tests (the fixtures are in ``tests.notify_support``)."""

import socket

from compliance.models import Delivery


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def send_due() -> int:
    """Send every due delivery now, in this process, as the worker's job would; returns how many were tried."""
    from compliance.notifications import delivery_send
    from drpanel import clock

    due = list(Delivery.objects.filter(status__in=["pending", "retrying"], next_attempt_at__lte=clock.now())
               .order_by("created_at").values_list("pk", flat=True))
    for pk in due:
        delivery_send(pk)
    return len(due)
