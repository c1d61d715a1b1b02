"""Restore runs: the request, the four-eyes approval, the worker's execution, the rollback, the checklist.

Every change goes through one service here (``restore_request``, ``restore_approve``,
``restore_reject``, ``restore_run_execute``, ``restore_rollback``, ``recovery_check_tick``…):
the service owns the transaction, the validation, the state transition (a conditional
update on the state it expects, see ``RestoreRun``'s docstring) and the audit event. Views,
the API, jobs and management commands call these alike; nothing else changes a run.

The worker's path (``restore_run_execute``):

1. **fetch and decrypt** — the artifact is materialised into a temporary file from the first
   intact copy (``restores.materialize``); a corrupted, truncated or wrong-key copy is refused
   before anything is restored. When the temporary disk lacks room (``pgops.plan_restore``)
   the plaintext is streamed into ``pg_restore -j1`` instead, and the run says so;
2. **restore** into the side database ``<db>__restore_<tag>`` (``pg_restore -jN`` from the
   file, or ``psql`` for a plain SQL dump);
3. **sanity checks** (the target's) and **row counts** against the manifest, on the side
   database — any failure ends the run here, the side database is dropped, the target is
   untouched;
4. config modes: the config artifact is materialised and extracted under the restore rules
   into ``<dir>.restore-<tag>``;
5. **swap** under the target's swap lock: ``<db>`` → ``<db>__pre_<tag>``, the side database →
   ``<db>`` in one transaction (and the config directory likewise);
6. **health checks**: the database answers, and every health URL answers its expected
   status (retried for ``DRPANEL_RESTORE_HEALTH_WAIT_SECONDS``). Healthy ends the RTO clock.

The pre-restore copies stay for ``DRPANEL_ROLLBACK_WINDOW_HOURS``; ``restore_rollback``
swaps them back, ``restore_copies_drop_due`` drops them afterwards.
"""

import contextlib
import logging
import time
from datetime import timedelta

import psycopg
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, transaction
from django.utils import timezone

from backups.models import Artifact, BackupRun
from compliance.audit import audit_record
from drpanel import runtime, secrets
from drpanel.approvals import ApprovalError, approval_approve, approval_consume, approval_reject, approval_request
from drpanel.approvals import binding_hash as approval_binding_hash
from drpanel.models import Approval
from drpanel.passwords import password_confirm
from drpanel.permissions import Cap, Denied, has_object_right, require_cap, require_object_right
from restores import configs, healthchecks, materialize, pgops, plainsql, sanity
from restores.models import APPROVE_RESTORE, RESTORE_TO_TARGET, RecoveryCheck, RestoreRun, Target
from restores.tracking import Heartbeat, StepList, target_lock
from restores.verifications import manifest_counts

log = logging.getLogger(__name__)

PRODUCTION_APPROVAL = "restore.production"
RESTORE_QUEUE = "restore"
DATABASE_FORMATS = (Artifact.Format.PG_CUSTOM, Artifact.Format.PG_PLAIN, Artifact.Format.PG_PLAIN_GZIP)
STREAMABLE = (Artifact.Format.PG_CUSTOM,)

# The old guide's post-recovery checklist: (code, title, decided by the panel?).
RECOVERY_ITEMS = (
    ("database_connectivity", "Database connectivity restored", True),
    ("tables_intact", "All tables and data intact", True),
    ("application_running", "Application services running (health URLs answering)", True),
    ("authentication", "User authentication working", False),
    ("payments", "Payment processing functional", False),
    ("customer_features", "Customer-facing features operational", False),
    ("analytics", "Analytics and reporting active", False),
    ("backups_reenabled", "Backup systems re-enabled", True),
    ("monitoring_cleared", "Monitoring alerts cleared", False),
    ("incident_documented", "Incident documented and reviewed", False),
)


class RestoreError(Exception):
    """A restore cannot be requested or changed as asked; the message is for the person asking."""


class RestoreConflict(RestoreError):
    """The run (or its target) is not in a state that allows this (HTTP 409)."""


class RunFailure(Exception):
    """A step of the worker's path failed; the run fails with this message."""


# --- binding and rights ------------------------------------------------------------------------


def binding_params(*, artifact: Artifact, target: Target, mode: str, config_artifact: Artifact | None) -> dict:
    """What a production approval is bound to: any change of these voids it."""
    return {"artifact": str(artifact.pk), "artifact_sha256": artifact.sha256,
            "config_artifact": str(config_artifact.pk) if config_artifact else None,
            "target": target.pk, "target_name": target.name, "database_ref": target.database_ref,
            "config_dir": target.config_dir, "mode": mode}


def run_binding_params(run: RestoreRun) -> dict:
    return binding_params(artifact=run.artifact, target=run.target, mode=run.mode, config_artifact=run.config_artifact)


def current_binding_hash(run: RestoreRun) -> str:
    """The binding hash of the run as its rows say now (compared with the approved one)."""
    return approval_binding_hash(kind=PRODUCTION_APPROVAL, content_type=ContentType.objects.get_for_model(RestoreRun),
                                 object_id=str(run.pk), params=run_binding_params(run))


def may_approve(target: Target):
    """The approval rule of one target: holds ``approve_restore`` on it (guardian)."""
    return lambda user: has_object_right(user, APPROVE_RESTORE, target)


def _details(run: RestoreRun, **extra) -> dict:
    return {"run": str(run.pk), "target": run.target.name, "environment": run.target.environment, "mode": run.mode,
            "artifact": str(run.artifact_id), "config_artifact": str(run.config_artifact_id or "") or None,
            "drill": run.is_drill, "requested_by": run.requested_by.get_username(), **extra}


def _transition(run: RestoreRun, expected, new_state: str, **fields) -> bool:
    """Move ``run`` from one of ``expected`` to ``new_state``; False if it was no longer there."""
    expected = [expected] if isinstance(expected, str) else list(expected)
    changed = RestoreRun.objects.filter(pk=run.pk, state__in=expected).update(state=new_state, **fields)
    if changed:
        run.state = new_state
        for name, value in fields.items():
            setattr(run, name, value)
    return bool(changed)


