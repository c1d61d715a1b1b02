"""Verification runs: proving an artifact restorable, level by level (checksum → decrypt → structure → restore-test).

``verification_request`` (operators, managers, admins; the scheduler as the system) creates
the row and enqueues the job on the ``verify`` queue after commit; ``verification_execute``
is the job's body. It checks again that the person who asked is still active and may still
start jobs (``verification_still_allowed``; refused and audited otherwise). Each level up to
the one asked for runs in order, and the first that fails ends the run:

- **checksum** — every stored byte of the copy is read and its SHA-256 and size compared
  with the catalog;
- **decrypt** — in the same pass, every chunk is authenticated (AES-256-GCM) and nothing is
  kept: the stored hash and the authentication run on two threads at once;
- **structure** — the artifact is decrypted into a temporary file and its table of contents
  read: ``pg_restore --list`` (every table of the manifest must have its data entry), a
  config tar's headers under the restore rules, or a plain dump's header and trailer;
- **restore-test** — the file is restored into a throw-away database on the verification
  server (``DRPANEL_VERIFY_DATABASE``), every table's rows are counted against the
  manifest, the sanity checks of the targets that receive this system run on it, and the
  database is dropped. A config tar is extracted (with the restore rules) into a temporary
  directory and its files counted against the manifest.

A base backup (kind ``base``, in Barman's home) climbs its own ladder, manifest (``barman
verify-backup``) → restore-test (recovered at the latest point and started):
``restores.base_verification``. The checks of each level are ``restores.verification_levels``. The artifact's
``last_verified_level``/``last_verified_at`` then say what this run reached (empty when even
the checksum failed). ``VERIFICATION_RUNS`` is the verification kind of the run runtime.
"""

import contextlib
import logging
import random
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from backups.models import Artifact, System
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import runs, secrets
from drpanel.permissions import Cap, has_cap, require_cap
from drpanel.scrub import scrub
from restores import pg
from restores.base_verification import discard_scratch, verify_base_levels
from restores.models import ALL_LEVELS, BASE_LEVELS, LEVELS, VerificationRun
from restores.quarantine import adoption_settle, refuse_quarantined
from restores.verification_levels import LevelFailed, verify_levels, verify_server_url

log = logging.getLogger(__name__)

VERIFY_QUEUE = "verify"
VERIFIABLE_KINDS = (Artifact.Kind.FULL, Artifact.Kind.CONFIG)


class VerificationError(Exception):
    """A verification cannot be requested as asked; the message is for the person asking."""

# --- the verification kind of the run runtime ------------------------------------------------


class VerificationRuns(runs.RunKind):
    """Verification runs in the run runtime: failed through ``verification_fail``, their throw-away database
    dropped by ``verification_tidy``."""

    name = "verification"
    model = VerificationRun
    queue = VERIFY_QUEUE
    job = "restores.jobs.verification_run_job"
    timeout = 12 * 3600
    on_failure = "restores.jobs.verification_job_failed"
    reconciled = True

    def fail(self, run_id, reason: str, *, expected) -> bool:
        return verification_fail(run_id, reason, expected=expected)

    def tidy(self, run) -> None:
        verification_tidy(run)

    def pool_for(self, run_id) -> str:
        """A verification runs in the pool of its artifact's system."""
        return (VerificationRun.objects.filter(pk=run_id).values_list("artifact__system__worker_pool", flat=True)
                .first() or "")

    def record_requeue(self, run, details: dict) -> None:
        audit_record(actor=None, action=AuditAction.VERIFICATION_REQUEUED, obj=run.artifact, details=details)


VERIFICATION_RUNS = runs.register(VerificationRuns())


def verification_fail(run_id, reason: str, *, expected=(VerificationRun.State.RUNNING,)) -> bool:
    """Fail a verification run that cannot finish; drop its throw-away database."""
    with transaction.atomic():
        changed = VerificationRun.objects.filter(pk=run_id, state__in=list(expected)).update(
            state=VerificationRun.State.FAILED, finished_at=timezone.now(), error=reason[:4000])
        if not changed:
            return False
        run = VerificationRun.objects.select_related("artifact", "requested_by").get(pk=run_id)
        audit_record(actor=None, action=AuditAction.VERIFICATION_FAILED, obj=run.artifact, outcome="failure",
                     details={"run": str(run.pk), "level": run.level, "error": reason[:500]})
        adoption_settle(run, error=reason)
    verification_tidy(run)
    return True


