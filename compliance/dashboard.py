"""What the dashboard shows, assembled from the panel's own records (read-only selectors).

Every figure comes with what proves it: the health checks with their evidence, the RPO with
the verified full it is measured from, each bar of a chart with the artifact (or drill) it
stands for. Where nothing has been measured yet the selectors return ``None`` or an empty
list and the page says so; they never fill a gap with a guess.

``last_rto()`` and ``drill_rtos()`` read the restore runs' measured RTOs (request → healthy),
each linked to its run; ``APPROVAL_KINDS`` lists artifact deletions and production restores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone

from backups.hooks import VERIFICATION_LEVELS
from backups.models import Artifact, BackupRun, System
from compliance.charts import PALETTE, health_chart, rto_chart, sizes_chart
from compliance.checklists import period_as_dict, period_bounds
from compliance.evaluators import Evidence
from compliance.health import VERIFIED_LEVEL, Health, artifact_evidence, format_age, health_evaluate
from compliance.models import Alert, Cadence, ChecklistPeriod, Contact, HealthSnapshot
from drpanel import clock
from drpanel.models import Approval

HISTORY_DAYS = 30
ESCALATION = (Contact.Level.L1, Contact.Level.L2, Contact.Level.L3, Contact.Level.EMERGENCY)


# --- health -----------------------------------------------------------------------------------

def systems_health(now: datetime | None = None) -> list[Health]:
    """Every system's health right now, worst first (lowest score, then name)."""
    now = now or clock.now()
    healths = [health_evaluate(system, now) for system in System.objects.order_by("name")]
    return sorted(healths, key=lambda h: (h.score, h.system.name))


# --- RPO and RTO --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rpo:
    """RPO now: the age of the newest full verified at decrypt level or better, against the target."""

    system: System
    artifact: Artifact | None
    seconds: int | None
    target_seconds: int

    @property
    def measured(self) -> bool:
        return self.seconds is not None

    @property
    def met(self) -> bool | None:
        return None if self.seconds is None else self.seconds <= self.target_seconds

    @property
    def age(self) -> str:
        return format_age(timedelta(seconds=self.seconds)) if self.seconds is not None else ""

    @property
    def evidence(self) -> Evidence | None:
        if self.artifact is None:
            return None
        return artifact_evidence(self.artifact, f"full {self.artifact.short_id} of "
                                                f"{self.artifact.created_at:%Y-%m-%d %H:%M} UTC, verified "
                                                f"{self.artifact.last_verified_level}")

    def as_dict(self) -> dict:
        return {"system": self.system.name, "seconds": self.seconds, "target_seconds": self.target_seconds,
                "met": self.met, "artifact": str(self.artifact.pk) if self.artifact else None,
                "evidence": self.evidence.as_dict() if self.evidence else None}


def rpo_target_seconds() -> int:
    return settings.RPO_TARGET_MINUTES * 60


def rto_target_seconds() -> int:
    return settings.RTO_TARGET_MINUTES * 60


def verified_levels() -> list[str]:
    """``decrypt`` and every level above it."""
    return list(VERIFICATION_LEVELS[VERIFICATION_LEVELS.index(VERIFIED_LEVEL):])


def rpo_for(system: System, now: datetime | None = None) -> Rpo:
    """The age of ``system``'s newest available full verified at decrypt level or better (None: none is)."""
    now = now or clock.now()
    artifact = (Artifact.objects.filter(system=system, kind=Artifact.Kind.FULL, status=Artifact.Status.AVAILABLE,
                                        created_at__lte=now, last_verified_level__in=verified_levels())
                .defer("manifest").order_by("-created_at").first())
    seconds = int((now - artifact.created_at).total_seconds()) if artifact else None
    return Rpo(system=system, artifact=artifact, seconds=seconds, target_seconds=rpo_target_seconds())


def worst_rpo(rpos: list[Rpo]) -> Rpo | None:
    """The RPO to show: an unmeasured system first (its data is not known to be recoverable), else the oldest."""
    if not rpos:
        return None
    unmeasured = [r for r in rpos if not r.measured]
    if unmeasured:
        return unmeasured[0]
    return max(rpos, key=lambda r: r.seconds)


@dataclass(frozen=True)
class Drill:
    """One timed restore (a drill): when, its measured RTO, and where its evidence is."""

    at: datetime
    seconds: int
    label: str
    url: str