# --- requests ----------------------------------------------------------------------------------


def config_artifact_for(artifact: Artifact) -> Artifact | None:
    """The config artifact of the same system taken closest in time to ``artifact`` (for a full restore)."""
    candidates = Artifact.objects.filter(system_id=artifact.system_id, kind=Artifact.Kind.CONFIG,
                                         status=Artifact.Status.AVAILABLE, format=Artifact.Format.CONFIG_TAR)
    before = candidates.filter(created_at__lte=artifact.created_at).order_by("-created_at").first()
    after = candidates.filter(created_at__gt=artifact.created_at).order_by("created_at").first()
    options = [a for a in (before, after) if a is not None]
    return min(options, key=lambda a: abs((a.created_at - artifact.created_at).total_seconds()), default=None)


def _validate(*, artifact: Artifact, target: Target, mode: str, confirm: str, is_drill: bool) -> Artifact | None:
    if mode not in RestoreRun.Mode.values:
        raise RestoreError(f"unknown mode {mode!r}; the modes are {', '.join(RestoreRun.Mode.values)}")
    if not target.is_active:
        raise RestoreError(f"the target {target.name} is deactivated: it accepts no restore")
    if (confirm or "").strip() != target.name:
        raise RestoreError(f"type the target's name ({target.name}) to confirm the restore")
    if artifact.status != Artifact.Status.AVAILABLE:
        raise RestoreError(f"this artifact is {artifact.status}: it cannot be restored")
    if target.system_id and target.system_id != artifact.system_id:
        raise RestoreError(f"{target.name} receives {target.system.name}; this artifact is of {artifact.system.name}")
    if is_drill and target.is_production:
        raise RestoreError("drills go into staging or scratch targets, never production")
    config_artifact = None
    if mode in (RestoreRun.Mode.DATABASE, RestoreRun.Mode.FULL) and (
            artifact.kind != Artifact.Kind.FULL or artifact.format not in DATABASE_FORMATS):
        raise RestoreError(f"a {mode} restore needs a full backup in pg_dump custom or plain SQL format; "
                           f"this is a {artifact.kind} artifact ({artifact.get_format_display()})")
    if mode == RestoreRun.Mode.CONFIG and (artifact.kind != Artifact.Kind.CONFIG
                                           or artifact.format != Artifact.Format.CONFIG_TAR):
        raise RestoreError("a config-only restore needs a config artifact")
    if mode in (RestoreRun.Mode.CONFIG, RestoreRun.Mode.FULL) and not target.config_dir:
        raise RestoreError(f"{target.name} has no config directory: it takes no config restore")
    if mode == RestoreRun.Mode.FULL:
        config_artifact = config_artifact_for(artifact)
        if config_artifact is None:
            raise RestoreError(f"no available config artifact of {artifact.system.name} to restore with this one")
    return config_artifact


def restore_request(*, actor, artifact: Artifact, target: Target, mode: str, confirm: str, is_drill: bool = False,
                    reason: str = "", trigger: str = RestoreRun.Trigger.MANUAL, request=None) -> RestoreRun:
    """Ask for a restore of ``artifact`` into ``target`` (needs ``restore_to_target`` on it).

    ``confirm`` must be the target's name. A production target waits for an approval;
    staging and scratch are queued at once. Raises ``Denied``, ``RestoreError`` (bad input)
    or ``RestoreConflict`` (another restore into this target is in flight).
    """
    require_cap(actor, Cap.VIEW_PANEL, action="restore.request", obj=target)
    require_object_right(actor, RESTORE_TO_TARGET, target, action="restore.request")
    config_artifact = _validate(artifact=artifact, target=target, mode=mode, confirm=confirm, is_drill=is_drill)
    with transaction.atomic():
        run = RestoreRun(artifact=artifact, target=target, mode=mode, config_artifact=config_artifact,
                         is_drill=bool(is_drill), reason=(reason or "")[:500], requested_by=actor, trigger=trigger)
        try:
            # The partial unique index decides between two requests for one target, not a prior read.
            with transaction.atomic():
                run.save(force_insert=True)
        except IntegrityError:
            active = RestoreRun.objects.filter(target=target, state__in=RestoreRun.ACTIVE_STATES).first()
            raise RestoreConflict(f"a restore into {target.name} is already in flight"
                                  + (f" (run {active.short_id}, {active.get_state_display()})" if active else "")
                                  ) from None
        audit_record(actor=actor, action="restore.requested", obj=run, request=request,
                     details=_details(run, reason=run.reason, confirm_typed=True))
        if target.is_production:
            params = run_binding_params(run)
            approval = approval_request(actor=actor, kind=PRODUCTION_APPROVAL, subject=run, params=params,
                                        reason=run.reason or f"{mode} restore into {target.name}", request=request)
            _transition(run, RestoreRun.State.REQUESTED, RestoreRun.State.AWAITING_APPROVAL, approval=approval,
                        binding_hash=approval.binding_hash)
            audit_record(actor=actor, action="restore.awaiting_approval", obj=run, request=request,
                         details=_details(run, approval=approval.pk, binding_hash=approval.binding_hash,
                                          expires_at=approval.expires_at))
        else:
            _queue(run, actor=actor, request=request)
    return run


def _queue(run: RestoreRun, *, actor, request=None) -> None:
    """requested | approved → queued, and enqueue the job once the transaction commits."""
    if not _transition(run, [RestoreRun.State.REQUESTED, RestoreRun.State.APPROVED], RestoreRun.State.QUEUED,
                       queued_at=timezone.now()):
        raise RestoreConflict("this restore could not be queued: its state changed meanwhile")
    audit_record(actor=actor, action="restore.queued", obj=run, request=request, details=_details(run))
    # robust: if Redis refuses, the request stands; the reconciler queues it again (restores.reliability).
    transaction.on_commit(lambda: enqueue_restore(run.pk), robust=True)