def verification_tidy(run: VerificationRun) -> None:
    """Drop a failed run's throw-away database; if the server cannot be reached, mark it to try again.

    A base backup's restore-test has no database there: its scratch copy (directory and server) is stopped
    and removed, on the host that ran it (another host leaves the mark for that one)."""
    if run.artifact.kind == Artifact.Kind.BASE:
        if run.worker_host and run.worker_host != runs.worker_host():
            return
        discard_scratch(run)
        VerificationRun.objects.filter(pk=run.pk).update(needs_cleanup=False)
        return
    try:
        pg.drop_copy(verify_server_url(), run.pk, pg.CopyKind.SIDE)
    except (pg.PgOpsError, secrets.SecretReferenceError) as exc:
        log.warning("cannot drop the throw-away database of verification %s: %s", run.pk, exc)
        VerificationRun.objects.filter(pk=run.pk).update(needs_cleanup=True)
        return
    VerificationRun.objects.filter(pk=run.pk).update(needs_cleanup=False)


# --- requests ---------------------------------------------------------------------------------


def verification_request(*, actor, artifact: Artifact, level: str, trigger: str = VerificationRun.Trigger.MANUAL,
                         request=None) -> VerificationRun:
    """Queue a verification of ``artifact`` up to ``level`` (``actor=None``: the scheduler).

    The same artifact and level already queued or running returns that run instead. A
    quarantined artifact is verified only by its adoption (``restores.adoption``, trigger
    ``adoption``); any other request for it is refused with the reason, audited.
    """
    if actor is not None:
        require_cap(actor, Cap.START_JOBS, action="verification.request", obj=artifact)
    if level not in ALL_LEVELS:
        raise VerificationError(f"unknown level {level!r}; the levels are {', '.join(LEVELS)} "
                                f"(of a base backup: {', '.join(BASE_LEVELS)})")
    adopting = trigger == VerificationRun.Trigger.ADOPTION and artifact.status == Artifact.Status.QUARANTINED
    if not adopting:
        refuse_quarantined(actor=actor, artifact=artifact, what="verification", error=VerificationError,
                           request=request)
    if artifact.status != Artifact.Status.AVAILABLE and not adopting:
        raise VerificationError(f"this artifact is {artifact.status}: there is nothing to verify")
    if artifact.kind == Artifact.Kind.BASE:
        _refuse_base(artifact, level)
    elif level not in LEVELS:
        raise VerificationError(f"the {level} level is for base backups; this {artifact.kind} artifact is verified "
                                f"at {', '.join(LEVELS)}")
    elif artifact.kind not in VERIFIABLE_KINDS and LEVELS.index(level) > LEVELS.index("decrypt"):
        raise VerificationError(f"{artifact.kind} artifacts are verified up to the decrypt level only")
    with transaction.atomic():
        # Lock the artifact: two clicks (or a click and the scheduler) serialise here.
        Artifact.objects.select_for_update().get(pk=artifact.pk)
        active = VerificationRun.objects.filter(artifact=artifact, level=level, state__in=[
            VerificationRun.State.QUEUED, VerificationRun.State.RUNNING]).first()
        if active is not None:
            return active
        run = VerificationRun.objects.create(artifact=artifact, level=level, trigger=trigger, requested_by=actor)
        audit_record(actor=actor, action=AuditAction.VERIFICATION_REQUESTED, obj=artifact, request=request,
                     details={"run": str(run.id), "level": level, "trigger": trigger})
        # If Redis refuses, the request still stands; the reconciler queues it again.
        VERIFICATION_RUNS.enqueue_on_commit(run.id)
    return run


