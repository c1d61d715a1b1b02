"""The health score of each system (DESIGN.md "Health score"): its five checks, with evidence.

Five checks, each with a weight; "newest" means the newest *available* artifact of that kind
(``Artifact.Status.AVAILABLE``, created no later than the moment evaluated):

- ``full_backup`` (30): the newest full is no older than the policy's full interval;
- ``incremental_backup`` (15): the newest incremental is no older than its interval — only when
  the policy enables incrementals; under continuous protection, the WAL stream instead: RPO now
  (now − last WAL received) within the system's RPO target, and no gap in the WAL catalog;
- ``config_backup`` (15): the newest config backup is no older than its interval — only when the
  system has config paths;
- ``offsite_copy`` (20): the newest full has a copy in an enabled off-site location whose
  recomputed SHA-256 matches;
- ``verified`` (20): the newest full was verified at ``decrypt`` level or better, and that
  verification is at most 24 h old. Under continuous protection a base backup is a full copy of
  the server: when it is newer than the newest full, it is the one that must be verified (its
  ``manifest`` level counts as better than ``decrypt``, see ``backups.hooks``).

``score = passed weight × 100 // enabled weight`` (rounded down, so no band is ever reached by
rounding); healthy ≥ 90, warning 67–89, critical ≤ 66. A check that is not part of the policy
is *disabled*: it counts neither way.

The score's history, the alerts it raises and when it is recomputed are in
``compliance.health_recompute``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

from django.db.models import Q
from django.urls import reverse

from backups.continuous import wal_stream_status
from backups.hooks import verified_at_least
from backups.models import Artifact, ArtifactCopy, StorageLocation, System
from compliance.models import HealthSnapshot
from drpanel import clock
from drpanel.evidence import Evidence
from restores.models import RestoreRun, Target, VerificationRun
from restores.offsite_recovery import offsite_coverage

HEALTHY, WARNING, CRITICAL = (HealthSnapshot.Status.HEALTHY, HealthSnapshot.Status.WARNING,
                             HealthSnapshot.Status.CRITICAL)
HEALTHY_FROM, WARNING_FROM = 90, 67
WEIGHTS = {"full_backup": 30, "incremental_backup": 15, "config_backup": 15, "offsite_copy": 20, "verified": 20}
LABELS = {
    "full_backup": "Last full backup within its policy",
    "incremental_backup": "Last incremental backup within its policy",
    "config_backup": "Last config backup within its policy",
    "offsite_copy": "Newest full copied off-site, checksum matching",
    "verified": "Newest full verified (decrypt level or better) in the last 24 h",
}
VERIFIED_LEVEL = "decrypt"
# The kinds whose verification proves the database recoverable (a base backup under continuous protection).
DATABASE_KINDS = (Artifact.Kind.FULL, Artifact.Kind.BASE)
VERIFIED_WITHIN = timedelta(hours=24)
# "Not loaded by the caller: read it from the database" (None is a loaded answer: there is none).
LOAD = object()


def status_for(score: int) -> str:
    """The band of a score: healthy ≥ 90, warning 67–89, critical ≤ 66."""
    if score >= HEALTHY_FROM:
        return HEALTHY
    if score >= WARNING_FROM:
        return WARNING
    return CRITICAL


def format_age(delta: timedelta) -> str:
    """A short, exact-enough age: ``40 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def every_text(interval: timedelta) -> str:
    """A policy interval as words: ``every 6 h``."""
    hours = interval.total_seconds() / 3600
    return f"every {hours:g} h"


# --- evidence --------------------------------------------------------------------------------

def artifact_evidence(artifact: Artifact, label: str = "") -> Evidence:
    return Evidence(label or f"{artifact.kind} backup {artifact.short_id} of {artifact.created_at:%Y-%m-%d %H:%M} UTC",
                    reverse("backups:artifact-detail", args=[artifact.pk]), "backups.artifact", str(artifact.pk))


def system_evidence(system: System, label: str = "") -> Evidence:
    return Evidence(label or f"{system.name}: policy and backup runs",
                    reverse("backups:system-detail", args=[system.pk]), "backups.system", str(system.pk))


def health_evidence(system: System, label: str = "") -> Evidence:
    return Evidence(label or f"{system.name}: health score and its history",
                    reverse("drpanel:health-detail", args=[system.pk]), "backups.system", str(system.pk))