def enqueue_restore(run_id) -> None:
    """Put the run's job on the ``restore`` queue and remember its id (also used to queue a lost job again)."""
    import django_rq
    from django.db.models import F
    from rq import Callback

    from restores.jobs import restore_job_failed, restore_run_job

    job = django_rq.get_queue(RESTORE_QUEUE).enqueue(restore_run_job, str(run_id), job_timeout=24 * 3600,
                                                     on_failure=Callback(restore_job_failed))
    RestoreRun.objects.filter(pk=run_id).update(job_id=job.id, enqueue_count=F("enqueue_count") + 1)


# --- approval ----------------------------------------------------------------------------------


def restore_approve(*, actor, run: RestoreRun, password: str, note: str = "", request=None) -> RestoreRun:
    """Approve a production restore: another person than the requester, holding ``approve_restore`` on
    the target, with their password re-entered, for exactly the artifact, target and mode asked for.

    Raises ``Denied`` (self-approval, no right), ``PasswordRefused`` or ``PasswordLocked``, ``RestoreConflict``
    (not awaiting approval, expired, or the request changed since it was made).
    """
    require_cap(actor, Cap.VIEW_PANEL, action="restore.approve", obj=run)
    if run.state != RestoreRun.State.AWAITING_APPROVAL or run.approval is None:
        raise RestoreConflict(f"this restore is {run.get_state_display()}; only one awaiting approval can be approved")
    try:
        approval_approve(actor=actor, approval=run.approval, password=password, params=run_binding_params(run),
                         may_approve=may_approve(run.target), note=note, request=request)
    except ApprovalError as exc:
        run.approval.refresh_from_db()
        if run.approval.state == Approval.State.EXPIRED:
            _expire(run)
        raise RestoreConflict(str(exc)) from None
    with transaction.atomic():
        locked = RestoreRun.objects.select_for_update().select_related("target", "artifact", "requested_by").get(
            pk=run.pk)
        if not _transition(locked, RestoreRun.State.AWAITING_APPROVAL, RestoreRun.State.APPROVED):
            raise RestoreConflict(f"this restore is {locked.get_state_display()} now")
        approval = approval_consume(approval=run.approval, params=run_binding_params(locked), actor=actor)
        audit_record(actor=actor, action="restore.approved", obj=locked, request=request,
                     details=_details(locked, approved_by=actor.get_username(), approval=approval.pk,
                                      binding_hash=approval.binding_hash, reauthenticated=True, note=note[:300]))
        _queue(locked, actor=actor, request=request)
    locked.refresh_from_db()
    return locked


def restore_reject(*, actor, run: RestoreRun, note: str = "", request=None) -> RestoreRun:
    """Reject a production restore (an approver), or withdraw it (the requester). Final."""
    require_cap(actor, Cap.VIEW_PANEL, action="restore.reject", obj=run)
    if run.state != RestoreRun.State.AWAITING_APPROVAL or run.approval is None:
        raise RestoreConflict(f"this restore is {run.get_state_display()}; only one awaiting approval can be rejected")
    try:
        approval_reject(actor=actor, approval=run.approval, may_approve=may_approve(run.target), note=note,
                        request=request)
    except ApprovalError as exc:
        raise RestoreConflict(str(exc)) from None
    run.approval.refresh_from_db()
    withdrawn = actor.pk == run.requested_by_id
    with transaction.atomic():
        if not _transition(run, RestoreRun.State.AWAITING_APPROVAL, RestoreRun.State.REJECTED,
                           finished_at=timezone.now()):
            raise RestoreConflict(f"this restore is {run.get_state_display()} now")
        audit_record(actor=actor, action="restore.rejected", obj=run, request=request,
                     details=_details(run, rejected_by=actor.get_username(), withdrawn=withdrawn, note=note[:300]))
    return run


def _expire(run: RestoreRun) -> bool:
    with transaction.atomic():
        # Conditional: an approval decided a moment ago keeps its decision.
        if run.approval_id and Approval.objects.filter(pk=run.approval_id, state=Approval.State.PENDING).update(
                state=Approval.State.EXPIRED):
            audit_record(actor=None, action="approval.expired", obj=run,
                         details={"approval": run.approval_id, "kind": PRODUCTION_APPROVAL})
        if not _transition(run, RestoreRun.State.AWAITING_APPROVAL, RestoreRun.State.EXPIRED,
                           finished_at=timezone.now()):
            return False
        audit_record(actor=None, action="restore.expired", obj=run,
                     details=_details(run, why=f"nobody approved it within {settings.APPROVAL_TTL_MINUTES} minutes"))
    return True


def restore_expire_due(now=None) -> int:
    """Expire (auto-reject) production restores whose approval window passed (cron, every minute)."""
    now = now or timezone.now()
    due = RestoreRun.objects.filter(state=RestoreRun.State.AWAITING_APPROVAL, approval__expires_at__lte=now
                                    ).select_related("target", "requested_by")
    return sum(_expire(run) for run in due)


# --- execution ---------------------------------------------------------------------------------


def _plan(run: RestoreRun) -> list[tuple[str, int]]:
    steps = []
    if run.restores_database:
        steps += [("fetch and decrypt", 25), ("restore into side database", 45), ("sanity checks", 4),
                  ("row counts", 4)]
    if run.restores_config:
        weight = 4 if run.restores_database else 30
        steps += [("config: fetch and decrypt", weight), ("config: extract", weight)]
    steps += [("swap", 2), ("health checks", 10)]
    return steps


def _check_approval(run: RestoreRun) -> None:
    """The worker's own check that a production run carries a consumed approval for exactly this restore."""
    if not run.target.is_production:
        return
    approval = Approval.objects.filter(pk=run.approval_id).first()
    if approval is None:
        raise RunFailure("refused: a production restore needs an approval, and this run has none")
    if approval.state != Approval.State.CONSUMED or not approval.decided_by_id:
        raise RunFailure(f"refused: its approval is {approval.state}, not approved and consumed")
    if approval.decided_by_id == run.requested_by_id:
        raise RunFailure("refused: the approval was given by the requester")
    if not (approval.binding_hash == run.binding_hash == current_binding_hash(run)):
        raise RunFailure("refused: the artifact, target or mode changed after the approval (it no longer covers "
                         "this restore)")


