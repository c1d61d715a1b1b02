"""Restore runs in the worker: the execution of a queued run, and what happens when it fails.

The worker's path (``restore_run_execute``, the body of ``restores.jobs.restore_run_job``):

0. **check again** — the rights were checked when the run was asked for and approved; the
   worker checks them again before touching anything (``check_still_allowed``): the
   requester is still active and still holds ``restore_to_target`` on the target; for
   production, the approval is consumed, bound to exactly this restore, given by someone
   else who is still active and still holds ``approve_restore``, and younger than
   ``DRPANEL_APPROVAL_EXECUTION_MINUTES``. Otherwise the run is refused (audited) and fails
   with the reason, the target untouched;
1. **fetch and decrypt** — the artifact is materialised into a temporary file from the first
   intact copy (``restores.materialize``); a corrupted, truncated or wrong-key copy is refused
   before anything is restored. When the temporary disk lacks room (``pg.plan_restore``)
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

A run from a recovery point (database-only, or whole-server into a server target) takes the paths of
``restores.execution_points`` instead of steps 1-2 (database-only) or of everything but the health checks
(whole-server: no swap, no rollback).

A run that fails (here, in a failure callback or in the reconciler) goes through
``restore_fail``; ``tidy_failed`` brings its databases and directories to a consistent
state. ``RESTORE_RUNS`` is the restore kind of the run runtime (``drpanel.runs``); its job's
time limit follows the artifact's size (``restore_timeout``). The pre-restore copies stay for
``DRPANEL_ROLLBACK_WINDOW_HOURS`` (``restores.rollback``).
"""

import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone

from backups.models import Artifact, OffsitePackage
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import endpoints, runs, runtime, secrets
from drpanel.models import Approval
from drpanel.permissions import has_object_right
from drpanel.scrub import scrub
from restores import configs, healthchecks, materialize, pg, plainsql, roles, sanity
from restores.execution_points import PointInTimeSteps, ServerRefused, point_plan
from restores.models import APPROVE_RESTORE, RESTORE_TO_TARGET, RestoreRun
from restores.recovery_checks import create_recovery_checks, database_connectivity, evaluate_recovery_checks
from restores.runstate import RunFailure, audit_details, current_binding_hash, transition
from restores.swaplock import target_lock
from restores.verification_levels import manifest_counts

log = logging.getLogger(__name__)

RESTORE_QUEUE = "restore"
STREAMABLE = (Artifact.Format.PG_CUSTOM,)


class RunRefused(RunFailure):
    """The worker's own check refused the run before it touched anything (a right or an approval lapsed)."""


def restore_timeout(size: int) -> int:
    """The RQ time limit of a restore of ``size`` bytes: a base, plus the size at a conservative throughput, capped.

    A flat day would let a wedged small restore hold its target's one active slot for 24 h;
    a large one still gets the time its bytes need.
    """
    per_second = settings.RESTORE_TIMEOUT_MB_PER_SECOND * 1024 * 1024
    return int(min(settings.RESTORE_TIMEOUT_MAX_SECONDS,
                   settings.RESTORE_TIMEOUT_BASE_SECONDS + max(0, size) / per_second))


