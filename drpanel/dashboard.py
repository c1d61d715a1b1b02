"""What the dashboard shows, assembled from every app's records (read-only selectors).

Every figure comes with what proves it: the health checks with their evidence, the RPO with
the verified full it is measured from, each bar of a chart with the artifact (or drill) it
stands for. Where nothing has been measured yet the selectors return ``None`` or an empty
list and the page says so; they never fill a gap with a guess.

The top layer: it reads backups, restores and compliance (RPO and RTO come from
``compliance.measurements``, approvals from ``compliance.approval_kinds``); nothing below
imports it. ``drpanel.charts`` draws its charts.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.template.defaultfilters import filesizeformat
from django.urls import reverse

from backups.models import Artifact, BackupRun, System
from compliance.approval_kinds import approvals_waiting_for
from compliance.certifications import last_certification_status
from compliance.checklists import period_as_dict, period_bounds
from compliance.health import Health, health_evaluate
from compliance.measurements import (
    drill_rtos,
    last_incident_measure,
    last_rto,
    open_incidents,
    rpo_for,
    rpo_target_seconds,
    rto_target_seconds,
    worst_rpo,
)
from compliance.models import Alert, Cadence, ChecklistPeriod, Contact, HealthSnapshot
from drpanel import clock
from drpanel.charts import PALETTE, health_chart, rto_chart, sizes_chart
from drpanel.permissions import Cap, has_cap
from drpanel.templatetags.panel_time import format_at

HISTORY_DAYS = 30
ESCALATION = (Contact.Level.L1, Contact.Level.L2, Contact.Level.L3, Contact.Level.EMERGENCY)


# --- health -----------------------------------------------------------------------------------

def systems_health(now: datetime | None = None) -> list[Health]:
    """Every system's health right now, worst first (lowest score, then name)."""
    now = now or clock.now()
    healths = [health_evaluate(system, now) for system in System.objects.order_by("name")]
    return sorted(healths, key=lambda h: (h.score, h.system.name))


# --- work in progress and waiting for people ----------------------------------------------------

def running_jobs() -> list[BackupRun]:
    """Backup runs queued or running, oldest first, with their progress."""
    return list(BackupRun.objects.filter(state__in=[BackupRun.State.QUEUED, BackupRun.State.RUNNING])
                .select_related("system").order_by("created_at"))


def open_alerts(limit: int = 5) -> tuple[int, list[Alert]]:
    """How many alerts are unresolved, and the newest few."""
    alerts = Alert.objects.exclude(state=Alert.State.RESOLVED)
    return alerts.count(), list(alerts.order_by("-opened_at", "-pk")[:limit])


def checklists_today() -> list[dict]:
    """Today's daily checklist, this week's and this month's, as far as they are open (reads only)."""
    today = clock.today()
    periods = []
    for cadence in (Cadence.DAILY, Cadence.WEEKLY, Cadence.MONTHLY):
        start, _ = period_bounds(cadence, today)
        period = ChecklistPeriod.objects.filter(cadence=cadence, start=start).first()
        periods.append(period_as_dict(period, today) | {"url": reverse(
            "compliance:checklist-period-detail", args=[cadence, period.label])} if period else {
            "cadence": cadence, "label": None})
    return periods


def on_call() -> dict:
    """Who is on call (the first active L1 contact) and the escalation chain after them."""
    chain = []
    for level in ESCALATION:
        contacts = list(Contact.objects.active().filter(level=level).in_roster_order())
        targets = [c.response_minutes for c in contacts if c.response_minutes is not None]
        chain.append({"level": Contact.Level(level).label, "contacts": contacts,
                      "response_minutes": min(targets) if targets else None})
    first = chain[0]["contacts"][0] if chain[0]["contacts"] else None
    return {"first": first, "chain": chain}


# --- charts -----------------------------------------------------------------------------------

CHART_SLOTS = 240  # the health chart over 30 days: 3-hour slots
SIZE_SLOTS = 120  # the size charts: 6-hour slots, so thousands of WAL-like incrementals stay a readable page


def _slot_of(at: datetime, since: datetime, now: datetime, slots: int = CHART_SLOTS) -> int:
    span = (now - since).total_seconds() or 1
    return min(slots - 1, max(0, int((at - since).total_seconds() / span * slots)))


def downsample_scores(points: list[tuple], since: datetime, now: datetime) -> list[tuple]:
    """At most two points per slot when there are too many to draw: the slot's lowest score at its
    start (a dip is never smoothed away) and, when different, its last score at its end."""
    if len(points) <= CHART_SLOTS:
        return points
    slot = (now - since) / CHART_SLOTS
    slots: dict[int, list[int]] = {}
    for at, score in points:
        slots.setdefault(_slot_of(at, since, now), []).append(score)
    result: list[tuple] = []
    for index in sorted(slots):
        scores = slots[index]
        for at, score in ((since + slot * index, min(scores)), (since + slot * (index + 1), scores[-1])):
            if not result or result[-1][1] != score:
                result.append((min(at, now), score))
    return result


def health_series(systems: list[System], since: datetime, now: datetime) -> list[dict]:
    """Recorded scores per system since ``since`` (and the one in force then), changes only."""
    series = []
    for n, system in enumerate(systems):
        history = HealthSnapshot.objects.filter(system=system)
        before = history.filter(at__lt=since).order_by("-at", "-pk").values_list("at", "score").first()
        rows = ([before] if before else []) + list(
            history.filter(at__gte=since, at__lte=now).order_by("at", "pk").values_list("at", "score"))
        points = []
        for at, score in rows:
            if not points or points[-1][1] != score:
                points.append((max(at, since), score))
        series.append({"name": system.name, "color": PALETTE[n % len(PALETTE)],
                       "points": downsample_scores(points, since, now),
                       "url": reverse("drpanel:health-detail", args=[system.pk]),
                       "first_recorded": rows[0][0] if rows else None})
    return series