def restore_run_execute(run_id) -> RestoreRun:
    """Execute a queued restore (the job's body). Never raises for a failed restore: the run records it."""
    with transaction.atomic():
        # Conditional transition: a job delivered twice runs once.
        started = RestoreRun.objects.filter(pk=run_id, state=RestoreRun.State.QUEUED).update(
            state=RestoreRun.State.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now())
        run = RestoreRun.objects.select_related("artifact__system", "config_artifact", "target", "requested_by").get(
            pk=run_id)
        if not started:
            return run
        audit_record(actor=None, action="restore.started", obj=run, details=_details(run))
    steps = StepList(run, _plan(run))
    with Heartbeat(run):
        try:
            _check_approval(run)
            _Execution(run, steps).execute()
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            if not isinstance(exc, RunFailure | pgops.PgOpsError | materialize.MaterializeError
                              | configs.ConfigArchiveRefused | configs.ConfigSwapError
                              | secrets.SecretReferenceError):
                log.exception("restore run %s failed", run.pk)
                message = f"unexpected error: {type(exc).__name__}: {message}"
            steps.fail_open(message[:1000])
            restore_fail(run.pk, message)
    run.refresh_from_db()
    return run


class _Execution:
    """The worker's path for one run (see the module docstring); raises ``RunFailure`` and friends."""

    def __init__(self, run: RestoreRun, steps: StepList):
        self.run = run
        self.steps = steps
        self.target = run.target
        self.files: list = []
        self.url = None
        self.side = None
        self.config_new = None
        self.config_prefix = None
        self.results: dict = {}

    def execute(self) -> None:
        try:
            if self.run.restores_database:
                self.url = secrets.resolve(self.target.database_ref)
                self.database()
            if self.run.restores_config:
                self.config()
            self.swap()
            self.health()
        finally:
            for path in self.files:
                materialize.discard(path)

    def save_results(self, **values) -> None:
        self.results.update(values)
        RestoreRun.objects.filter(pk=self.run.pk).update(results=self.results)

    # --- database ----------------------------------------------------------------------------

    def database(self) -> None:
        artifact = self.run.artifact
        size = artifact.plaintext_size or artifact.size or 0
        plan = pgops.plan_restore(size)
        note = plan.reason
        if plan.mode == "stream" and artifact.format not in STREAMABLE:
            raise RunFailure(f"{plan.reason.split(':')[0]}; and this {artifact.get_format_display()} artifact "
                             "cannot be streamed: free some space and run the restore again")
        RestoreRun.objects.filter(pk=self.run.pk).update(plan={**plan.as_dict(), "format": artifact.format})
        fetch, restore = "fetch and decrypt", "restore into side database"
        stored = artifact.size or 0

        def fetched(done: int) -> None:
            self.steps.progress(fetch, done / stored if stored else None, bytes=done)

        def restored(progress: pgops.RestoreProgress) -> None:
            self.steps.progress(restore, progress.fraction, detail=f"pg_restore: {progress.message}"[:200])

        if plan.mode == "file":
            self.steps.start(fetch, detail=f"reading {artifact.short_id}; {note}")
            made = materialize.materialize(
                artifact, run_id=self.run.pk, progress=fetched,
                on_refused=lambda why: self.steps.progress(fetch, 0, detail=f"copy refused, trying the next: {why}"))
            self.files.append(made.path)
            refused = f"; refused first: {'; '.join(made.attempts)}" if made.attempts else ""
            self.steps.finish(fetch, bytes=made.stored_size, data=made.as_dict(),
                              detail=f"{made.stored_size} bytes from {made.copy.location.name}, SHA-256 matches, "
                                     f"every chunk authenticated; {made.plaintext_size} bytes decrypted to a "
                                     f"temporary file{refused}")
            self.steps.start(restore, detail=f"pg_restore -j{plan.jobs} from the file"
                             if made.content == "pg_custom" else "psql, one transaction")
            if made.content == "pg_custom":
                result = pgops.restore_to_side_database(self.url, self.run.pk, made.path, jobs=plan.jobs,
                                                        on_progress=restored)
            else:
                result = plainsql.restore_plain_sql(self.url, self.run.pk, made.path, on_progress=lambda d, t:
                                                    self.steps.progress(restore, d / t if t else None, bytes=d))
        else:
            copy = materialize.pick_copy(artifact)
            self.steps.start(fetch, detail=f"streaming from {copy.location.name}: {note}")
            self.steps.start(restore, detail="pg_restore -j1 from the decrypting stream (low-disk fallback)")
            stream = materialize.plaintext_stream(artifact, copy, progress=fetched)
            result = pgops.restore_to_side_database(self.url, self.run.pk, stream, bytes_total=size,
                                                    on_progress=restored)
            self.steps.finish(fetch, bytes=stored, detail=f"{stored} bytes streamed from {copy.location.name}, "
                                                          "SHA-256 matches, every chunk authenticated")
        self.side = result.database
        self.steps.finish(restore, detail=f"restored into {result.database} in {result.duration_s:.1f} s"
                          + (f" ({len(result.warnings)} warnings)" if getattr(result, "warnings", None) else ""),
                          data=result.as_dict())
        side_url = runtime.with_database_name(self.url, self.side)
        self.checks(side_url)

    def checks(self, side_url: str) -> None:
        name = "sanity checks"
        checks = list(self.target.sanity_checks.all())
        self.steps.start(name)
        if checks:
            results = sanity.run_sanity_checks(side_url, checks)
            self.save_results(sanity_checks=[r.as_dict() for r in results])
            failed = [r for r in results if not r.ok]
            if failed:
                raise RunFailure(f"{len(failed)} of {len(results)} sanity checks failed on the restored database "
                                 f"(first: {failed[0].name}: {failed[0].error}); the target is untouched")
            self.steps.finish(name, detail=f"{len(results)} sanity checks passed on {self.side}")
        else:
            self.steps.finish(name, state="skipped", detail="the target has no sanity check")
        name = "row counts"
        expected = manifest_counts(self.run.artifact)
        self.steps.start(name)
        if not expected:
            self.save_results(row_counts=[])
            self.steps.finish(name, state="skipped", detail="the manifest has no row counts to compare")
            return
        counts = sanity.compare_row_counts(side_url, expected)
        self.save_results(row_counts=[c.as_dict() for c in counts])
        bad = [c for c in counts if not c.ok]
        if bad:
            raise RunFailure(f"{len(bad)} of {len(counts)} tables differ from the manifest (first: {bad[0].table}: "
                             f"{bad[0].error}); the target is untouched")
        self.steps.finish(name, detail=f"all {len(counts)} tables hold exactly the manifest's row counts "
                                       f"({sum(c.actual or 0 for c in counts)} rows)")

    # --- config ------------------------------------------------------------------------------

    def config(self) -> None:
        artifact = self.run.config_artifact if self.run.mode == RestoreRun.Mode.FULL else self.run.artifact
        fetch, extract = "config: fetch and decrypt", "config: extract"
        self.steps.start(fetch, detail=f"reading config artifact {artifact.short_id}")
        made = materialize.materialize(artifact, run_id=self.run.pk)
        self.files.append(made.path)
        self.steps.finish(fetch, bytes=made.stored_size, data=made.as_dict(),
                          detail=f"{made.stored_size} bytes from {made.copy.location.name}, SHA-256 matches, "
                                 "every chunk authenticated")
        self.steps.start(extract, detail=f"into {self.target.config_dir}.restore-{pgops.run_tag(self.run.pk)}")
        self.config_prefix = configs.single_top_directory(made.path)
        new_dir, summary = configs.extract_config_tar(made.path, self.target.config_dir, self.run.pk,
                                                      strip_prefix=self.config_prefix)
        self.config_new = new_dir
        self.steps.finish(extract, bytes=summary.bytes, data=summary.as_dict(),
                          detail=f"{summary.files} files ({summary.bytes} bytes) checked and extracted into {new_dir}"
                                 + (f" (from {self.config_prefix}/)" if self.config_prefix else ""))

    # --- swap and health ---------------------------------------------------------------------

    def swap(self) -> None:
        self.steps.start("swap")
        now = timezone.now()
        with target_lock(self.target.pk):
            state = RestoreRun.objects.filter(pk=self.run.pk).values_list("state", flat=True).first()
            if state != RestoreRun.State.RUNNING:
                raise RunFailure(f"the run was marked {state} while it worked (its worker was presumed dead): "
                                 "not swapping")
            done = {}
            if self.run.restores_database:
                result = pgops.swap_in(self.url, self.run.pk)
                done["database"] = result.as_dict()
            if self.run.restores_config:
                try:
                    done["config"] = configs.swap_config_dir(self.target.config_dir, self.run.pk).as_dict()
                except (configs.ConfigSwapError, OSError) as exc:
                    if self.run.restores_database:
                        # A full restore is both or neither: put the database back.
                        pgops.swap_back(self.url, self.run.pk)
                        pgops.drop_copy(self.url, self.run.pk, pgops.CopyKind.FAILED)
                    raise RunFailure(f"the config directory swap failed ({exc}); the database swap was undone, "
                                     "the target is as it was") from None
            swapped_at = timezone.now()
            until = swapped_at + timedelta(hours=settings.RESTORE_ROLLBACK_WINDOW_HOURS)
            RestoreRun.objects.filter(pk=self.run.pk).update(swapped_at=swapped_at, rollback_until=until)
            self.run.swapped_at, self.run.rollback_until = swapped_at, until
            audit_record(actor=None, action="restore.swapped", obj=self.run,
                         details=_details(self.run, **done, rollback_until=until))
        ms = (timezone.now() - now).total_seconds() * 1000
        parts = []
        if "database" in done:
            parts.append(f"{done['database']['database']} swapped in {done['database']['duration_s'] * 1000:.0f} ms "
                         f"({done['database']['sessions_terminated']} sessions ended); the previous one is kept as "
                         f"{done['database']['moved_aside'] or 'nothing (it did not exist)'}")
        if "config" in done:
            parts.append(f"config directory swapped; the previous one is kept as "
                         f"{done['config']['moved_aside'] or 'nothing'}")
        self.steps.finish("swap", detail="; ".join(parts) + f" (step {ms:.0f} ms)", data=done)
        self.save_results(swap=done)
        if self.run.needs_checklist:
            create_recovery_checks(self.run)

    def health(self) -> None:
        name = "health checks"
        self.steps.start(name)
        checks = list(self.target.health_checks.all())
        deadline = time.monotonic() + settings.RESTORE_HEALTH_WAIT_SECONDS
        attempt = 0
        while True:
            attempt += 1
            connectivity = database_connectivity(self.url) if self.run.restores_database else None
            results = healthchecks.run_health_checks(checks, extra_hosts=self.target.health_check_hosts)
            healthy = (connectivity is None or connectivity["ok"]) and all(r.ok for r in results)
            refused = any(r.refused for r in results)
            if healthy or refused or time.monotonic() >= deadline:
                break
            self.steps.progress(name, min(0.9, attempt / 20), detail=f"attempt {attempt}: not healthy yet, retrying")
            time.sleep(2)
        health = {"attempts": attempt, "connectivity": connectivity, "health_checks": [r.as_dict() for r in results]}
        self.save_results(health=health)
        if self.run.needs_checklist:
            evaluate_recovery_checks(self.run)
        if not healthy:
            failing = [r for r in results if not r.ok]
            why = (connectivity["error"] if connectivity and not connectivity["ok"]
                   else f"{failing[0].url}: {failing[0].error}")
            raise RunFailure(f"the health checks failed after the swap ({why}); the restored data is live, the "
                             "previous state is kept for a rollback")
        healthy_at = timezone.now()
        described = ", ".join(f"{r.url} → {r.status}" for r in results) or "no health URL configured"
        self.steps.finish(name, detail=(f"database answers ({connectivity['detail']}); " if connectivity else "")
                          + described + (f" after {attempt} attempts" if attempt > 1 else ""))
        self.succeed(healthy_at)

    def succeed(self, healthy_at) -> None:
        run = self.run
        rto = (healthy_at - run.created_at).total_seconds()
        rpo = (run.swapped_at - run.artifact.created_at).total_seconds()
        with transaction.atomic():
            if not _transition(run, RestoreRun.State.RUNNING, RestoreRun.State.SUCCEEDED, healthy_at=healthy_at,
                               finished_at=timezone.now(), rto_seconds=rto, rpo_seconds=rpo, percent=100,
                               eta_seconds=None):
                raise RunFailure("the run was marked failed while it worked (its worker was presumed dead)")
            audit_record(actor=None, action="restore.succeeded", obj=run,
                         details=_details(run, rto_seconds=round(rto, 3), rpo_seconds=round(rpo, 3),
                                          rollback_until=run.rollback_until))