def _timed_runs():
    """Restore runs whose RTO was measured (request → healthy): succeeded, or rolled back after going live."""
    from django.db.models import Q

    from restores.models import RestoreRun

    return (RestoreRun.objects.filter(rto_seconds__isnull=False, healthy_at__isnull=False)
            .filter(Q(state=RestoreRun.State.SUCCEEDED) | Q(state=RestoreRun.State.ROLLED_BACK))
            .select_related("target", "artifact__system"))


def drill_filter():
    """Which restore runs are drills: marked as one, or into a staging or scratch target."""
    from django.db.models import Q

    from restores.models import Target

    return Q(is_drill=True) | Q(target__environment__in=[Target.Environment.STAGING, Target.Environment.SCRATCH])


def _as_drill(run) -> Drill:
    kind = "drill" if run.is_drill or not run.target.is_production else "restore"
    return Drill(at=run.healthy_at, seconds=round(run.rto_seconds),
                 label=f"{kind} {run.short_id} of {run.artifact.system.name} into {run.target.name} "
                       f"({run.target.environment})",
                 url=reverse("restores:run-detail", args=[run.pk]))


def last_rto() -> Drill | None:
    """The newest measured RTO: the restore run (drill or production restore) that went live last."""
    run = _timed_runs().order_by("-healthy_at").first()
    return _as_drill(run) if run else None


def drill_rtos(since: datetime) -> list[Drill]:
    """Measured RTOs of the drills that went live since ``since``, oldest first."""
    runs = _timed_runs().filter(drill_filter(), healthy_at__gte=since).order_by("healthy_at")
    return [_as_drill(run) for run in runs]


# --- work in progress and waiting for people ----------------------------------------------------

def running_jobs() -> list[BackupRun]:
    """Backup runs queued or running, oldest first, with their progress."""
    return list(BackupRun.objects.filter(state__in=[BackupRun.State.QUEUED, BackupRun.State.RUNNING])
                .select_related("system").order_by("created_at"))


def _may_delete(user, approval: Approval) -> bool:
    from backups.deletion import may_approve_deletion

    return may_approve_deletion(user)


@dataclass(frozen=True)
class ApprovalKind:
    """Who may decide an approval of a kind, where it is decided, and how to name it."""

    may_decide: Callable
    url: Callable
    label: str


def _may_approve_restore(user, approval: Approval) -> bool:
    """A production restore: ``approve_restore`` on the run's target (own requests are excluded already)."""
    from drpanel.permissions import has_object_right
    from restores.models import APPROVE_RESTORE, RestoreRun

    run = RestoreRun.objects.filter(pk=approval.object_id).select_related("target").first()
    return run is not None and run.requested_by_id != user.pk and has_object_right(user, APPROVE_RESTORE, run.target)


APPROVAL_KINDS: dict[str, ApprovalKind] = {
    "artifact.delete": ApprovalKind(
        may_decide=_may_delete, label="Delete artifact",
        url=lambda approval: reverse("backups:artifact-detail", args=[approval.object_id])),
    "restore.production": ApprovalKind(
        may_decide=_may_approve_restore, label="Restore into production",
        url=lambda approval: reverse("restores:run-detail", args=[approval.object_id])),
}


def approvals_waiting_for(user) -> list[dict]:
    """Pending, unexpired approvals that ``user`` may decide (never their own requests)."""
    pending = (Approval.objects.filter(state=Approval.State.PENDING, expires_at__gt=timezone.now(),
                                       kind__in=list(APPROVAL_KINDS))
               .exclude(requested_by=user).select_related("requested_by").order_by("expires_at"))
    waiting = []
    for approval in pending:
        kind = APPROVAL_KINDS[approval.kind]
        if kind.may_decide(user, approval):
            waiting.append({"approval": approval, "label": kind.label, "url": kind.url(approval),
                            "requested_by": approval.requested_by.get_username()})
    return waiting


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
                       "url": reverse("compliance:health-detail", args=[system.pk]),
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
            "label": f"{name} {kind} {str(pk)[:8]}, {created_at:%Y-%m-%d %H:%M} UTC: {filesizeformat(size)} "
                     f"({status}){among}"})
    return {kind: bars[kind] for kind in Artifact.Kind.values if kind in bars}


# --- the whole page and the API ------------------------------------------------------------------

def dashboard_context(user) -> dict:
    """Everything the dashboard page shows, for ``user`` (approvals are per person)."""
    from compliance.certifications import last_certification_status

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
    }


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
        "computed_at": now.isoformat(),
    }