def _refuse_base(artifact: Artifact, level: str) -> None:
    """Why a base backup cannot be verified at ``level`` now, raised (nothing is recorded)."""
    if level not in BASE_LEVELS:
        raise VerificationError(f"base backups live in Barman's home, not in a storage location: they are verified "
                                f"at the {' and '.join(BASE_LEVELS)} levels, not {level}")
    if not artifact.system.continuous_enabled:
        raise VerificationError(f"{artifact.system.name} is no longer continuously protected: Barman no longer "
                                "has its configuration to verify its base backups")


def verify_new_backup(artifact: Artifact) -> VerificationRun:
    """``BACKUP_SUCCEEDED_HOOK``: a new full is verified at the decrypt level right away (by the system), a new
    base backup at the manifest level.

    Called in the transaction that makes the artifact available; the job is queued when it
    commits. Without it the newest full would count as unverified from the backup until the
    next daily verification, and the health score and the daily checklist would flap.
    """
    level = VerificationRun.Level.MANIFEST if artifact.kind == Artifact.Kind.BASE else VerificationRun.Level.DECRYPT
    return verification_request(actor=None, artifact=artifact, level=level, trigger=VerificationRun.Trigger.BACKUP)


def enqueue_verification(run_id) -> None:
    """Put the run's job on the ``verify`` queue now and remember its id."""
    VERIFICATION_RUNS.enqueue(run_id)


# --- execution --------------------------------------------------------------------------------

WEIGHTS = {"checksum": 25, "decrypt": 25, "structure": 10, "restore-test": 40}
BASE_WEIGHTS = {"manifest": 30, "restore-test": 70}


def ladder_of(artifact: Artifact) -> tuple[str, ...]:
    """The levels an artifact climbs, in order."""
    return BASE_LEVELS if artifact.kind == Artifact.Kind.BASE else LEVELS


def verification_still_allowed(run: VerificationRun) -> str | None:
    """Why the worker must refuse ``run`` now (its requester is inactive or may no longer start jobs), or None.

    The scheduler's runs (no requester) are the system's own and always allowed.
    """
    if run.requested_by_id is None:
        return None
    requester = type(run.requested_by).objects.get(pk=run.requested_by_id)
    if not requester.is_active:
        return f"refused: the requester {requester.get_username()} is no longer active"
    if not has_cap(requester, Cap.START_JOBS):
        return f"refused: the requester {requester.get_username()} may no longer start jobs"
    return None


def verification_execute(run_id) -> VerificationRun:
    """Run a queued verification (the job's body). Never raises for a failed level: the run records it."""
    with transaction.atomic():
        # Conditional transition: a job delivered twice runs once.
        now = timezone.now()
        started = VerificationRun.objects.filter(pk=run_id, state=VerificationRun.State.QUEUED).update(
            state=VerificationRun.State.RUNNING, started_at=now, heartbeat_at=now, progress_at=now,
            worker_host=runs.worker_host())
        run = VerificationRun.objects.select_related("artifact__system", "requested_by").get(pk=run_id)
        if not started:
            return run
        audit_record(actor=None, action=AuditAction.VERIFICATION_STARTED, obj=run.artifact,
                     details={"run": str(run.id), "level": run.level, "worker_host": run.worker_host})
    refused = verification_still_allowed(run)
    if refused:
        with transaction.atomic():
            audit_record(actor=None, action=AuditAction.VERIFICATION_REFUSED, obj=run.artifact, outcome="failure",
                         details={"run": str(run.id), "level": run.level, "reason": refused})
        verification_fail(run.pk, refused)
        run.refresh_from_db()
        return run
    ladder = ladder_of(run.artifact)
    levels = ladder[: ladder.index(run.level) + 1]
    weights = BASE_WEIGHTS if ladder is BASE_LEVELS else WEIGHTS
    steps = runs.StepList(run, [(level, weights[level]) for level in levels], field="results")
    error = ""
    with runs.Heartbeat(run):
        try:
            if ladder is BASE_LEVELS:
                verify_base_levels(run, steps, levels)
            else:
                verify_levels(run, steps, levels)
        except LevelFailed as exc:
            error = scrub(exc)
        except Exception as exc:
            log.exception("verification %s failed unexpectedly", run.id)
            error = scrub(f"unexpected error: {type(exc).__name__}: {exc}")[:2000]
            steps.fail_open(error)
        finally:
            _drop_throwaway(run)
    return _finish(run, steps, error)