def database_connectivity(url: str) -> dict:
    """Connect to the live database and ask it something: the first item of the post-recovery checklist."""
    started = time.monotonic()
    try:
        with psycopg.connect(url, connect_timeout=10, application_name="drpanel-health") as conn:
            row = conn.execute("SELECT current_database(), current_setting('server_version')").fetchone()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return {"ok": False, "error": f"cannot connect: {first}", "detail": "", "ms": 0}
    ms = int((time.monotonic() - started) * 1000)
    return {"ok": True, "error": "", "detail": f"{row[0]} on PostgreSQL {row[1]}, {ms} ms", "ms": ms,
            "checked_at": timezone.now().isoformat()}


# --- failure -----------------------------------------------------------------------------------


def restore_fail(run_id, message: str, *, expected=(RestoreRun.State.RUNNING,)) -> bool:
    """Mark a run failed (from the worker, a failure callback or the reconciler) and tidy its databases.

    Before the swap the side database and the new config directory are dropped: the target
    is untouched. After the swap, the restored state stays live and the previous one is
    kept for a rollback. Returns False if the run was no longer in ``expected``.
    """
    run = RestoreRun.objects.select_related("target", "artifact", "requested_by").get(pk=run_id)
    with transaction.atomic():
        if not _transition(run, list(expected), RestoreRun.State.FAILED, finished_at=timezone.now(),
                           error=message[:4000], eta_seconds=None, needs_cleanup=True):
            return False
        audit_record(actor=None, action="restore.failed", obj=run, outcome="failure",
                     details=_details(run, error=message[:500], target_untouched=run.swapped_at is None))
    tidy_failed(run)
    return True