class RestoreRuns(runs.RunKind):
    """Restore runs in the run runtime: failed through ``restore_fail``, tidied through ``tidy_failed``."""

    name = "restore"
    model = RestoreRun
    queue = RESTORE_QUEUE
    job = "restores.jobs.restore_run_job"
    timeout = 24 * 3600
    on_failure = "restores.jobs.restore_job_failed"
    queued_since = "queued_at"
    reconciled = True

    def timeout_for(self, run_id) -> int:
        run = RestoreRun.objects.select_related("artifact", "config_artifact").filter(pk=run_id).first()
        if run is None:
            return self.timeout
        if run.is_point_in_time:
            # The whole server is recovered, then one database dumped and restored: the base backup's size, twice.
            if run.recovery_location_id:
                # From the off-site copy: every package is fetched and decrypted first (its stored size), then the
                # plain base backup is recovered.
                sizes = OffsitePackage.objects.filter(
                    system_id=run.recovery_system_id, location_id=run.recovery_location_id,
                    status=OffsitePackage.Status.OK).aggregate(stored=Sum("size"), plain=Max("plaintext_size"))
                return restore_timeout((sizes["stored"] or 0) + 2 * (sizes["plain"] or 0))
            base = Artifact.objects.filter(system_id=run.recovery_system_id, kind=Artifact.Kind.BASE,
                                           status=Artifact.Status.AVAILABLE).order_by("-created_at").first()
            return restore_timeout(2 * ((base.size or 0) if base else 0))
        size = sum((a.plaintext_size or 0) + (a.size or 0) for a in (run.artifact, run.config_artifact) if a)
        return restore_timeout(size)

    def fail(self, run_id, reason: str, *, expected) -> bool:
        return restore_fail(run_id, reason, expected=expected)

    def tidy(self, run) -> None:
        tidy_failed(run)

    def pool_for(self, run_id) -> str:
        """A restore runs in its target's pool, else in the pool of its artifact's system (docs/many-hosts.md)."""
        pools = (RestoreRun.objects.filter(pk=run_id)
                 .values_list("target__worker_pool", "artifact__system__worker_pool",
                              "recovery_system__worker_pool").first())
        return next((pool for pool in pools or () if pool), "")

    def job_options(self, run_id) -> tuple[int, str]:
        """The time limit and pool of an artifact's restore from the few columns they need, in one query (the
        click's path to its job: loading the run and both artifacts whole, manifests and all, took longer)."""
        row = (RestoreRun.objects.filter(pk=run_id)
               .values_list("recovery_kind", "artifact__size", "artifact__plaintext_size", "config_artifact__size",
                            "config_artifact__plaintext_size", "target__worker_pool", "artifact__system__worker_pool")
               .first())
        if row is None or row[0]:
            return super().job_options(run_id)
        size = sum(value or 0 for value in row[1:5])
        return restore_timeout(size), next((pool for pool in row[5:] if pool), "")

    def record_requeue(self, run, details: dict) -> None:
        audit_record(actor=None, action=AuditAction.RESTORE_REQUEUED, obj=run, details=details)


RESTORE_RUNS = runs.register(RestoreRuns())


def enqueue_restore(run_id) -> None:
    """Put the run's job on the ``restore`` queue now and remember its id."""
    RESTORE_RUNS.enqueue(run_id)


def _plan(run: RestoreRun) -> list[tuple[str, int]]:
    steps = []
    if run.is_point_in_time:
        return point_plan(run)
    if run.restores_database:
        steps += [("fetch and decrypt", 25), ("roles", 2), ("restore into side database", 45),
                  ("database owner and grants", 1), ("sanity checks", 4), ("row counts", 4)]
    if run.restores_config:
        weight = 4 if run.restores_database else 30
        steps += [("config: fetch and decrypt", weight), ("config: extract", weight)]
    steps += [("swap", 2), ("health checks", 10)]
    return steps


def check_still_allowed(run: RestoreRun, now=None) -> None:
    """The worker's own check, when the run starts, that its requester and approval still allow it.

    Raises ``RunRefused`` with the reason. People and rights are read afresh from the
    database: a right withdrawn or an account disabled since the request counts.
    """
    now = now or timezone.now()
    requester = type(run.requested_by).objects.get(pk=run.requested_by_id)
    if not requester.is_active:
        raise RunRefused(f"refused: the requester {requester.get_username()} is no longer active")
    if not has_object_right(requester, RESTORE_TO_TARGET, run.target):
        raise RunRefused(f"refused: the requester {requester.get_username()} no longer holds restore_to_target "
                         f"on {run.target.name}")
    if not run.target.is_production:
        return
    approval = Approval.objects.select_related("decided_by").filter(pk=run.approval_id).first()
    if approval is None:
        raise RunRefused("refused: a production restore needs an approval, and this run has none")
    if approval.state != Approval.State.CONSUMED or not approval.decided_by_id:
        raise RunRefused(f"refused: its approval is {approval.state}, not approved and consumed")
    if approval.decided_by_id == run.requested_by_id:
        raise RunRefused("refused: the approval was given by the requester")
    if not (approval.binding_hash == run.binding_hash == current_binding_hash(run)):
        raise RunRefused("refused: the artifact, target or mode changed after the approval (it no longer covers "
                         "this restore)")
    approver = approval.decided_by
    if not approver.is_active:
        raise RunRefused(f"refused: the approver {approver.get_username()} is no longer active")
    if not has_object_right(approver, APPROVE_RESTORE, run.target):
        raise RunRefused(f"refused: the approver {approver.get_username()} no longer holds approve_restore on "
                         f"{run.target.name}")
    window = timedelta(minutes=settings.APPROVAL_EXECUTION_MINUTES)
    decided = approval.decided_at or approval.consumed_at
    if decided is None or now - decided > window:
        age = f"{(now - decided).total_seconds() / 60:.0f} minutes" if decided else "of unknown age"
        raise RunRefused(f"refused: the approval is {age} old, past the execution window of "
                         f"{settings.APPROVAL_EXECUTION_MINUTES} minutes (DRPANEL_APPROVAL_EXECUTION_MINUTES): "
                         "ask for the restore again")