def verification_evidence(artifact: Artifact, run=LOAD) -> Evidence:
    """What proves an artifact's last verification: the run that set it (its page lists every level
    with its bytes and timings), or the artifact's page when no run did (an imported or seeded mark).

    ``run``: that run (or None) when the caller has loaded it already (``compliance.health_many``).
    """
    level = artifact.last_verified_level or "never"
    when = f" at {artifact.last_verified_at:%Y-%m-%d %H:%M} UTC" if artifact.last_verified_at else ""
    label = f"verification of {artifact.short_id}: {level}{when}"
    if not artifact.last_verified_at:
        run = None
    elif run is LOAD:
        # The run that finished at that very moment wrote the artifact's mark (one transaction).
        run = (VerificationRun.objects.filter(artifact=artifact, finished_at=artifact.last_verified_at,
                                              reached_level=artifact.last_verified_level)
               .only("pk").first())
    if run is None:
        return artifact_evidence(artifact, label)
    return Evidence(label, reverse("restores:verification-detail", args=[run.pk]), "restores.verificationrun",
                    str(run.pk))


# --- the checks ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One weighted check of the score: whether it counts, whether it passed, why, and its evidence."""

    code: str
    weight: int
    enabled: bool
    passed: bool
    reason: str
    evidence: tuple[Evidence, ...] = ()

    @property
    def label(self) -> str:
        return LABELS[self.code]

    def as_dict(self) -> dict:
        return {"code": self.code, "label": self.label, "weight": self.weight, "enabled": self.enabled,
                "passed": self.passed, "reason": self.reason, "evidence": [e.as_dict() for e in self.evidence]}


@dataclass(frozen=True)
class Health:
    """A system's checks at one moment, and the score and band they give."""

    system: System
    at: datetime
    checks: tuple[Check, ...]
    newest: dict = field(default_factory=dict, compare=False)  # kind → the newest artifact the checks read
    # Continuous protection: per off-site location, the newest point recoverable from it alone (not scored).
    offsite: tuple = field(default=(), compare=False)

    # Cached: a checks tuple never changes, and a page of a hundred systems reads each figure several times.
    @cached_property
    def enabled_weight(self) -> int:
        return sum(c.weight for c in self.checks if c.enabled)

    @cached_property
    def passed_weight(self) -> int:
        return sum(c.weight for c in self.checks if c.enabled and c.passed)

    @cached_property
    def score(self) -> int:
        return self.passed_weight * 100 // self.enabled_weight if self.enabled_weight else 0

    @cached_property
    def status(self) -> str:
        return status_for(self.score)

    @property
    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.enabled and not c.passed]

    @property
    def url(self) -> str:
        return reverse("drpanel:health-detail", args=[self.system.pk])

    def fingerprint(self) -> str:
        """What counts as a change for the history: the score, the band, each check's outcome and evidence."""
        state = [self.score, self.status, [[c.code, c.enabled, c.passed, [[e.object_type, e.object_id]
                                                                         for e in c.evidence]] for c in self.checks]]
        return hashlib.sha256(json.dumps(state, separators=(",", ":")).encode()).hexdigest()

    def as_dict(self) -> dict:
        return {"system": self.system.name, "system_id": self.system.pk, "score": self.score, "status": self.status,
                "computed_at": self.at.isoformat(), "enabled_weight": self.enabled_weight,
                "passed_weight": self.passed_weight, "checks": [c.as_dict() for c in self.checks], "url": self.url,
                **({"offsite_coverage": list(self.offsite)} if self.system.continuous_enabled else {})}


def newest_artifact(system: System, kind: str, at: datetime) -> Artifact | None:
    """The newest available artifact of a kind created no later than ``at``.

    Ordered by ``created_at`` alone, so PostgreSQL walks the (system, kind, created_at) index
    backwards and stops at the first row, however many artifacts the system has.
    """
    return (Artifact.objects.filter(system=system, kind=kind, status=Artifact.Status.AVAILABLE, created_at__lte=at)
            .defer("manifest").order_by("-created_at").first())


def _age_check(system: System, kind: str, code: str, now: datetime, newest: Artifact | None) -> Check:
    interval = system.interval(kind)
    if interval is None:
        why = ("incrementals are disabled in its policy" if kind == Artifact.Kind.INCREMENTAL
               else "it has no config paths")
        return Check(code, WEIGHTS[code], False, False, f"Not part of the policy: {why}.",
                     (system_evidence(system, f"{system.name}: policy"),))
    if newest is None:
        return Check(code, WEIGHTS[code], True, False,
                     f"No {kind} backup yet; the policy asks for one {every_text(interval)}.",
                     (system_evidence(system),))
    age = now - newest.created_at
    if age <= interval:
        return Check(code, WEIGHTS[code], True, True,
                     f"Newest {kind} backup is {format_age(age)} old (policy: {every_text(interval)}).",
                     (artifact_evidence(newest),))
    return Check(code, WEIGHTS[code], True, False,
                 f"Newest {kind} backup is {format_age(age)} old; the policy asks for one {every_text(interval)}.",
                 (artifact_evidence(newest),))


