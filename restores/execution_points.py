"""Restore runs from a recovery point, in the worker: the steps ``restores.execution._Execution`` takes for them.

- **database-only** (``point_in_time``): the system is recovered at the point into a scratch copy
  (``restores.pitr``); its roles are taken (``pg_dumpall --globals-only``) and the database its URL
  names dumped (``pitr.system_database``: a target may call it otherwise, ``shop`` restored as
  ``shop_staging``); the roles the target's server lacks are created (``restores.roles``: never
  altering one that exists, differences reported), then the usual side database of the target's
  database, owner and grants, checks and swap.
- **whole-server** (``whole_server``): the target host is checked (``restores.wholeserver``: an
  empty directory, a free port, a user that is not root) before anything is written, then the
  cluster is recovered into the target's new data directory, replayed privately, its sanity checks
  run, and it is started for real on the target's port. There is no swap and no rollback: the new
  server had no previous state. A failure before it went live removes what was written. When the
  system's pool (the Barman host) is not the target's, the system's pool recovers into a scratch
  directory (``restores.jobs.ship_send_job``) and ships it here through Redis (``restores.shipping``:
  1 MiB chunks, each with its SHA-256, all checked before anything is extracted; ``restore.shipped``).

Both show the WAL replay while it runs: the step's fraction and detail, and ``results["replay"]``
(the API's ``recovery_point.replay``), from ``pg_last_wal_replay_lsn()`` of the recovering server (of the
Barman host's copy when shipped: its sender says each position through the channel).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psycopg
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backups.barman import BarmanError
from backups.models import Artifact
from backups.server_roles import GlobalsError, parse_globals
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import queues, runs, runtime
from restores import materialize, pg, pitr, roles, sanity, shipping, wholeserver
from restores.models import RestoreRun
from restores.offsite_recovery import OffsiteRecoveryError, offsite_point_check, recovered_from_offsite
from restores.recovery_checks import create_recovery_checks
from restores.runstate import RunFailure, audit_details

RECOVER = "recover to the point"
REPLAY_SAVE_SECONDS = 0.5
REPLAY_SAMPLES_KEPT = 60


def point_plan(run: RestoreRun) -> list[tuple[str, int]]:
    if run.is_whole_server:
        return [("check the target host", 1), (RECOVER, 70), ("sanity checks", 3), ("start the server", 6),
                ("health checks", 10)]
    return [(RECOVER, 40), ("dump the database", 15), ("roles", 2), ("restore into side database", 30),
            ("database owner and grants", 1), ("sanity checks", 3), ("swap", 2), ("health checks", 10)]


def base_backup_for(system, point) -> Artifact:
    """The newest available base backup that ended before ``point`` (for latest or a name: the newest)."""
    bases = Artifact.objects.filter(system=system, kind=Artifact.Kind.BASE, status=Artifact.Status.AVAILABLE)
    if point.kind == "time":
        bases = bases.filter(created_at__lte=point.time)
    base = bases.order_by("-created_at").first()
    if base is None:
        raise RunFailure(f"{point} is before the first base backup of {system.name}: nothing to recover it from; "
                         "the target is untouched")
    return base


class PointInTimeSteps:
    """The recovery-point paths of ``_Execution`` (``self.run``, ``self.steps``, ``self.url``, ``save_results``)."""

    def replay_reporter(self):
        """What follows the replay: the step's fraction and detail, and the samples in ``results["replay"]``."""
        samples: list[dict] = []
        last = [0.0]

        def report(progress: pitr.ReplayProgress) -> None:
            self.steps.progress(RECOVER, progress.fraction, detail=progress.describe())
            now = time.monotonic()
            if now - last[0] < REPLAY_SAVE_SECONDS and progress.in_recovery:
                return
            last[0] = now
            samples.append({**progress.as_dict(), "at": timezone.now().isoformat()})
            del samples[:-REPLAY_SAMPLES_KEPT]
            self.save_results(replay={**progress.as_dict(), "samples": list(samples)})

        return report

    def offsite_base(self, system, location, point):
        """The off-site base package the point is recovered from (its packages are checked again: they may have
        changed since the request); a point they no longer cover fails the run before anything is fetched."""
        try:
            reach = offsite_point_check(system, location, point)
        except OffsiteRecoveryError as exc:
            raise RunFailure(f"the off-site copy at {location.name} cannot recover {point}: {exc}; the target is "
                             "untouched") from None
        self.steps.start(RECOVER, detail=f"fetch, check and decrypt base backup {reach.base.backup_id} and "
                                         f"{len(reach.wal)} WAL packages from {location.name}, then recover to "
                                         f"{point}")
        return reach.base

    def recovered(self, system, point, backup):
        """The scratch copy at the point: from Barman's home, or from the run's off-site location alone."""
        if self.run.recovery_location_id is None:
            return pitr.recovered(system, point, backup_id=backup.manifest["backup_id"],
                                  on_replay=self.replay_reporter())
        return recovered_from_offsite(system, point, location=self.run.recovery_location,
                                      on_replay=self.replay_reporter(), context={"run": str(self.run.pk)})

    def recovery_summary(self, backup, position, last_commit, recover_seconds, start_seconds) -> dict:
        point = self.run.recovery_point
        recovered_to = point.time if point.kind == "time" else last_commit
        return {"point": str(point), "source": self.run.recovery_source,
                "base_backup": backup.manifest.get("backup_id"), "replay_position": position,
                "last_commit": last_commit.isoformat() if last_commit else None,
                "recovered_to": recovered_to.isoformat() if recovered_to else None,
                "recover_seconds": round(recover_seconds, 3), "start_seconds": round(start_seconds, 3)}

    def finish_recovery(self, recovery: dict, last_commit) -> None:
        self.save_results(recovery=recovery)
        self.steps.finish(RECOVER, data=recovery,
                          detail=f"recovered to {recovery['point']}: WAL replayed to {recovery['replay_position']}"
                                 + (f", last commit {last_commit:%Y-%m-%d %H:%M:%S} UTC" if last_commit else "")
                                 + f" ({recovery['recover_seconds']:.1f} s)")

    # --- database-only -------------------------------------------------------------------------

    def point_in_time(self) -> None:
        """Recover the system at the point into a scratch copy, take its roles and dump the system's database from
        it (``pg_dump -Fc`` into the run's work area), create the roles the target lacks, then restore that dump
        into the side database of the target's database (whatever its name) and check it."""
        system, point = self.run.recovery_system, self.run.recovery_point
        try:
            dbname = pitr.system_database(system)
        except BarmanError as exc:
            raise RunFailure(f"the database of {system.name} is unknown: {exc}; the target is untouched") from None
        into = pg.database_name(self.url)
        dump, restore = "dump the database", "restore into side database"
        location = self.run.recovery_location
        if location is None:
            backup = base_backup_for(system, point)
            self.steps.start(RECOVER, detail=f"barman recover of base backup {backup.manifest.get('backup_id')} "
                                             f"to {point}")
        else:
            backup = self.offsite_base(system, location, point)
        path = materialize.temp_path(self.run.pk, "dump")
        self.files.append(path)
        try:
            with self.recovered(system, point, backup) as copy:
                position = copy.replay_position()
                last_commit = copy.query("SELECT pg_last_xact_replay_timestamp()")[0][0] or copy.wal_last_commit
                with copy.connect() as conn:
                    present = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
                if not present:
                    raise RunFailure(f"the recovered {system.name} has no database {dbname} at {point}; "
                                     "the target is untouched")
                self.finish_recovery(self.recovery_summary(backup, position, last_commit, copy.recover_seconds,
                                                           copy.start_seconds), last_commit)
                self.steps.start(dump, detail=f"pg_dump -Fc of {dbname} and the server's roles from the recovered "
                                              "copy")
                copy.dump(dbname, path)
                server_globals, database = copy.globals(), copy.database_properties(dbname)
        except (BarmanError, psycopg.Error) as exc:
            raise RunFailure(f"recovery of {system.name} to {point} failed: {exc}; the target is untouched") from None
        size = path.stat().st_size
        self.steps.finish(dump, bytes=size, detail=f"{size} bytes dumped from {dbname} at {point}, with the "
                                                   "server's roles" + (f", restored as {into}" if into != dbname
                                                                       else ""))
        try:
            found = roles.BackupRoles(globals=parse_globals(server_globals), database=database)
        except (GlobalsError, UnicodeDecodeError) as exc:
            raise RunFailure(f"the recovered server's roles cannot be read: {exc}; the target is untouched") from None
        self.steps.start("roles")
        self.create_found_roles(found)
        plan = pg.plan_restore(size)
        RestoreRun.objects.filter(pk=self.run.pk).update(plan={**plan.as_dict(), "format": "pg_custom"})
        self.steps.start(restore, detail=f"pg_restore -j{plan.jobs} from the dump")
        result = pg.restore_to_side_database(
            self.url, self.run.pk, path, jobs=plan.jobs,
            on_progress=lambda p: self.steps.progress(restore, p.fraction, detail=f"pg_restore: {p.message}"[:200]))
        self.side = result.database
        self.steps.finish(restore, detail=f"restored into {result.database} in {result.duration_s:.1f} s",
                          data=result.as_dict())
        self.adopt_database(found)
        self.checks(runtime.with_database_name(self.url, self.side))

    # --- whole server --------------------------------------------------------------------------

    def whole_server(self) -> None:
        """Check the target host, recover the cluster into its new data directory, check it privately, start it."""
        system, point, target = self.run.recovery_system, self.run.recovery_point, self.target
        name = "check the target host"
        self.steps.start(name)
        try:
            plan = wholeserver.check_host(target, self.url)
        except wholeserver.ServerTargetRefused as exc:
            raise ServerRefused(f"refused before anything was written: {exc}") from None
        self.save_results(server=plan.as_dict())
        self.steps.finish(name, data=plan.as_dict(),
                          detail=f"{plan.data} is {'absent' if plan.create else 'empty'}, port {plan.port} is free, "
                                 f"the server will run as {plan.user.pw_name}")
        backup = base_backup_for(system, point)
        pools = self.run.ship_pools
        dbname = pg.database_name(self.url)
        try:
            with self.recovered_on_host(system, point, backup, plan, pools) as (ready, shipped):
                if shipped is None:
                    position = ready.replay_position()
                    last_commit = (ready.query("SELECT pg_last_xact_replay_timestamp()")[0][0]
                                   or ready.wal_last_commit)
                    recover_seconds, start_seconds = ready.recover_seconds, ready.start_seconds
                else:
                    summary = shipped.summary
                    position, recover_seconds = summary.get("replay_position"), summary.get("recover_seconds", 0)
                    start_seconds = summary.get("start_seconds", 0)
                    last_commit = (datetime.fromisoformat(summary["last_commit"]) if summary.get("last_commit")
                                   else None)
                with ready.connect() as conn:
                    present = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
                if not present:
                    raise wholeserver.ServerTargetRefused(f"the recovered {system.name} has no database {dbname}")
                recovery = self.recovery_summary(backup, position, last_commit, recover_seconds, start_seconds)
                if shipped is not None:
                    recovery["shipped"] = {**shipped.as_dict(), "from_pool": pools[0], "to_pool": pools[1]}
                self.finish_recovery(recovery, last_commit)
                self.private_checks(ready.url(dbname))
        except shipping.ShipRefused as exc:
            with transaction.atomic():
                audit_record(actor=None, action=AuditAction.RESTORE_SHIPPED, obj=self.run, outcome="failure",
                             details=audit_details(self.run, reason=str(exc)[:500], from_pool=pools[0],
                                                   to_pool=pools[1], data_dir=str(plan.data), removed=True))
            raise RunFailure(f"the directory recovered on pool {pools[0]} was refused: {exc}; what was written was "
                             "removed, the target host is as it was") from None
        except (BarmanError, psycopg.Error, wholeserver.ServerTargetRefused) as exc:
            raise RunFailure(f"recovery of {system.name} to {point} into {plan.data} failed: {exc}; what was "
                             "written was removed, the target host is as it was") from None
        name = "start the server"
        self.steps.start(name, detail=f"pg_ctl start on port {plan.port} as {plan.user.pw_name}")
        try:
            seconds = wholeserver.go_live(plan)
        except wholeserver.ServerTargetRefused as exc:
            raise RunFailure(str(exc)) from None
        live = timezone.now()
        RestoreRun.objects.filter(pk=self.run.pk).update(swapped_at=live)
        self.run.swapped_at = live
        self.save_results(server={**plan.as_dict(), "running": True, "started_at": live.isoformat(),
                                  "start_seconds": round(seconds, 3)})
        with transaction.atomic():
            audit_record(actor=None, action=AuditAction.RESTORE_SERVER_STARTED, obj=self.run,
                         details=audit_details(self.run, **plan.as_dict(), replay_position=position))
        self.steps.finish(name, detail=f"the new server runs in {plan.data} on port {plan.port} as "
                                       f"{plan.user.pw_name} ({seconds:.1f} s)")
        if self.run.needs_checklist:
            create_recovery_checks(self.run)

    @contextlib.contextmanager
    def recovered_on_host(self, system, point, backup, plan, pools):
        """The recovered server, started privately in ``plan.data``, and what was shipped (None: recovered here).

        Barman recovers locally only: when the system's pool (the Barman host) is not the target's, the system's
        pool recovers into a scratch directory (``ship_send_job``) and sends it here through Redis
        (``restores.shipping``), checked chunk by chunk before a byte is extracted."""
        backup_id = backup.manifest["backup_id"]
        if pools is None:
            self.steps.start(RECOVER, detail=f"barman recover of base backup {backup_id} to {point} into {plan.data}")
            with wholeserver.recovered_privately(system, point, backup_id, plan,
                                                 on_replay=self.replay_reporter()) as ready:
                yield ready, None
            return
        self.steps.start(RECOVER, detail=f"barman recover of base backup {backup_id} to {point} on pool {pools[0]} "
                                         f"(Barman's home), then shipped to pool {pools[1]} into {plan.data}")
        connection, key = queues.get_connection(), shipping.channel(self.run.pk)
        connection.delete(key)  # a previous delivery of this run may have left a part of its shipment
        sender = queues.enqueue("restores.jobs.ship_send_job", str(self.run.pk), backup_id, queue="restore",
                                timeout=settings.BARMAN_TIMEOUT_SECONDS * 40, pool=pools[0])

        def received(into):
            return shipping.receive(
                connection, key, into, work=Path(pitr.scratch_parent() or tempfile.gettempdir()),
                on_progress=lambda done: self.steps.progress(RECOVER, detail=f"{done} bytes received from pool "
                                                                              f"{pools[0]}, each chunk checked"),
                on_alive=lambda what: self.steps.progress(RECOVER, detail=f"pool {pools[0]}: {what}"),
                on_replay=self.replay_reporter())

        try:
            with wholeserver.shipped_privately(system, point, plan, received) as (ready, shipped):
                with transaction.atomic():
                    audit_record(actor=None, action=AuditAction.RESTORE_SHIPPED, obj=self.run,
                                 details=audit_details(self.run, bytes=shipped.bytes, sha256=shipped.sha256,
                                                       chunks=shipped.chunks, from_pool=pools[0], to_pool=pools[1],
                                                       data_dir=str(plan.data)))
                yield ready, shipped
        except shipping.ShipRefused as exc:
            # A sender nobody listens to any more must not recover (or wait) for nothing.
            raise shipping.ShipRefused(f"{exc} (the sender's job: {runs.stop_job(sender.id, 'restore')})") from None

    def private_checks(self, url: str) -> None:
        """The target's sanity checks on the recovered server before anybody can reach it; a failing one stops the
        run (and the directory is removed)."""
        name = "sanity checks"
        checks = list(self.target.sanity_checks.all())
        self.steps.start(name)
        if not checks:
            self.steps.finish(name, state="skipped", detail="the target has no sanity check")
            return
        results = sanity.run_sanity_checks(url, checks)
        self.save_results(sanity_checks=[r.as_dict() for r in results])
        failed = [r for r in results if not r.ok]
        if failed:
            raise wholeserver.ServerTargetRefused(
                f"{len(failed)} of {len(results)} sanity checks failed on the recovered server (first: "
                f"{failed[0].name}: {failed[0].error})")
        self.steps.finish(name, detail=f"{len(results)} sanity checks passed on the recovered server, before it "
                                       "was reachable")


class ServerRefused(RunFailure):
    """The target host cannot take the new server; nothing was written."""
