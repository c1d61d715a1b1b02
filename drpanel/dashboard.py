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

from datetime import UTC, datetime, timedelta
from functools import lru_cache

from django.conf import settings
from django.db import connection
from django.urls import reverse

from backups.models import Artifact, BackupRun, System
from compliance.approval_kinds import approvals_waiting_for
from compliance.certifications import last_certification_status
from compliance.checklists import period_as_dict, period_bounds
from compliance.health import HEALTHY, Health
from compliance.health_many import health_facts, health_many, rpo_many
from compliance.measurements import (
    Rpo,
    drill_rtos,
    last_incident_measure,
    last_rto,
    open_incidents,
    rpo_target_seconds,
    rto_target_seconds,
    worst_rpo,
)
from compliance.models import Alert, Cadence, ChecklistPeriod, Contact, HealthSnapshot
from drpanel import clock
from drpanel.charts import PALETTE, health_chart, rto_chart, size_text, sizes_chart
from drpanel.permissions import Cap, has_cap
from drpanel.templatetags.panel_time import formatter

HISTORY_DAYS = 30
# Up to this many systems the page shows every system's check table; with more, only those of the systems that are
# not healthy, and one line for each healthy one (its checks, with their evidence, are on its health page): a
# hundred check tables were a third of the page's time and most of its length.
CHECK_TABLES_UP_TO = 6
ESCALATION = (Contact.Level.L1, Contact.Level.L2, Contact.Level.L3, Contact.Level.EMERGENCY)


# --- health -----------------------------------------------------------------------------------

def systems_health(now: datetime | None = None) -> tuple[list[Health], dict[int, Rpo]]:
    """Every system's health right now, worst first (lowest score, then name), and its RPO by system id.

    From facts loaded for every system at once (``compliance.health_many``): the query count does not
    grow with the number of systems.
    """
    systems = list(System.objects.order_by("name"))
    facts = health_facts(systems, now or clock.now())
    healths = health_many(systems, known=facts)
    return sorted(healths, key=lambda h: (h.score, h.system.name)), rpo_many(systems, facts)


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
HEALTH_SLOT = timedelta(hours=3)  # as compliance_healthslot (compliance/migrations/0011_health_slots.py)
SIZE_SLOT = timedelta(hours=6)  # as backups_artifactslot (backups/migrations/0008_artifact_slots.py): thousands
# of WAL-like incrementals stay a readable page
WIDE_GROUP = 4  # with more systems than colours, the health chart's slots are four of these: 12 hours
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # slots start at midnight UTC and every slot width after it