def wal_stream_check(system: System, now: datetime, status: tuple[bool, str] | None = None) -> Check:
    """Continuous protection: RPO now within the system's target and no gap in its WAL catalog.

    ``status``: ``wal_stream_status``'s answer when the caller has it already."""
    ok, reason = status if status is not None else wal_stream_status(system, now)
    return Check("incremental_backup", WEIGHTS["incremental_backup"], True, ok, reason,
                 (system_evidence(system, f"{system.name}: Barman checks and WAL catalog"),))


def offsite_copies(full_ids) -> dict:
    """The off-site copies (not deleted) of these artifacts, each list in the order of its location's name."""
    copies: dict = {pk: [] for pk in full_ids}
    for copy in (ArtifactCopy.objects.filter(artifact_id__in=list(copies), location__role=StorageLocation.Role.OFFSITE)
                 .exclude(status=ArtifactCopy.Status.DELETED).select_related("location")
                 .order_by("location__name", "pk")):
        copies[copy.artifact_id].append(copy)
    return copies


def offsite_enabled() -> bool:
    return StorageLocation.objects.filter(role=StorageLocation.Role.OFFSITE, enabled=True).exists()


def offsite_copy_check(system: System, full: Artifact | None, copies=LOAD, any_offsite=LOAD) -> Check:
    """The newest full has an off-site copy, in an enabled location, whose recomputed SHA-256 matches.

    ``copies`` (that full's off-site copies) and ``any_offsite`` (whether an off-site location is
    enabled): when the caller has loaded them already."""
    code, weight = "offsite_copy", WEIGHTS["offsite_copy"]
    if full is None:
        return Check(code, weight, True, False, "No full backup to copy off-site yet.", (system_evidence(system),))
    if copies is LOAD:
        copies = offsite_copies([full.pk])[full.pk]
    good = [c for c in copies if c.status == ArtifactCopy.Status.OK and c.location.enabled and full.sha256
            and c.sha256_seen == full.sha256]
    if good:
        copy = max(good, key=lambda c: (c.checked_at is not None, c.checked_at))
        checked = f", checked {copy.checked_at:%Y-%m-%d %H:%M} UTC" if copy.checked_at else ""
        return Check(code, weight, True, True,
                     f"Copy in {copy.location.name}: SHA-256 recomputed there matches{checked}.",
                     (artifact_evidence(full, f"off-site copy of {full.short_id} in {copy.location.name}"),))
    if copies:
        states = "; ".join(f"{c.location.name}: {c.get_status_display()}"
                           + ("" if c.location.enabled else " (location disabled)") for c in copies)
        return Check(code, weight, True, False, f"No off-site copy of the newest full matches ({states}).",
                     (artifact_evidence(full, f"copies of {full.short_id}"),))
    if not (offsite_enabled() if any_offsite is LOAD else any_offsite):
        return Check(code, weight, True, False, "No off-site storage location is enabled.",
                     (artifact_evidence(full),))
    return Check(code, weight, True, False, f"The newest full ({full.short_id}) has no off-site copy.",
                 (artifact_evidence(full),))


def newest_database_backup(full: Artifact | None, base: Artifact | None) -> Artifact | None:
    """The newer of the newest full and the newest base backup: the copy of the database a recovery starts from."""
    if base is not None and (full is None or base.created_at > full.created_at):
        return base
    return full


def verified_check(system: System, full: Artifact | None, now: datetime, run=LOAD) -> Check:
    """The newest full (or a newer base backup) was verified at decrypt level or better, at most 24 h ago.

    ``run``: the verification run that set its mark, when the caller has loaded it already."""
    code, weight = "verified", WEIGHTS["verified"]
    if full is None:
        return Check(code, weight, True, False, "No full backup to verify yet.", (system_evidence(system),))
    what = "full" if full.kind == Artifact.Kind.FULL else "base backup"
    evidence = (verification_evidence(full, run),)
    level, when = full.last_verified_level, full.last_verified_at
    if not level or when is None:
        return Check(code, weight, True, False, f"The newest {what} ({full.short_id}) has not been verified yet.",
                     evidence)
    if not verified_at_least(full, VERIFIED_LEVEL):
        return Check(code, weight, True, False,
                     f"The newest {what} was verified only at {level} level; {VERIFIED_LEVEL} or better is needed.",
                     evidence)
    age = now - when
    if age > VERIFIED_WITHIN:
        return Check(code, weight, True, False,
                     f"The newest {what} was last verified {format_age(age)} ago ({level}); one in the last 24 h "
                     "is needed.", evidence)
    return Check(code, weight, True, True, f"Verified at {level} level {format_age(age)} ago"
                 + ("" if what == "full" else f" (base backup {full.short_id})") + ".", evidence)