def size_bars(since: datetime, now: datetime, colors: dict[int, str]) -> dict[str, list[dict]]:
    """Per kind, the finished artifacts since ``since``: when, how big, a link to each.

    With more than one artifact of a system in a slot of the chart (WAL-like incrementals
    every few minutes), the slot shows the largest of them, linked, and says how many it stands for.
    """
    slots: dict[tuple, list] = {}
    rows = (Artifact.objects.filter(created_at__gte=since, created_at__lte=now).exclude(size=None)
            .exclude(status__in=[Artifact.Status.WRITING, Artifact.Status.FAILED]).order_by("created_at")
            .values_list("pk", "system_id", "system__name", "kind", "created_at", "size", "status"))
    for row in rows.iterator(chunk_size=2000):
        key = (row[3], row[1], _slot_of(row[4], since, now, SIZE_SLOTS))
        kept = slots.get(key)
        if kept is None:
            slots[key] = [row, 1]
        else:
            kept[1] += 1
            if row[5] > kept[0][5]:
                kept[0] = row
    base = reverse("backups:artifact-detail", args=["00000000-0000-0000-0000-000000000000"])
    bars: dict[str, list[dict]] = {}
    for (pk, system_id, name, kind, created_at, size, status), count in sorted(slots.values(), key=lambda v: v[0][4]):
        among = f" (the largest of {count} in its 6-hour slot)" if count > 1 else ""
        bars.setdefault(kind, []).append({
            "at": created_at, "value": size, "color": colors.get(system_id, PALETTE[0]),
            "url": base.replace("00000000-0000-0000-0000-000000000000", str(pk)),
            "label": f"{name} {kind} {str(pk)[:8]}, {format_at(created_at)}: {filesizeformat(size)} "
                     f"({status}){among}"})
    return {kind: bars[kind] for kind in Artifact.Kind.values if kind in bars}


# --- the whole page and the API ------------------------------------------------------------------

def dashboard_context(user) -> dict:
    """Everything the dashboard page shows, for ``user`` (approvals are per person)."""
    now = clock.now()
    since = now - timedelta(days=HISTORY_DAYS)
    healths = systems_health(now)
    systems = sorted((h.system for h in healths), key=lambda s: s.name)
    colors = {s.pk: PALETTE[n % len(PALETTE)] for n, s in enumerate(systems)}
    rpos = [rpo_for(h.system, now) for h in healths]
    series = health_series(systems, since, now)
    sizes = size_bars(since, now, colors)
    drills = drill_rtos(since)
    rto = last_rto()
    alert_count, alerts = open_alerts()
    return {
        "now": now,
        "since": since,
        "history_days": HISTORY_DAYS,
        "healths": healths,
        "worst": healths[0] if healths else None,
        "rpos": rpos,
        "rpo": worst_rpo(rpos),
        "continuous_rpos": sorted((r for r in rpos if r.system.continuous_enabled), key=lambda r: r.system.name),
        "rpo_target_minutes": settings.RPO_TARGET_MINUTES,
        "rto": rto,
        "rto_met": rto is not None and rto.seconds <= rto_target_seconds(),
        "rto_target_minutes": settings.RTO_TARGET_MINUTES,
        "health_series": series,
        "health_chart": health_chart(series, since, now) if healths else "",
        "size_charts": [{"kind": kind, "chart": sizes_chart(bars, since, now, title=f"{kind} backup sizes")}
                        for kind, bars in sizes.items()],
        "legend": [{"name": s.name, "color": colors[s.pk]} for s in systems],
        "rto_chart": rto_chart(drills, rto_target_seconds()) if drills else "",
        "jobs": running_jobs(),
        "approvals": approvals_waiting_for(user),
        "checklists": checklists_today(),
        "on_call": on_call(),
        "alert_count": alert_count,
        "alerts": alerts,
        "certification": last_certification_status(),
        "open_incidents": open_incidents(),
        "incident_measures": [last_incident_measure(drills=False), last_incident_measure(drills=True)],
        "can_declare": has_cap(user, Cap.TICK_CHECKLISTS),
    }


def _measure(measure):
    return measure.as_dict() if measure else None


def dashboard_json() -> dict:
    """``GET /api/v1/dashboard``: the worst system's health, RPO and RTO now, and every system's health.

    ``backup_health`` is null when no system is catalogued. ``rpo_seconds`` is the largest RPO
    among the systems, or null when any system has no verified full (its RPO is not known);
    ``rto_seconds`` is the last measured RTO, null until a restore has been timed.
    """
    now = clock.now()
    healths = systems_health(now)
    rpos = {h.system.pk: rpo_for(h.system, now) for h in healths}
    rpo = worst_rpo(list(rpos.values()))
    rto = last_rto()
    return {
        "backup_health": healths[0].as_dict() if healths else None,
        "rpo_seconds": rpo.seconds if rpo else None,
        "rpo_target_seconds": rpo_target_seconds(),
        "rpo": rpo.as_dict() if rpo else None,
        "rto_seconds": rto.seconds if rto else None,
        "rto_target_seconds": rto_target_seconds(),
        "rto": {"seconds": rto.seconds, "at": rto.at.isoformat(), "label": rto.label, "url": rto.url} if rto else None,
        "systems": [h.as_dict() | {"rpo_seconds": rpos[h.system.pk].seconds} for h in healths],
        "incidents": {"open": [str(i.pk) for i in open_incidents()],
                      "last_incident": _measure(last_incident_measure(drills=False)),
                      "last_drill": _measure(last_incident_measure(drills=True))},
        "computed_at": now.isoformat(),
    }