def restore_run_execute(run_id) -> RestoreRun:
    """Execute a queued restore (the job's body). Never raises for a failed restore: the run records it."""
    with transaction.atomic():
        # Conditional transition: a job delivered twice runs once.
        now = timezone.now()
        started = RestoreRun.objects.filter(pk=run_id, state=RestoreRun.State.QUEUED).update(
            state=RestoreRun.State.RUNNING, started_at=now, heartbeat_at=now, progress_at=now,
            worker_host=runs.worker_host())
        run = RestoreRun.objects.select_related("artifact__system", "config_artifact", "recovery_system", "target",
                                                "requested_by").get(pk=run_id)
        if not started:
            return run
        audit_record(actor=None, action=AuditAction.RESTORE_STARTED, obj=run,
                     details=audit_details(run, worker_host=run.worker_host))
    steps = runs.StepList(run, _plan(run))
    with runs.Heartbeat(run):
        try:
            check_still_allowed(run)
            _Execution(run, steps).execute()
        except Exception as exc:
            message = scrub(str(exc) or type(exc).__name__)
            if isinstance(exc, RunRefused | ServerRefused):
                with transaction.atomic():
                    audit_record(actor=None, action=AuditAction.RESTORE_REFUSED, obj=run, outcome="failure",
                                 details=audit_details(run, reason=message[:500], target_untouched=True))
            if not isinstance(exc, RunFailure | pg.PgOpsError | materialize.MaterializeError
                              | configs.ConfigArchiveRefused | configs.ConfigSwapError
                              | secrets.SecretReferenceError):
                log.exception("restore run %s failed", run.pk)
                message = f"unexpected error: {type(exc).__name__}: {message}"
            steps.fail_open(message[:1000])
            restore_fail(run.pk, message)
    run.refresh_from_db()
    return run


