"""The health and RPO of many systems at once, in a fixed number of queries (the dashboard, ``/metrics``).

``compliance.health.health_evaluate`` reads one system's facts with its own queries (about eight),
which is right for its page and its recompute, but a page of a hundred systems would run eight
hundred. Here the same facts are loaded for every system together (``health_facts``: the newest
artifact of each kind and the newest verified database backup per system through one lateral
join, then the off-site copies of the newest fulls, whether an off-site location is enabled, the
verification runs behind the marks, and the WAL stream's state), and each system's checks are
built by the same functions from them (``compliance.health.health_from``, ``measurements.rpo_from``),
so both paths agree by construction; a test holds them to it.

Left per system: the off-site coverage of continuously protected systems, which reads what each
off-site location holds (``restores.offsite_recovery.offsite_coverage``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from backups.continuous import seconds_since, wal_stream_verdict
from backups.models import Artifact, ContinuousState, System, WalTimeline
from compliance.health import Health, health_from, newest_database_backup, offsite_copies, offsite_enabled
from compliance.measurements import Rpo, rpo_from, verified_levels
from drpanel import clock
from restores.models import VerificationRun

# What the lateral join looks up per system: (kind, whether it must be verified at decrypt level or better).
WANTED = tuple((kind, False) for kind in Artifact.Kind.values) + ((Artifact.Kind.FULL, True),
                                                                  (Artifact.Kind.BASE, True))


@dataclass
class HealthFacts:
    """What the checks and the RPO of a set of systems read, loaded for all of them at once."""

    now: datetime
    newest: dict[int, dict[str, Artifact | None]] = field(default_factory=dict)  # system → kind → artifact
    verified: dict[int, Artifact | None] = field(default_factory=dict)  # system → newest verified database backup
    copies: dict = field(default_factory=dict)  # newest full's id → its off-site copies
    any_offsite: bool = False
    runs: dict = field(default_factory=dict)  # artifact id → the verification run that set its mark
    last_wal_at: dict[int, datetime | None] = field(default_factory=dict)
    gaps: dict[int, WalTimeline] = field(default_factory=dict)  # system → its first timeline with a gap


def _newest_rows(system_ids: list[int], now: datetime) -> list[Artifact]:
    """Per system and wanted (kind, verified): the newest available artifact created no later than ``now``.

    A lateral join so that each lookup walks the (system, kind, created_at) index backwards and stops at
    its first row, as ``newest_artifact`` does, however many artifacts there are.
    """
    columns = ", ".join(f"a.{f.column}" for f in Artifact._meta.concrete_fields if f.name != "manifest")
    wanted = ", ".join(["(%s, %s)"] * len(WANTED))
    sql = (f"SELECT w.kind AS wanted_kind, w.verified AS wanted_verified, {columns} "  # noqa: S608 - fixed columns
           "FROM unnest(%s::bigint[]) AS s(id) "
           f"CROSS JOIN (VALUES {wanted}) AS w(kind, verified) "
           "CROSS JOIN LATERAL (SELECT * FROM backups_artifact x WHERE x.system_id = s.id AND x.kind = w.kind "
           "AND x.status = %s AND x.created_at <= %s AND (NOT w.verified OR x.last_verified_level = ANY(%s)) "
           "ORDER BY x.created_at DESC LIMIT 1) AS a")
    params = [system_ids, *[value for pair in WANTED for value in pair], Artifact.Status.AVAILABLE, now,
              verified_levels()]
    return list(Artifact.objects.raw(sql, params))


def health_facts(systems: list[System], now: datetime | None = None) -> HealthFacts:
    """Every fact the checks and the RPO of ``systems`` read, in at most eight queries whatever their number."""
    facts = HealthFacts(now=now or clock.now())
    ids = [s.pk for s in systems]
    facts.newest = {pk: dict.fromkeys(Artifact.Kind.values) for pk in ids}
    facts.verified = dict.fromkeys(ids)
    for row in _newest_rows(ids, facts.now) if ids else ():
        if row.wanted_verified:
            kept = facts.verified[row.system_id]
            if kept is None or row.created_at > kept.created_at:
                facts.verified[row.system_id] = row
        else:
            facts.newest[row.system_id][row.wanted_kind] = row
    by_pk = {s.pk: s for s in systems}
    for pk, newest in facts.newest.items():
        for kind in newest:  # the per-system path looks only for what the policy schedules
            if by_pk[pk].interval(kind) is None:
                newest[kind] = None
    fulls = [n[Artifact.Kind.FULL].pk for n in facts.newest.values() if n[Artifact.Kind.FULL] is not None]
    facts.copies = offsite_copies(fulls)
    facts.any_offsite = offsite_enabled()
    facts.runs = _verification_runs(facts)
    streamed = [s.pk for s in systems if s.continuous_enabled]
    if streamed:
        facts.last_wal_at = dict(ContinuousState.objects.filter(system_id__in=streamed)
                                 .values_list("system_id", "last_wal_at"))
        for gap in (WalTimeline.objects.filter(system_id__in=streamed).exclude(first_missing="")
                    .order_by("system_id", "timeline")):
            facts.gaps.setdefault(gap.system_id, gap)  # its lowest timeline with a gap, as the system's own path
    return facts


def _database_backup(newest: dict) -> Artifact | None:
    return newest_database_backup(newest[Artifact.Kind.FULL], newest.get(Artifact.Kind.BASE))


def _verification_runs(facts: HealthFacts) -> dict:
    """The run that set each verified mark the checks link to (its artifact, finish time and level)."""
    marked = {a.pk: a for a in map(_database_backup, facts.newest.values()) if a is not None and a.last_verified_at}
    runs: dict = {}
    # The model's order, as ``.first()`` takes it; matched here rather than by a hundred OR-ed conditions,
    # which cost more to build than to run.
    for run in (VerificationRun.objects.filter(artifact_id__in=list(marked), finished_at__isnull=False)
                .only("pk", "artifact_id", "finished_at", "reached_level")) if marked else ():
        artifact = marked[run.artifact_id]
        if run.finished_at == artifact.last_verified_at and run.reached_level == artifact.last_verified_level:
            runs.setdefault(run.artifact_id, run)
    return runs


def health_many(systems: list[System], now: datetime | None = None, *, known: HealthFacts | None = None
                ) -> list[Health]:
    """The health of each of ``systems`` (in their order), as ``health_evaluate`` gives it one by one.

    ``known``: the facts, when the caller loaded them already (for the RPO too).
    """
    facts = known or health_facts(systems, now)
    healths = []
    for system in systems:
        newest = facts.newest[system.pk]
        database = _database_backup(newest)
        wal_status = None
        if system.continuous_enabled:
            last = facts.last_wal_at.get(system.pk)
            gap = facts.gaps.get(system.pk)
            wal_status = wal_stream_verdict(system, gap, None if gap or last is None else
                                            seconds_since(last, facts.now))
        full = newest[Artifact.Kind.FULL]
        healths.append(health_from(
            system, facts.now, newest, copies=facts.copies.get(full.pk, []) if full is not None else [],
            any_offsite=facts.any_offsite, run=facts.runs.get(database.pk) if database is not None else None,
            wal_status=wal_status))
    return healths


def rpo_many(systems: list[System], known: HealthFacts) -> dict[int, Rpo]:
    """The RPO of each of ``systems`` by its id, as ``rpo_for`` gives it one by one, from loaded facts."""
    return {s.pk: rpo_from(s, known.now, last_wal_at=known.last_wal_at.get(s.pk), artifact=known.verified[s.pk])
            for s in systems}