def health_evaluate(system: System, now: datetime | None = None) -> Health:
    """The checks of ``system`` at ``now`` (default: the panel clock). Reads only.

    One system's own queries (the health page, the recompute); ``compliance.health_many`` gives the
    same answer for many systems at once from facts loaded in a fixed number of queries.
    """
    now = now or clock.now()
    newest = {kind: newest_artifact(system, kind, now) if system.interval(kind) is not None else None
              for kind in Artifact.Kind.values}
    return health_from(system, now, newest)


def health_from(system: System, now: datetime, newest: dict, *, copies=LOAD, any_offsite=LOAD, run=LOAD,
                wal_status: tuple[bool, str] | None = None) -> Health:
    """The checks of ``system`` from the newest artifact of each kind its policy schedules (``newest``);
    what is not passed (``LOAD``) is read from the database."""
    full = newest[Artifact.Kind.FULL]
    checks = (
        _age_check(system, Artifact.Kind.FULL, "full_backup", now, full),
        wal_stream_check(system, now, wal_status) if system.continuous_enabled else
        _age_check(system, Artifact.Kind.INCREMENTAL, "incremental_backup", now, newest[Artifact.Kind.INCREMENTAL]),
        _age_check(system, Artifact.Kind.CONFIG, "config_backup", now, newest[Artifact.Kind.CONFIG]),
        offsite_copy_check(system, full, copies, any_offsite),
        verified_check(system, newest_database_backup(full, newest.get(Artifact.Kind.BASE)), now, run),
    )
    offsite = tuple(offsite_coverage(system, now)) if system.continuous_enabled else ()
    return Health(system=system, at=now, checks=checks, newest=newest, offsite=offsite)


# --- restore tests (drills) ------------------------------------------------------------------

@dataclass(frozen=True)
class RestoreTest:
    """A successful restore test of a system: when, and what proves it."""

    at: datetime
    evidence: Evidence


def last_restore_test(system: System, now: datetime | None = None) -> RestoreTest | None:
    """The newest successful restore test of ``system`` up to ``now``, or None.

    Two records count, and the newer wins: a full artifact (or base backup) of the system whose last
    verification reached the ``restore-test`` level (``Artifact.last_verified_level``), and a
    restore run of one of its artifacts into a staging or scratch target that went live
    (succeeded, or rolled back afterwards: it was restored and healthy all the same).
    """
    now = now or clock.now()
    found: list[RestoreTest] = []
    # Restore tests are of database backups: looking at fulls only keeps this off the incrementals.
    artifact = (Artifact.objects.filter(system=system, kind__in=DATABASE_KINDS, last_verified_level="restore-test",
                                        last_verified_at__lte=now)
                .defer("manifest").order_by("-last_verified_at").first())
    if artifact is not None:
        found.append(RestoreTest(at=artifact.last_verified_at, evidence=verification_evidence(artifact)))
    run = _last_staging_restore(system, now)
    if run is not None:
        found.append(RestoreTest(at=run.healthy_at, evidence=Evidence(
            f"restore {run.short_id} into {run.target.name} ({run.target.environment}), healthy "
            f"{run.healthy_at:%Y-%m-%d %H:%M} UTC", reverse("restores:run-detail", args=[run.pk]),
            "restores.restorerun", str(run.pk))))
    return max(found, key=lambda test: test.at) if found else None


def _last_staging_restore(system: System, now: datetime):
    return (RestoreRun.objects.filter(Q(artifact__system=system) | Q(recovery_system=system),
                                      healthy_at__isnull=False, healthy_at__lte=now,
                                      target__environment__in=[Target.Environment.STAGING, Target.Environment.SCRATCH],
                                      state__in=[RestoreRun.State.SUCCEEDED, RestoreRun.State.ROLLED_BACK])
            .select_related("target").order_by("-healthy_at").first())