def slot_start(at: datetime, width: timedelta) -> datetime:
    """The start of the slot ``at`` falls in: fixed slots (not counted from the window's start), so the database
    keeps them up to date as rows are written and a page reads one row per slot."""
    return EPOCH + width * ((at - EPOCH) // width)


def _window(since: datetime, now: datetime, width: timedelta) -> dict:
    """Query parameters of a chart's window: its whole slots are read from the kept slots (``full_from`` to
    ``full_to``), its partial first and last slots from the rows themselves (``since`` to ``full_from``,
    ``full_to`` to ``now``)."""
    full_from = slot_start(since, width)
    if full_from < since:
        full_from += width
    full_to = max(slot_start(now, width), full_from)
    end = now + timedelta(microseconds=1)
    return {"since": since, "now": now, "full_from": full_from, "full_to": full_to, "width": width, "epoch": EPOCH,
            "head_end": min(full_from, end), "end": end}


def _slot_number(at: datetime, width: timedelta = HEALTH_SLOT) -> int:
    """Which slot ``at`` falls in, counted from ``EPOCH``."""
    return (at - EPOCH) // width


def downsample_scores(points: list[tuple], since: datetime, now: datetime, width: timedelta = HEALTH_SLOT
                      ) -> list[tuple]:
    """At most two points per slot of ``width`` when there are too many to draw: the slot's lowest score at its
    start (a dip is never smoothed away) and, when different, its last score at its end. From every row: what
    ``health_series`` draws from the slots the database keeps."""
    if len(points) <= CHART_SLOTS:
        return points
    slots: dict[int, list[int]] = {}
    for at, score in points:
        slots.setdefault(_slot_number(at, width), []).append(score)
    return slot_points([(number, min(scores), scores[-1]) for number, scores in sorted(slots.items())], since, now,
                       width)


def slot_points(slots: list[tuple[int, int, int]], since: datetime, now: datetime, width: timedelta = HEALTH_SLOT
                ) -> list[tuple]:
    """The points drawn for ``(slot number, lowest score, last score)`` in slot order: the lowest at the slot's
    start and the last at its end (within the window), each only where the score changes."""
    result: list[tuple] = []
    for number, lowest, last in slots:
        if not result or result[-1][1] != lowest:
            result.append((max(_slot_edge(number, width), since), lowest))
        if result[-1][1] != last:
            result.append((min(_slot_edge(number + 1, width), now), last))
    return result


@lru_cache(maxsize=4096)
def _slot_edge(number: int, width: timedelta) -> datetime:
    """Where slot ``number`` of ``width`` starts: a hundred systems' lines share the same few hundred slots."""
    return EPOCH + width * number


# Per system, the recorded scores of the window by slot (its number from EPOCH, count, lowest, last; the time of
# the first one for the system's first slot only: numbers rather than times, so thousands of rows are not converted
# to times one by one): whole slots from compliance_healthslot, which triggers keep as snapshots are written; the
# partial first and last slots of the window from the snapshots (the index on (system, at) that includes the score
# answers them without reading the table); and the score in force before the window (slot NULL, one index probe
# per system).
HEALTH_SLOTS_SQL = """
    SELECT system_id, number, count, lowest, last,
           CASE WHEN number = min(number) OVER (PARTITION BY system_id) THEN first_at END
    FROM (SELECT system_id, floor(number / %(group)s)::bigint AS number, sum(count)::bigint AS count,
                 min(lowest) AS lowest, (array_agg(last ORDER BY number DESC))[1] AS last, min(first_at) AS first_at
    FROM (SELECT system_id, (extract(epoch FROM slot) / %(width_seconds)s)::bigint AS number, count, lowest, last,
                 first_at
          FROM compliance_healthslot
          WHERE slot >= %(full_from)s AND slot < %(full_to)s AND system_id = ANY(%(systems)s)
          UNION ALL
          SELECT s.id, p.* FROM unnest(%(systems)s::bigint[]) AS s(id)
          CROSS JOIN (VALUES (%(since)s::timestamptz, %(head_end)s::timestamptz), (%(full_to)s, %(end)s))
              AS r(low, high)
          CROSS JOIN LATERAL (SELECT floor(extract(epoch FROM at) / %(width_seconds)s)::bigint, count(*),
                                     min(score), (array_agg(score ORDER BY at DESC, id DESC))[1], min(at)
                              FROM compliance_healthsnapshot WHERE system_id = s.id AND at >= r.low AND at < r.high
                              GROUP BY 1) AS p) AS kept GROUP BY 1, 2) AS slots
    UNION ALL
    SELECT s.id, NULL, 1, b.score, b.score, b.at FROM unnest(%(systems)s::bigint[]) AS s(id)
    CROSS JOIN LATERAL (SELECT at, score FROM compliance_healthsnapshot
                        WHERE system_id = s.id AND at < %(since)s ORDER BY at DESC, id DESC LIMIT 1) AS b
"""


def health_series(systems: list[System], since: datetime, now: datetime) -> list[dict]:
    """Recorded scores per system since ``since`` (and the one in force then), changes only.

    By 3-hour slot (one query for every system, reading the slots the database keeps), by 12-hour slot with more
    systems than the chart has colours (their lines can no longer be told apart: a quarter of the points, each
    slot's dip still drawn); a system with no more recorded scores than the chart has slots has its scores read
    one by one (a second query), so a quiet history keeps the exact time of each change.
    """
    group = 1 if len(systems) <= len(PALETTE) else WIDE_GROUP
    width = HEALTH_SLOT * group
    params = _window(since, now, HEALTH_SLOT) | {"systems": [s.pk for s in systems], "group": group,
                                                 "width_seconds": HEALTH_SLOT.total_seconds()}
    slots: dict[int, list] = {s.pk: [] for s in systems}
    before: dict[int, tuple] = {}
    with connection.cursor() as cursor:
        cursor.execute(HEALTH_SLOTS_SQL, params)
        for system_id, number, count, lowest, last, first in cursor.fetchall():
            if number is None:
                before[system_id] = (first, last)
            else:
                slots[system_id].append((number, count, lowest, last, first))
    exact = [pk for pk, rows in slots.items() if sum(r[1] for r in rows) + (pk in before) <= CHART_SLOTS]
    rows_of: dict[int, list] = {pk: [] for pk in exact}
    for system_id, at, score in (HealthSnapshot.objects.filter(system_id__in=exact, at__gte=since, at__lte=now)
                                 .order_by("system_id", "at", "pk").values_list("system_id", "at", "score")):
        rows_of[system_id].append((at, score))
    first_slot = _slot_number(since, width)
    series = []
    for n, system in enumerate(systems):
        first = before.get(system.pk)
        window = sorted(slots[system.pk])
        if system.pk in rows_of:
            points = []
            for at, score in ([first] if first else []) + rows_of[system.pk]:
                if not points or points[-1][1] != score:
                    points.append((max(at, since), score))
        else:
            if first:  # the score in force at ``since`` belongs to the first slot
                head = window[0] if window and window[0][0] == first_slot else None
                window = [(first_slot, 1, min(first[1], head[2]) if head else first[1], head[3] if head else first[1],
                           since), *window[1 if head else 0:]]
            points = slot_points([(number, lowest, last) for number, _, lowest, last, _ in window], since, now, width)
        first_recorded = first[0] if first else (window[0][4] if window else None)
        series.append({"name": system.name, "color": PALETTE[n % len(PALETTE)], "points": points,
                       "url": reverse("drpanel:health-detail", args=[system.pk]), "first_recorded": first_recorded})
    return series


# Per kind, system and 6-hour slot of the size charts: the largest finished artifact (the earliest of equals) and
# how many the slot holds. Whole slots from backups_artifactslot, which triggers keep as artifacts are written;
# the partial first and last slots of the window from the artifacts (the (system, kind, created_at) index that
# includes the size, the status and the id answers them without reading the table). Then, when the systems are
# merged, the largest of those per kind and slot.
SIZE_SLOTS_SQL = """
    WITH per_system AS (
        SELECT slot, system_id, kind, count AS n, artifact_id AS id, size, created_at, status
        FROM backups_artifactslot WHERE slot >= %(full_from)s AND slot < %(full_to)s
        UNION ALL
        SELECT * FROM (
            SELECT DISTINCT ON (slot, system_id, kind) slot, system_id, kind, count(*) OVER edge, id, size,
                   created_at, status
            FROM (SELECT date_bin(%(width)s, a.created_at, %(epoch)s) AS slot, a.*
                  FROM backups_system s CROSS JOIN unnest(%(kinds)s::text[]) AS k(kind)
                  CROSS JOIN (VALUES (%(since)s::timestamptz, %(head_end)s::timestamptz), (%(full_to)s, %(end)s))
                      AS r(low, high)
                  JOIN backups_artifact a ON a.system_id = s.id AND a.kind = k.kind AND a.created_at >= r.low
                                         AND a.created_at < r.high
                  WHERE a.size IS NOT NULL AND a.status <> ALL(%(unfinished)s)) AS e
            WINDOW edge AS (PARTITION BY slot, system_id, kind)
            ORDER BY slot, system_id, kind, size DESC, created_at, id) AS edges
    ), chosen AS (
        SELECT *, row_number() OVER bar AS b, sum(n) OVER bar AS total FROM per_system
        WINDOW bar AS (PARTITION BY kind, slot, CASE WHEN %(merged)s THEN 0 ELSE system_id END
                       ORDER BY size DESC, created_at, id ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    )
    SELECT c.id, c.system_id, s.name, c.kind, c.created_at, c.size, c.status, c.total
    FROM chosen c JOIN backups_system s ON s.id = c.system_id WHERE c.b = 1 ORDER BY c.created_at, c.id
"""


def size_bars(since: datetime, now: datetime, colors: dict[int, str]) -> dict[str, list[dict]]:
    """Per kind, the finished artifacts since ``since``: when, how big, a link to each.

    With more than one artifact of a system in a 6-hour slot of the chart (WAL-like incrementals
    every few minutes), the slot shows the largest of them, linked, and says how many it stands for.
    With more systems than the palette has colours (``colors``: one per system), their bars could no
    longer be told apart: a slot then shows the largest artifact of every system, so the charts stay
    a few hundred bars whatever the number of systems. The database picks them (one query, from the slots it keeps).
    """
    merged = len(colors) > len(PALETTE)
    params = _window(since, now, SIZE_SLOT) | {
        "unfinished": [Artifact.Status.WRITING, Artifact.Status.FAILED], "merged": merged,
        "kinds": list(Artifact.Kind.values)}
    with connection.cursor() as cursor:
        cursor.execute(SIZE_SLOTS_SQL, params)
        rows = cursor.fetchall()
    at_text = formatter()
    base = reverse("backups:artifact-detail", args=["00000000-0000-0000-0000-000000000000"])
    bars: dict[str, list[dict]] = {}
    every = ", of all systems," if merged else ""
    for pk, system_id, name, kind, created_at, size, status, count in rows:
        among = f" (the largest of {count}{every} in its 6-hour slot)" if count > 1 else ""
        bars.setdefault(kind, []).append({
            "at": created_at, "value": size, "color": colors.get(system_id, PALETTE[0]),
            "url": base.replace("00000000-0000-0000-0000-000000000000", str(pk)),
            "label": f"{name} {kind} {str(pk)[:8]}, {at_text(created_at)}: {size_text(size)} "
                     f"({status}){among}"})
    return {kind: bars[kind] for kind in Artifact.Kind.values if kind in bars}


# --- the whole page and the API ------------------------------------------------------------------

def dashboard_context(user) -> dict:
    """Everything the dashboard page shows, for ``user`` (approvals are per person)."""
    now = clock.now()
    since = now - timedelta(days=HISTORY_DAYS)
    healths, rpo_of = systems_health(now)
    systems = sorted((h.system for h in healths), key=lambda s: s.name)
    colors = {s.pk: PALETTE[n % len(PALETTE)] for n, s in enumerate(systems)}
    rpos = [rpo_of[h.system.pk] for h in healths]
    series = health_series(systems, since, now)
    sizes = size_bars(since, now, colors)
    drills = drill_rtos(since)
    rto = last_rto()
    alert_count, alerts = open_alerts()
    fold = len(healths) > CHECK_TABLES_UP_TO
    return {
        "now": now,
        "since": since,
        "history_days": HISTORY_DAYS,
        "healths": healths,
        "check_tables": [h for h in healths if h.status != HEALTHY] if fold else healths,
        "folded": [h for h in healths if h.status == HEALTHY] if fold else [],
        "check_tables_up_to": CHECK_TABLES_UP_TO,
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
    healths, rpos = systems_health(now)
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