def tidy_failed(run: RestoreRun) -> list[str]:
    """Bring a failed run's databases and directories to a consistent state (reconcile, under the swap lock)."""
    actions: list[str] = []
    with target_lock(run.target_id):
        run.refresh_from_db()
        try:
            if run.restores_database:
                url = secrets.resolve(run.target.database_ref)
                reconciled = pgops.reconcile_swap(url, run.pk)
                actions += reconciled.actions
                if reconciled.found in (pgops.SwapState.SWAPPED, pgops.SwapState.ROLLED_BACK) and not run.swapped_at:
                    # The swap committed but the worker died before recording it.
                    now = timezone.now()
                    until = now + timedelta(hours=settings.RESTORE_ROLLBACK_WINDOW_HOURS)
                    RestoreRun.objects.filter(pk=run.pk).update(swapped_at=now, rollback_until=until)
                    actions.append("the swap had happened: the restored database is live, rollback possible")
            if run.restores_config and run.target.config_dir:
                actions += configs.reconcile_config_swap(run.target.config_dir, run.pk)
        except (pgops.PgOpsError, secrets.SecretReferenceError, configs.ConfigSwapError, OSError) as exc:
            actions.append(f"could not finish: {exc}")
            RestoreRun.objects.filter(pk=run.pk).update(results={**run.results, "reconcile": actions})
            return actions
        RestoreRun.objects.filter(pk=run.pk).update(needs_cleanup=False,
                                                    results={**run.results, "reconcile": actions})
        if actions:
            audit_record(actor=None, action="restore.reconciled", obj=run, details=_details(run, actions=actions))
    return actions


# --- rollback ------------------------------------------------------------------------------------


def rollback_blocker(run: RestoreRun, now=None) -> str | None:
    """Why ``run`` cannot be rolled back now, or None when it can."""
    now = now or timezone.now()
    if run.state not in (RestoreRun.State.SUCCEEDED, RestoreRun.State.FAILED) or not run.swapped_at:
        return f"only a restore that was swapped in can be rolled back (this one is {run.get_state_display()})"
    if run.copies_dropped_at or not run.rollback_until or run.rollback_until <= now:
        return "the rollback window has passed: the pre-restore copy is gone"
    later = RestoreRun.objects.filter(target_id=run.target_id, swapped_at__gt=run.swapped_at).exclude(
        state=RestoreRun.State.ROLLED_BACK).exclude(pk=run.pk).first()
    if later is not None:
        return f"a later restore (run {later.short_id}) replaced this one: roll that one back first"
    active = RestoreRun.objects.filter(target_id=run.target_id, state__in=RestoreRun.ACTIVE_STATES).first()
    if active is not None:
        return f"a restore into {run.target.name} is in flight (run {active.short_id}): wait for it"
    return None


