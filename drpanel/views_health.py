"""The health page of one system: its checks now, with evidence, its RPO, and its recorded history.

A page that gathers (the health score, the RPO measured from backups, the history chart),
so it sits beside the dashboard, whose chart and series it shares.
"""

from datetime import timedelta

from django.conf import settings
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from backups.models import System
from compliance.health import health_evaluate
from compliance.measurements import last_incident_measure, rpo_for
from compliance.models import HealthSnapshot
from drpanel import clock
from drpanel.charts import PALETTE, health_chart
from drpanel.dashboard import HISTORY_DAYS, health_series
from drpanel.permissions import Cap, capability_required

HISTORY_ROWS = 200


@capability_required(Cap.VIEW_PANEL)
@require_GET
def health_detail(request, pk: int):
    system = get_object_or_404(System, pk=pk)
    now = clock.now()
    since = now - timedelta(days=HISTORY_DAYS)
    series = health_series([system], since, now)
    series[0]["color"] = PALETTE[0]
    history = list(HealthSnapshot.objects.filter(system=system).order_by("-at", "-pk")[:HISTORY_ROWS])
    for row in history:
        row.failing = [c for c in row.checks if c.get("enabled") and not c.get("passed")]
    return render(request, "drpanel/health_detail.html", {
        "system": system, "health": health_evaluate(system, now), "rpo": rpo_for(system, now),
        "incident_measures": [m for m in (last_incident_measure(drills=False, system=system),
                                          last_incident_measure(drills=True, system=system)) if m],
        "chart": health_chart(series, since, now), "history": history, "history_rows": HISTORY_ROWS,
        "recorded": HealthSnapshot.objects.filter(system=system).count(), "history_days": HISTORY_DAYS,
        "rpo_target_minutes": settings.RPO_TARGET_MINUTES,
    })