class _Execution(PointInTimeSteps):
    """The worker's path for one run (see the module docstring); raises ``RunFailure`` and friends."""

    def __init__(self, run: RestoreRun, steps: runs.StepList):
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
            if self.run.is_whole_server:
                self.url = secrets.resolve(self.target.database_ref)
                self.whole_server()
                self.health()
                return
            if self.run.is_point_in_time:
                self.url = secrets.resolve(self.target.database_ref)
                self.point_in_time()
            elif self.run.restores_database:
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
        plan = pg.plan_restore(size)
        note = plan.reason
        if plan.mode == "stream" and artifact.format not in STREAMABLE:
            raise RunFailure(f"{plan.reason.split(':')[0]}; and this {artifact.get_format_display()} artifact "
                             "cannot be streamed: free some space and run the restore again")
        RestoreRun.objects.filter(pk=self.run.pk).update(plan={**plan.as_dict(), "format": artifact.format})
        fetch, restore = "fetch and decrypt", "restore into side database"
        stored = artifact.size or 0

        def fetched(done: int) -> None:
            self.steps.progress(fetch, done / stored if stored else None, bytes=done)

        def restored(progress: pg.RestoreProgress) -> None:
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
            server_roles = self.create_roles()
            self.steps.start(restore, detail=f"pg_restore -j{plan.jobs} from the file"
                             if made.content == "pg_custom" else "psql, one transaction")
            if made.content == "pg_custom":
                result = pg.restore_to_side_database(self.url, self.run.pk, made.path, jobs=plan.jobs,
                                                     on_progress=restored)
            else:
                result = plainsql.restore_plain_sql(self.url, self.run.pk, made.path, on_progress=lambda d, t:
                                                    self.steps.progress(restore, d / t if t else None, bytes=d))
        else:
            copy = materialize.pick_copy(artifact)
            # Streamed: the roles are created before the chunks are read (they authenticate as they go).
            server_roles = self.create_roles()
            self.steps.start(fetch, detail=f"streaming from {copy.location.name}: {note}")
            self.steps.start(restore, detail="pg_restore -j1 from the decrypting stream (low-disk fallback)")
            stream = materialize.plaintext_stream(artifact, copy, progress=fetched)
            result = pg.restore_to_side_database(self.url, self.run.pk, stream, bytes_total=size,
                                                 on_progress=restored)
            self.steps.finish(fetch, bytes=stored, detail=f"{stored} bytes streamed from {copy.location.name}, "
                                                          "SHA-256 matches, every chunk authenticated")
        self.side = result.database
        self.steps.finish(restore, detail=f"restored into {result.database} in {result.duration_s:.1f} s"
                          + (f" ({len(result.warnings)} warnings)" if getattr(result, "warnings", None) else ""),
                          data=result.as_dict())
        self.adopt_database(server_roles)
        side_url = runtime.with_database_name(self.url, self.side)
        self.checks(side_url)

    def create_roles(self):
        """Authenticate the artifact's roles, then create those the target's server lacks (``restores.roles``).

        Runs before pg_restore touches the target's server; a changed globals section is refused here.
        """
        name = "roles"
        self.steps.start(name)
        try:
            found = roles.roles_check(self.run.artifact)
        except roles.RolesRefused as exc:
            raise RunFailure(str(exc)) from None
        if found is None:
            section = (self.run.artifact.manifest or {}).get("globals") or {}
            why = f"the backup could not take them: {section['error']}" if section.get("error") else \
                "the artifact carries no roles (made before roles were taken, or not by this panel)"
            for skipped in (name, "database owner and grants"):
                self.steps.skip(skipped, why)
            return None
        return self.create_found_roles(found)

    def create_found_roles(self, found: roles.BackupRoles) -> roles.BackupRoles:
        """Create the roles of ``found`` the target's server lacks; report the rest (the "roles" step is running)."""
        name = "roles"
        try:
            report = roles.roles_create(self.url, found.globals)
        except roles.RolesRefused as exc:
            raise RunFailure(str(exc)) from None
        self.save_results(roles=report.as_dict())
        self.steps.finish(name, detail=report.summary(), data=report.as_dict())
        if report.created or report.differences or report.withheld or report.memberships_not_granted:
            with transaction.atomic():
                audit_record(actor=None, action=AuditAction.RESTORE_ROLES_CREATED, obj=self.run,
                             details=audit_details(self.run, roles=report.as_dict()))
        return found

    def adopt_database(self, found) -> None:
        """On a server where ``<db>`` is new, the side database takes the backup's owner, comment and grants."""
        if found is None:
            return
        name = "database owner and grants"
        self.steps.start(name)
        try:
            detail = roles.database_adopt(self.url, self.side, found.database)
        except roles.RolesRefused as exc:
            raise RunFailure(f"{exc}; the target is untouched") from None
        self.steps.finish(name, detail=detail)

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
        if self.run.is_point_in_time:
            return  # no manifest: the rows are those of the recovered moment
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
        try:  # the row was checked when saved; the deployment's roots may have changed since
            endpoints.check_config_path(self.target.config_dir, what="config directory")
        except endpoints.EndpointRefused as exc:
            raise RunFailure(str(exc)) from None
        self.steps.start(fetch, detail=f"reading config artifact {artifact.short_id}")
        made = materialize.materialize(artifact, run_id=self.run.pk)
        self.files.append(made.path)
        self.steps.finish(fetch, bytes=made.stored_size, data=made.as_dict(),
                          detail=f"{made.stored_size} bytes from {made.copy.location.name}, SHA-256 matches, "
                                 "every chunk authenticated")
        self.steps.start(extract, detail=f"into {self.target.config_dir}.restore-{pg.run_tag(self.run.pk)}")
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
                result = pg.swap_in(self.url, self.run.pk)
                done["database"] = result.as_dict()
            if self.run.restores_config:
                try:
                    done["config"] = configs.swap_config_dir(self.target.config_dir, self.run.pk).as_dict()
                except (configs.ConfigSwapError, OSError) as exc:
                    if self.run.restores_database:
                        # A full restore is both or neither: put the database back.
                        pg.swap_back(self.url, self.run.pk)
                        pg.drop_copy(self.url, self.run.pk, pg.CopyKind.FAILED)
                    raise RunFailure(f"the config directory swap failed ({exc}); the database swap was undone, "
                                     "the target is as it was") from None
            swapped_at = timezone.now()
            until = swapped_at + timedelta(hours=settings.RESTORE_ROLLBACK_WINDOW_HOURS)
            RestoreRun.objects.filter(pk=self.run.pk).update(swapped_at=swapped_at, rollback_until=until)
            self.run.swapped_at, self.run.rollback_until = swapped_at, until
            audit_record(actor=None, action=AuditAction.RESTORE_SWAPPED, obj=self.run,
                         details=audit_details(self.run, **done, rollback_until=until))
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
            connectivity = (database_connectivity(self.url)
                            if self.run.restores_database or self.run.is_whole_server else None)
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
            if self.run.is_whole_server:
                raise RunFailure(f"the health checks of the new server failed ({why}); it runs on port "
                                 f"{self.target.server_port} in {self.target.server_data_dir}, left as it is to be "
                                 "looked at")
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
        origin = recovered_from(run)
        rpo = (run.swapped_at - origin).total_seconds() if origin else None
        with transaction.atomic():
            if not transition(run, RestoreRun.State.RUNNING, RestoreRun.State.SUCCEEDED, healthy_at=healthy_at,
                              finished_at=timezone.now(), rto_seconds=rto, rpo_seconds=rpo, percent=100,
                              eta_seconds=None):
                raise RunFailure("the run was marked failed while it worked (its worker was presumed dead)")
            audit_record(actor=None, action=AuditAction.RESTORE_SUCCEEDED, obj=run,
                         details=audit_details(run, rto_seconds=round(rto, 3),
                                               rpo_seconds=round(rpo, 3) if rpo is not None else None,
                                               rollback_until=run.rollback_until))