def _finish(run: VerificationRun, steps: runs.StepList, error: str) -> VerificationRun:
    passed = [s["name"] for s in steps.steps if s["state"] == "succeeded"]
    reached = ""
    for level in ladder_of(run.artifact):
        if level in passed:
            reached = level
        else:
            break
    state = VerificationRun.State.FAILED if error else VerificationRun.State.SUCCEEDED
    now = timezone.now()
    with transaction.atomic():
        changed = VerificationRun.objects.filter(pk=run.pk, state=VerificationRun.State.RUNNING).update(
            state=state, finished_at=now, reached_level=reached, error=error[:4000],
            percent=100 if not error else steps.percent())
        if changed:
            Artifact.objects.filter(pk=run.artifact_id).update(last_verified_level=reached,
                                                               last_verified_at=now if reached else None)
            audit_record(actor=None, action=f"verification.{state}", obj=run.artifact,
                         outcome="success" if not error else "failure",
                         details={"run": str(run.id), "level": run.level, "reached": reached, "error": error[:500],
                                  "results": {s["name"]: s["state"] for s in steps.steps}})
            adoption_settle(run, error=error)
    run.refresh_from_db()
    return run


def _drop_throwaway(run: VerificationRun) -> None:
    """Drop the run's throw-away database if it made one (and say so on the row)."""
    run.refresh_from_db(fields=["needs_cleanup"])
    if not run.needs_cleanup:
        return
    if run.artifact.kind == Artifact.Kind.BASE:
        verification_tidy(run)
        return
    with contextlib.suppress(pg.PgOpsError, secrets.SecretReferenceError):
        pg.drop_copy(verify_server_url(), run.id, pg.CopyKind.SIDE)
        VerificationRun.objects.filter(pk=run.pk).update(needs_cleanup=False)


# --- schedules ----------------------------------------------------------------------------------


def schedule_daily(now=None) -> list[VerificationRun]:
    """Every day: the newest available full artifact of each system, at the decrypt level, and the newest base
    backup of each continuously protected system, at the manifest level."""
    queued = []
    for system in System.objects.all():
        newest = Artifact.objects.filter(system=system, kind=Artifact.Kind.FULL,
                                         status=Artifact.Status.AVAILABLE).order_by("-created_at").first()
        if newest is not None:
            queued.append(verification_request(actor=None, artifact=newest, level="decrypt",
                                             trigger=VerificationRun.Trigger.SCHEDULE))
        base = _bases(system).order_by("-created_at").first()
        if base is not None:
            queued.append(verification_request(actor=None, artifact=base, level="manifest",
                                             trigger=VerificationRun.Trigger.SCHEDULE))
    return queued


def _bases(system: System):
    """The available base backups of ``system`` when it is continuously protected (none otherwise)."""
    if not system.continuous_enabled:
        return Artifact.objects.none()
    return Artifact.objects.filter(system=system, kind=Artifact.Kind.BASE, status=Artifact.Status.AVAILABLE)


def schedule_weekly(now=None, rng: random.Random | None = None) -> list[VerificationRun]:
    """Every week: one full artifact of each system from the last 30 days, picked at random, at restore-test; and
    the same for the base backups of each continuously protected system."""
    now = now or timezone.now()
    rng = rng or random.SystemRandom()
    queued = []
    for system in System.objects.all():
        recent = list(Artifact.objects.filter(system=system, kind=Artifact.Kind.FULL, status=Artifact.Status.AVAILABLE,
                                              created_at__gte=now - timedelta(days=30)).values_list("pk", flat=True))
        if recent:
            artifact = Artifact.objects.get(pk=rng.choice(recent))
            queued.append(verification_request(actor=None, artifact=artifact, level="restore-test",
                                             trigger=VerificationRun.Trigger.SCHEDULE))
        bases = list(_bases(system).filter(created_at__gte=now - timedelta(days=30)).values_list("pk", flat=True))
        if bases:
            queued.append(verification_request(actor=None, artifact=Artifact.objects.get(pk=rng.choice(bases)),
                                             level="restore-test", trigger=VerificationRun.Trigger.SCHEDULE))
    return queued