def restore_rollback(*, actor, run: RestoreRun, password: str, request=None) -> RestoreRun:
    """Swap the pre-restore state back (a manager holding ``approve_restore`` on the target, password re-entered).

    Timed and audited. Raises ``Denied``, ``PasswordRefused`` or ``PasswordLocked``, or ``RestoreConflict``.
    """
    require_cap(actor, Cap.VIEW_PANEL, action="restore.rollback", obj=run)
    if not has_object_right(actor, APPROVE_RESTORE, run.target):
        raise Denied("Rolling back needs approve_restore on this target.", need=APPROVE_RESTORE, obj=run,
                     action="restore.rollback")
    password_confirm(actor=actor, password=password, purpose="restore.rollback", obj=run, request=request,
                     details=_details(run))
    started = time.perf_counter()
    done: dict = {}
    failure = None
    with target_lock(run.target_id):
        run = RestoreRun.objects.select_related("target", "artifact", "requested_by").get(pk=run.pk)
        blocker = rollback_blocker(run)
        if blocker:
            raise RestoreConflict(blocker)
        try:
            if run.restores_database:
                done["database"] = pgops.swap_back(secrets.resolve(run.target.database_ref), run.pk).as_dict()
            if run.restores_config:
                done["config"] = configs.swap_back_config_dir(run.target.config_dir, run.pk).as_dict()
        except (pgops.PgOpsError, configs.ConfigSwapError, secrets.SecretReferenceError, OSError) as exc:
            failure = exc
        if failure is None:
            seconds = time.perf_counter() - started
            _transition(run, [RestoreRun.State.SUCCEEDED, RestoreRun.State.FAILED], RestoreRun.State.ROLLED_BACK,
                        rolled_back_at=timezone.now(), rolled_back_by=actor, rollback_seconds=seconds)
            audit_record(actor=actor, action="restore.rolled_back", obj=run, request=request,
                         details=_details(run, rolled_back_by=actor.get_username(), seconds=round(seconds, 4),
                                          reauthenticated=True, **done))
            return run
    with transaction.atomic():
        audit_record(actor=actor, action="restore.rollback_failed", obj=run, outcome="failure", request=request,
                     details=_details(run, error=str(failure)[:500], done=done))
    raise RestoreConflict(f"the rollback failed: {failure}"
                          + (" (the database was swapped back)" if "database" in done else ""))


def restore_copies_drop_due(now=None) -> int:
    """Drop the pre-restore (or, after a rollback, the restored) copies of runs whose window passed (cron)."""
    now = now or timezone.now()
    due = RestoreRun.objects.filter(swapped_at__isnull=False, copies_dropped_at__isnull=True, rollback_until__lte=now,
                                    state__in=[RestoreRun.State.SUCCEEDED, RestoreRun.State.FAILED,
                                               RestoreRun.State.ROLLED_BACK]).select_related("target")
    count = 0
    for run in due:
        dropped = []
        with target_lock(run.target_id):
            try:
                if run.restores_database:
                    url = secrets.resolve(run.target.database_ref)
                    for kind in (pgops.CopyKind.PRE, pgops.CopyKind.FAILED):
                        if pgops.drop_copy(url, run.pk, kind):
                            dropped.append(pgops.copy_name(pgops.database_name(url), run.pk, kind))
                if run.restores_config and run.target.config_dir:
                    for kind in (configs.ConfigCopyKind.PRE, configs.ConfigCopyKind.FAILED):
                        if configs.drop_config_copy(run.target.config_dir, run.pk, kind):
                            dropped.append(str(configs.config_copy_path(run.target.config_dir, run.pk, kind)))
            except (pgops.PgOpsError, secrets.SecretReferenceError, configs.ConfigSwapError, OSError) as exc:
                log.warning("cannot drop the copies of restore %s: %s", run.pk, exc)
                continue
            RestoreRun.objects.filter(pk=run.pk).update(copies_dropped_at=timezone.now())
            audit_record(actor=None, action="restore.copies_dropped", obj=run,
                         details={"run": str(run.pk), "target": run.target.name, "dropped": dropped,
                                  "window_hours": settings.RESTORE_ROLLBACK_WINDOW_HOURS})
            count += 1
    return count


# --- the post-recovery checklist -----------------------------------------------------------------


def create_recovery_checks(run: RestoreRun) -> None:
    """The ten items of the old guide's post-recovery checklist for this run (once)."""
    for position, (code, title, automatic) in enumerate(RECOVERY_ITEMS):
        RecoveryCheck.objects.get_or_create(run=run, code=code, defaults={
            "position": position, "title": title, "automatic": automatic})


def _decide(check: RecoveryCheck, status: str, summary: str, evidence: list[dict]) -> None:
    if check.status == status and check.summary == summary[:500]:
        return
    with transaction.atomic():
        # Conditional: a person's tick (done) is never overwritten by the panel.
        changed = RecoveryCheck.objects.filter(pk=check.pk).exclude(status=RecoveryCheck.Status.DONE).update(
            status=status, summary=summary[:500], evidence=evidence)
        if changed and status != RecoveryCheck.Status.PENDING:
            audit_record(actor=None, action=f"restore.checklist_{status}", obj=check.run,
                         details={"run": str(check.run_id), "item": check.code, "summary": summary[:300],
                                  "evidence": evidence})


