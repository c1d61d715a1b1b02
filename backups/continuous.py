"""Continuous protection: Barman's configuration kept in step with the systems, its checks, the WAL catalog, RPO now.

Runs on the workers that hold the Barman home. Every minute ``continuous_tick`` (cron) writes
the configuration of every system with continuous protection on (and removes the others'),
runs ``barman cron`` — which starts ``barman receive-wal`` for a server whose receiver is not
running, so a killed receiver is back within a minute and the replication slot has kept the WAL
it had not yet received — archives what was streamed (``barman archive-wal``, synchronously),
and rebuilds each system's WAL catalog (``WalTimeline``): first and last segment per timeline,
newest arrival, the first missing segment.

RPO now = now − ``ContinuousState.last_wal_at``: when the newest WAL byte arrived, or, when the
receiver has written everything the server has (its ``write_lsn`` in ``pg_stat_replication`` is the
server's ``pg_current_wal_lsn()``), the time of the receiver's status that said so: an idle server
writes no WAL, and nothing is then at risk. The receiver sends that status every second (Barman's
``pg_receivewal`` runs through the panel's wrapper, ``barman.write_receiver_wrapper``), so RPO now
on a quiet server stays within about two seconds of a refresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import psycopg
from django.conf import settings
from django.db import transaction

from backups import barman, hooks, offsite
from backups.models import Artifact, BackupRun, ContinuousState, System, WalTimeline
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import clock, queues, runs
from drpanel.permissions import Cap, require_cap
from drpanel.scrub import scrub

log = logging.getLogger(__name__)
# A base backup copies the whole server; the backup run's own time limit (12 h) bounds it too.
BASE_BACKUP_TIMEOUT = 12 * 3600
# How long a pool's minute tick may wait for a worker of the pool before it is dropped (the next minute's comes).
POOL_TICK_TTL_SECONDS = 90


def _state(system: System) -> ContinuousState:
    state, _ = ContinuousState.objects.get_or_create(system=system)
    return state


def continuous_check_request(*, actor, system: System, request=None) -> None:
    """Ask a worker to run ``barman check`` for the system now (Operator, Manager, Admin)."""
    require_cap(actor, Cap.START_JOBS, action=AuditAction.CONTINUOUS_CHECK_REQUESTED, obj=system)
    if not system.continuous_enabled:
        raise barman.BarmanError(f"{system.name} is not continuously protected")
    with transaction.atomic():
        audit_record(actor=actor, action=AuditAction.CONTINUOUS_CHECK_REQUESTED, obj=system, request=request)
        # Barman's home is where the system's pool runs: its check runs there, never on any shared worker.
        queues.enqueue_on_commit("backups.jobs.continuous_check_job", system.pk, queue="default",
                                 timeout=settings.BARMAN_TIMEOUT_SECONDS + 60, pool=system.worker_pool)


def continuous_check(system: System) -> ContinuousState:
    """Write the system's Barman configuration and run ``barman check``; the items are stored and audited."""
    state = _state(system)
    try:
        barman.write_server(system)
        ok, items = barman.check(system)
        error = ""
    except barman.BarmanError as exc:
        ok, items, error = False, [], str(exc)
    state.checked_at, state.check_ok, state.check_items, state.check_error = clock.now(), ok, items, error
    failing = [f"{i['name']}: {i['hint'] or i['status']}" for i in items if i["status"].upper() != "OK"]
    with transaction.atomic():
        state.save(update_fields=["checked_at", "check_ok", "check_items", "check_error"])
        audit_record(actor=None, action=AuditAction.CONTINUOUS_CHECKED, obj=system,
                     outcome="success" if ok else "failure",
                     details={"ok": ok, "failing": failing[:20], "error": error})
    return state


def _caught_up_at(system: System) -> datetime | None:
    """When Barman's receiver last said it had written everything the server has written (its last status, while
    its write position is the server's current one); None when it has not, or the server does not answer.

    The write position, not the flush position: pg_receivewal (without ``--synchronous``) reports a flush only when
    it closes a segment, so on a quiet server the flush position stays behind for a whole segment.
    """
    connection, password = barman.connection_for(system)
    try:
        with psycopg.connect(host=connection.host, port=connection.port, user=connection.user,
                             dbname=connection.dbname, password=password, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT max(reply_time) FROM pg_stat_replication WHERE application_name = 'barman_receive_wal' "
                "AND write_lsn >= pg_current_wal_lsn()").fetchone()
    except psycopg.Error:
        return None
    return row[0] if row else None