def recovered_from(run: RestoreRun):
    """The moment whose data went live: the artifact's time, or the recovery point's (for latest or a name, the
    last commit replayed; None when the recovered copy did not know it)."""
    if not run.is_point_in_time:
        return run.artifact.created_at
    if run.recovery_time:
        return run.recovery_time
    recovered_to = (run.results.get("recovery") or {}).get("recovered_to")
    return datetime.fromisoformat(recovered_to) if recovered_to else None


def restore_fail(run_id, message: str, *, expected=(RestoreRun.State.RUNNING,)) -> bool:
    """Mark a run failed (from the worker, a failure callback or the reconciler) and tidy its databases.

    Before the swap the side database and the new config directory are dropped: the target
    is untouched. After the swap, the restored state stays live and the previous one is
    kept for a rollback. Returns False if the run was no longer in ``expected``.
    """
    message = scrub(message)
    run = RestoreRun.objects.select_related("target", "artifact", "requested_by").get(pk=run_id)
    with transaction.atomic():
        if not transition(run, list(expected), RestoreRun.State.FAILED, finished_at=timezone.now(),
                          error=message[:4000], eta_seconds=None, needs_cleanup=True):
            return False
        audit_record(actor=None, action=AuditAction.RESTORE_FAILED, obj=run, outcome="failure",
                     details=audit_details(run, error=message[:500], target_untouched=run.swapped_at is None))
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
                reconciled = pg.reconcile_swap(url, run.pk)
                actions += reconciled.actions
                if reconciled.found in (pg.SwapState.SWAPPED, pg.SwapState.ROLLED_BACK) and not run.swapped_at:
                    # The swap committed but the worker died before recording it.
                    now = timezone.now()
                    until = now + timedelta(hours=settings.RESTORE_ROLLBACK_WINDOW_HOURS)
                    RestoreRun.objects.filter(pk=run.pk).update(swapped_at=now, rollback_until=until)
                    actions.append("the swap had happened: the restored database is live, rollback possible")
            if run.restores_config and run.target.config_dir:
                actions += configs.reconcile_config_swap(run.target.config_dir, run.pk)
        except (pg.PgOpsError, secrets.SecretReferenceError, configs.ConfigSwapError, OSError) as exc:
            actions.append(scrub(f"could not finish: {exc}"))
            RestoreRun.objects.filter(pk=run.pk).update(results={**run.results, "reconcile": actions})
            return actions
        RestoreRun.objects.filter(pk=run.pk).update(needs_cleanup=False,
                                                    results={**run.results, "reconcile": actions})
        if actions:
            audit_record(actor=None, action=AuditAction.RESTORE_RECONCILED, obj=run,
                         details=audit_details(run, actions=actions))
    return actions