def evaluate_recovery_checks(run: RestoreRun) -> None:
    """Decide the automatic items from the run's evidence (and the catalog, for backups re-enabled)."""
    run.refresh_from_db()
    results = run.results or {}
    page = f"/restores/runs/{run.pk}/"
    checks = {c.code: c for c in run.recovery_checks.all()}
    health = results.get("health") or {}
    if "database_connectivity" in checks:
        connectivity = health.get("connectivity")
        check = checks["database_connectivity"]
        if not run.restores_database:
            _decide(check, RecoveryCheck.Status.PENDING, "config-only restore: the database was not restored; "
                    "tick it once you have checked", [])
        elif connectivity:
            _decide(check, RecoveryCheck.Status.PASSED if connectivity["ok"] else RecoveryCheck.Status.FAILED,
                    connectivity["detail"] if connectivity["ok"] else connectivity["error"],
                    [{"label": "health step of this run", "url": page + "#step-health-checks"}])
    if "tables_intact" in checks:
        check = checks["tables_intact"]
        counts = results.get("row_counts")
        if not run.restores_database:
            _decide(check, RecoveryCheck.Status.PENDING, "config-only restore: no table was restored", [])
        elif counts:
            bad = [c for c in counts if not c["ok"]]
            _decide(check, RecoveryCheck.Status.FAILED if bad else RecoveryCheck.Status.PASSED,
                    f"{len(counts) - len(bad)} of {len(counts)} tables hold the manifest's exact row counts "
                    f"({sum(c['actual'] or 0 for c in counts)} rows), counted before the swap",
                    [{"label": "row counts of this run", "url": page + "#step-row-counts"}])
        elif counts == []:
            _decide(check, RecoveryCheck.Status.PENDING, "the manifest has no row counts: check by hand", [])
    if "application_running" in checks:
        check = checks["application_running"]
        urls = health.get("health_checks")
        if urls:
            bad = [h for h in urls if not h["ok"]]
            _decide(check, RecoveryCheck.Status.FAILED if bad else RecoveryCheck.Status.PASSED,
                    "; ".join(f"{h['url']} → {h['status'] or h['error']}" for h in urls),
                    [{"label": "health step of this run", "url": page + "#step-health-checks"}])
        elif urls == []:
            _decide(check, RecoveryCheck.Status.PENDING, "the target has no health URL: check by hand", [])
    if "backups_reenabled" in checks:
        _evaluate_backups(run, checks["backups_reenabled"])


def _evaluate_backups(run: RestoreRun, check: RecoveryCheck) -> None:
    system = run.target.system
    if system is None:
        _decide(check, RecoveryCheck.Status.PENDING, "this target names no system: tick it once backups run again", [])
        return
    if not system.schedule_enabled:
        _decide(check, RecoveryCheck.Status.PENDING, f"the backup schedule of {system.name} is disabled", [])
        return
    since = run.swapped_at or run.finished_at or run.created_at
    backup = BackupRun.objects.filter(system=system, kind=Artifact.Kind.FULL, state=BackupRun.State.SUCCEEDED,
                                      finished_at__gt=since).order_by("finished_at").first()
    if backup is None:
        _decide(check, RecoveryCheck.Status.PENDING, f"waiting for the first full backup of {system.name} "
                "after the restore", [])
        return
    _decide(check, RecoveryCheck.Status.PASSED,
            f"schedule enabled; full backup {str(backup.pk)[:8]} of {system.name} succeeded at "
            f"{backup.finished_at:%Y-%m-%d %H:%M:%S} UTC, after the restore",
            [{"label": f"backup run {str(backup.pk)[:8]}", "url": f"/backups/runs/{backup.pk}/",
              "object_type": "backups.backuprun", "object_id": str(backup.pk)}])


def recovery_checks_refresh(run: RestoreRun, *, actor=None, request=None) -> RestoreRun:
    """Check the automatic items again (the database and health URLs answer now? a backup ran since?)."""
    if actor is not None:
        require_cap(actor, Cap.TICK_CHECKLISTS, action="restore.checklist_refresh", obj=run)
    if not run.recovery_checks.exists() or run.state == RestoreRun.State.ROLLED_BACK:
        return run
    if run.restores_database:
        with contextlib.suppress(secrets.SecretReferenceError):
            url = secrets.resolve(run.target.database_ref)
            health = dict((run.results or {}).get("health") or {})
            health["connectivity"] = database_connectivity(url)
            health["health_checks"] = [r.as_dict() for r in healthchecks.run_health_checks(
                run.target.health_checks.all(), extra_hosts=run.target.health_check_hosts)]
            results = {**(run.results or {}), "health": health}
            RestoreRun.objects.filter(pk=run.pk).update(results=results)
    evaluate_recovery_checks(run)
    if actor is not None:
        # The panel's decisions are audited as they change; this records who asked for them again.
        with transaction.atomic():
            audit_record(actor=actor, action="restore.checklist_refreshed", obj=run, request=request, details={
                "run": str(run.pk), "statuses": dict(run.recovery_checks.values_list("code", "status"))})
    return run


def recovery_checks_refresh_open(limit: int = 20) -> int:
    """Cron: re-evaluate the "backups re-enabled" item of recent runs still waiting for it."""
    count = 0
    pending = RecoveryCheck.objects.filter(code="backups_reenabled", status=RecoveryCheck.Status.PENDING,
                                           run__state__in=[RestoreRun.State.SUCCEEDED, RestoreRun.State.FAILED]
                                           ).select_related("run__target__system").order_by("-run__created_at")
    for check in pending[:limit]:
        _evaluate_backups(check.run, check)
        count += 1
    return count


def recovery_check_tick(*, actor, check: RecoveryCheck, note: str, request=None) -> RecoveryCheck:
    """Tick an item by hand with a note (operators, managers); the panel's own decisions cannot be overridden."""
    require_cap(actor, Cap.TICK_CHECKLISTS, action="restore.checklist_tick", obj=check.run)
    note = (note or "").strip()
    if not note:
        raise RestoreError("say what you checked in the note")
    if check.status in (RecoveryCheck.Status.PASSED, RecoveryCheck.Status.FAILED):
        raise RestoreConflict(f"“{check.title}” was decided by the panel from its evidence ({check.status}); "
                              "use “Check again” once it is fixed")
    if check.run.state == RestoreRun.State.ROLLED_BACK:
        raise RestoreConflict("this restore was rolled back: its post-recovery checklist is closed")
    with transaction.atomic():
        # Conditional: two people ticking at once record one tick.
        changed = RecoveryCheck.objects.filter(pk=check.pk, status=RecoveryCheck.Status.PENDING).update(
            status=RecoveryCheck.Status.DONE, note=note[:2000], ticked_by=actor, ticked_at=timezone.now())
        if not changed:
            raise RestoreConflict(f"“{check.title}” is already ticked")
        audit_record(actor=actor, action="restore.checklist_ticked", obj=check.run, request=request,
                     details={"run": str(check.run_id), "item": check.code, "title": check.title, "note": note[:300]})
    check.refresh_from_db()
    return check