@dataclass(frozen=True)
class Refresh:
    """What one refresh found: the receiver's pid (None: not running), whether it was restarted, the timelines."""

    pid: int | None
    restarted: bool
    timelines: list[barman.Timeline]


def continuous_refresh(system: System) -> Refresh:
    """Archive what was streamed, rebuild the WAL catalog and RPO base; audit a restarted receiver or a new gap.

    ``barman cron`` (run by the tick before this) has started the receiver if it was not running.
    """
    state = _state(system)
    error = ""
    try:
        barman.run("archive-wal", barman.server_name(system))
    except barman.BarmanError as exc:
        error = str(exc)
    found = barman.timelines(barman.segments(system))
    pid = barman.receiver_pid(system)
    restarted = pid is not None and state.streaming_pid is not None and pid != state.streaming_pid
    now = clock.now()
    newest = max((t.last_received for t in found), default=None)
    caught_up = _caught_up_at(system) if pid is not None else None
    if caught_up is not None:
        # The status is stamped by the receiver's clock: one ahead of ours must not make RPO negative.
        caught_up = min(caught_up, now)
        newest = max(newest, caught_up) if newest is not None else caught_up
    with transaction.atomic():
        before = {t.timeline: t.first_missing for t in WalTimeline.objects.filter(system=system)}
        WalTimeline.objects.filter(system=system).exclude(timeline__in=[t.timeline for t in found]).delete()
        for t in found:
            WalTimeline.objects.update_or_create(system=system, timeline=t.timeline, defaults={
                "first_segment": t.first, "last_segment": t.last, "segments": t.count,
                "last_received_at": t.last_received, "first_missing": t.first_missing, "missing": t.missing})
            if t.first_missing and before.get(t.timeline) != t.first_missing:
                audit_record(actor=None, action=AuditAction.CONTINUOUS_WAL_GAP, obj=system, outcome="failure",
                             details={"timeline": t.timeline, "first_missing": t.first_missing,
                                      "missing": t.missing})
        if restarted:
            state.streaming_restarts += 1
            audit_record(actor=None, action=AuditAction.CONTINUOUS_STREAMING_RESTARTED, obj=system,
                         details={"previous_pid": state.streaming_pid, "pid": pid})
        if newest is not None and (state.last_wal_at is None or newest > state.last_wal_at):
            state.last_wal_at = newest
        # Crossing the RPO target either way is audited (and the audit event has the health score recomputed,
        # which raises or resolves the alert); the 15-minute health pass catches a tick that stopped running.
        target = system.rpo_target_minutes * 60
        seconds = int((now - state.last_wal_at).total_seconds()) if state.last_wal_at else None
        over = seconds is None or seconds > target
        if over != state.rpo_over_target:
            state.rpo_over_target = over
            audit_record(actor=None, action=AuditAction.CONTINUOUS_RPO_OVER_TARGET if over
                         else AuditAction.CONTINUOUS_RPO_WITHIN_TARGET, obj=system,
                         outcome="failure" if over else "success", details={"rpo_seconds": seconds,
                                                                            "target_seconds": target})
        state.streaming_pid = pid if pid is not None else state.streaming_pid
        state.refreshed_at, state.error = now, scrub(error)
        state.save(update_fields=["last_wal_at", "streaming_pid", "streaming_restarts", "rpo_over_target",
                                  "refreshed_at", "error"])
    return Refresh(pid=pid, restarted=restarted, timelines=found)


def base_backup(run, steps) -> Artifact:
    """A base backup of the run's system through Barman (``barman backup --wait``), catalogued as an artifact.

    The artifact (kind ``base``) stays in Barman's home, so its ``storage_key`` is
    ``barman:<server>/<backup id>``; its manifest is what ``barman show-backup`` says of it (sizes,
    WAL range, LSNs, times). Barman's recovery window, not the panel's retention, decides when it goes. The
    ``backup_succeeded`` hook queues its verification (``manifest`` level) as it does a new full's.
    """
    system = run.system
    step = steps.start("barman backup")
    barman.write_server(system)
    # Barman reports nothing until it is done: a spread checkpoint alone may take most of checkpoint_timeout,
    # and the copy of a large server longer. The run's heartbeat says the worker is alive meanwhile, or the reaper
    # would fail a backup that is still running (DRPANEL_BACKUP_STALE_SECONDS).
    with runs.Heartbeat(run):
        described = barman.backup(system, timeout=BASE_BACKUP_TIMEOUT)
    info = described.get("base_backup_information") or {}
    steps.finish(step, bytes=info.get("backup_size_bytes"),
                 detail=f"{described.get('backup_id')}: WAL {info.get('begin_wal')} → {info.get('end_wal')}")
    ended = info.get("end_time")
    with transaction.atomic():
        artifact = Artifact.objects.create(
            system=system, kind=Artifact.Kind.BASE, format=Artifact.Format.BARMAN_BASE,
            encryption=Artifact.Encryption.NONE, status=Artifact.Status.AVAILABLE,
            created_at=datetime.fromisoformat(ended) if ended else clock.now(), size=info.get("backup_size_bytes"),
            storage_key=f"barman:{barman.server_name(system)}/{described['backup_id']}", manifest=described)
        BackupRun.objects.filter(pk=run.pk).update(state=BackupRun.State.SUCCEEDED, finished_at=clock.now(),
                                                   percent=100, heartbeat_at=clock.now(), artifact=artifact)
        audit_record(actor=None, action=AuditAction.BACKUP_SUCCEEDED, obj=artifact,
                     details={"run": str(run.id), "kind": artifact.kind, "size": artifact.size,
                              "backup_id": described["backup_id"], "begin_wal": info.get("begin_wal"),
                              "end_wal": info.get("end_wal")})
        # The new base backup goes off-site encrypted, in its own run (``backups.offsite``). A savepoint: a failure
        # here must not undo the backup (the next tick asks again for what is not off-site).
        try:
            with transaction.atomic():
                offsite.offsite_request(system, reason=f"base backup {described['backup_id']} catalogued")
        except Exception:
            log.exception("%s: the off-site copy of base backup %s was not queued", system.name,
                          described["backup_id"])
        # Like a new full: verified right away (its manifest level, queued when this commits), in a savepoint so
        # that a failing hook never undoes the backup (the daily verification covers it then).
        try:
            with transaction.atomic():
                hooks.backup_succeeded(artifact)
        except Exception:
            log.exception("the backup-succeeded hook failed for base backup %s", artifact.pk)
    return artifact


def base_backups_sync(system: System) -> int:
    """Base artifacts Barman no longer holds (its recovery window removed them) become deleted; how many."""
    answer = barman.run_json("list-backups", barman.server_name(system))
    held = {f"barman:{system.name}/{b['backup_id']}" for b in answer.get(system.name, []) if b.get("backup_id")}
    gone = list(Artifact.objects.filter(system=system, kind=Artifact.Kind.BASE, status=Artifact.Status.AVAILABLE)
                .exclude(storage_key__in=held))
    for artifact in gone:
        with transaction.atomic():
            Artifact.objects.filter(pk=artifact.pk).update(status=Artifact.Status.DELETED, deleted_at=clock.now())
            audit_record(actor=None, action=AuditAction.CONTINUOUS_BASE_EXPIRED, obj=artifact,
                         details={"recovery_window_days": system.recovery_window_days})
    return len(gone)


def continuous_minute() -> int:
    """The minute's tick of every protected system, where its Barman home is: each pool that holds a protected
    system gets its own tick on its own queue (``backups.jobs.continuous_pool_tick``), so that Barman's cron,
    receivers and WAL catalog of the pool's systems run on the pool's host and no other; the systems without a
    pool are ticked here. The number of systems ticked here."""
    pools = sorted(set(System.objects.filter(continuous_enabled=True).exclude(worker_pool="")
                       .values_list("worker_pool", flat=True)))
    for pool in pools:
        # A pool whose workers are all down does not pile up a tick a minute: the next one replaces it.
        queues.enqueue("backups.jobs.continuous_pool_tick", pool, queue="default",
                       timeout=settings.BARMAN_TIMEOUT_SECONDS + 60, pool=pool, ttl=POOL_TICK_TTL_SECONDS)
    return continuous_tick(pool="")


def continuous_tick(pool: str | None = None) -> int:
    """Every minute: configuration in step, ``barman cron`` (keeps every receiver running), then each refresh.

    ``pool``: the tick of one worker pool, run by its workers (``backups.jobs.continuous_pool_tick``), on the host
    that holds the Barman home of the pool's systems: it configures and refreshes those systems only, and removes
    the configuration of the systems protection is off for or that moved to another pool. None: every system (a
    single host; the demo, the tests).
    """
    systems = System.objects.all() if pool is None else System.objects.filter(worker_pool=pool)
    protected = list(systems.filter(continuous_enabled=True))
    barman.write_global()
    gone = System.objects.filter(continuous_enabled=False)
    if pool:
        gone = gone | System.objects.exclude(worker_pool__in=[pool, ""])
    for system in gone:
        barman.remove_server(system)
    usable = []
    for system in protected:
        try:
            barman.write_server(system)
            usable.append(system)
        except barman.BarmanError as exc:
            state = _state(system)
            state.error = str(exc)
            state.save(update_fields=["error"])
    if not usable:
        return 0
    try:
        barman.run("cron")
    except barman.BarmanError as exc:
        log.warning("barman cron: %s", exc)
    for system in usable:
        continuous_refresh(system)
        try:
            base_backups_sync(system)
        except barman.BarmanError as exc:
            log.warning("%s: base backup catalog: %s", system.name, exc)
        try:
            offsite.offsite_tick(system)
        except Exception:  # the off-site copy must never stop the WAL catalog of the next systems
            log.exception("%s: off-site copy of continuous protection", system.name)
    return len(usable)


def rpo_seconds(system: System, now: datetime | None = None) -> int | None:
    """RPO now of a continuously protected system (None: not protected, or no WAL received yet)."""
    if not system.continuous_enabled:
        return None
    state = ContinuousState.objects.filter(system=system).only("last_wal_at").first()
    if state is None or state.last_wal_at is None:
        return None
    return seconds_since(state.last_wal_at, now)


def seconds_since(last_wal_at: datetime, now: datetime | None = None) -> int:
    """RPO now, in whole seconds, of a stream whose last WAL arrived at ``last_wal_at``."""
    now = now or clock.now()
    return max(0, int((now - last_wal_at).total_seconds()))


def wal_stream_status(system: System, now: datetime | None = None) -> tuple[bool, str]:
    """Whether the WAL stream protects the system now (RPO within target, no gap), and why in one sentence."""
    gap = WalTimeline.objects.filter(system=system).exclude(first_missing="").order_by("timeline").first()
    if gap is not None:
        return wal_stream_verdict(system, gap, None)
    return wal_stream_verdict(system, None, rpo_seconds(system, now))


def wal_stream_verdict(system: System, gap: WalTimeline | None, seconds: int | None) -> tuple[bool, str]:
    """``wal_stream_status`` from what it reads: the first timeline with a gap, and the RPO now in seconds
    (for callers that load both for many systems at once)."""
    target = system.rpo_target_minutes * 60
    if gap is not None:
        return False, (f"WAL gap on timeline {gap.timeline}: segment {gap.first_missing} is missing "
                       f"({gap.missing} in all).")
    if seconds is None:
        return False, "No WAL received from its server yet (continuous protection is on)."
    if seconds > target:
        return False, f"Last WAL received {seconds} s ago; the RPO target is {target} s."
    return True, f"RPO now {seconds} s (target {target} s), WAL continuous."


def setup_instructions(system: System) -> dict:
    """What to set on the system's database server for Barman to stream from it (shown on the system page)."""
    try:
        connection, _ = barman.connection_for(system)
        user, database = connection.user, connection.dbname
    except barman.BarmanError:
        user, database = "<the user of the system's database URL>", "<its database>"
    return {
        "role": f"ALTER ROLE {user} WITH REPLICATION;",
        "grants": (f"GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO {user}; "
                   f"GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO {user}; "
                   f"GRANT EXECUTE ON FUNCTION pg_switch_wal() TO {user}; "
                   f"GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO {user}; "
                   f"GRANT pg_read_all_settings TO {user}; GRANT pg_read_all_stats TO {user}; "
                   # barman switch-wal --force checkpoints first (before a base backup, before "latest").
                   f"GRANT pg_checkpoint TO {user};"),
        "hba": [f"host    replication    {user}    <address of the Barman workers>/32    scram-sha-256",
                f"host    {database}    {user}    <address of the Barman workers>/32    scram-sha-256"],
        "settings": ["wal_level = replica", "max_wal_senders = 10 (at least 2 for Barman)",
                     "max_replication_slots = 10 (at least 1 for Barman)"],
        "slot": barman.slot_name(system),
        "home": str(barman.home()),
    }
