"""The swap (``<db>`` aside, the side database in, in one transaction), its rollback, and what a dead worker
left half done: finding it and bringing it back to a consistent state.
"""

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import psycopg
from psycopg import sql

from restores.pg.connect import (
    allow_connections,
    connect,
    database_name,
    existing_databases,
    first_line,
    terminate_sessions,
)
from restores.pg.databases import drop_copy_on
from restores.pg.errors import SwapFailed
from restores.pg.names import CopyKind, copy_name


@dataclass
class SwapResult:
    """A swap that happened: which database went live, where the previous one went, how long it took."""

    database: str
    moved_in: str
    moved_aside: str | None
    duration_s: float
    sessions_terminated: int
    attempts: int

    def as_dict(self) -> dict:
        return {"database": self.database, "moved_in": self.moved_in, "moved_aside": self.moved_aside,
                "duration_s": round(self.duration_s, 4), "sessions_terminated": self.sessions_terminated,
                "attempts": self.attempts}


def _swap(url: str, *, live: str, incoming: str, aside: str, timeout: float) -> SwapResult:
    with connect(url) as conn:
        present = existing_databases(conn, [live, incoming, aside])
        if incoming not in present:
            raise SwapFailed(f"{incoming} does not exist: nothing to swap in")
        if aside in present:
            raise SwapFailed(f"{aside} already exists: refusing to overwrite it")
        live_exists = live in present
        started = time.perf_counter()
        terminated = attempts = 0
        try:
            # No new sessions on either database from here: a client sees the old or the new one.
            allow_connections(conn, incoming, False)
            if live_exists:
                allow_connections(conn, live, False)
            deadline = started + timeout
            while True:
                attempts += 1
                terminated += terminate_sessions(conn, [live, incoming])
                try:
                    # PostgreSQL allows ALTER DATABASE ... RENAME in a transaction: both renames or none.
                    with conn.transaction():
                        if live_exists:
                            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                                sql.Identifier(live), sql.Identifier(aside)))
                        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(incoming), sql.Identifier(live)))
                        allow_connections(conn, live, True)
                    break
                except psycopg.errors.ObjectInUse:
                    if time.perf_counter() > deadline:
                        raise SwapFailed(f"sessions kept coming back to {live} for {timeout:g} s") from None
                    time.sleep(0.01)
        except psycopg.Error as exc:
            _reopen(conn, live if live_exists else None)
            raise SwapFailed(f"the swap did not happen: {first_line(exc)}") from None
        except BaseException:
            _reopen(conn, live if live_exists else None)
            raise
        duration = time.perf_counter() - started
    return SwapResult(database=live, moved_in=incoming, moved_aside=aside if live_exists else None,
                      duration_s=duration, sessions_terminated=terminated, attempts=attempts)


def _reopen(conn: psycopg.Connection, live: str | None) -> None:
    """After a failed swap nothing was renamed: let clients back into the live database."""
    if live is None or conn.closed:
        return
    with contextlib.suppress(psycopg.Error):
        allow_connections(conn, live, True)


def swap_in(url: str, run_id, *, timeout: float = 15.0) -> SwapResult:
    """Make the side database live: ``<db>`` → ``<db>__pre_<tag>``, ``<db>__restore_<tag>`` → ``<db>``.

    Connections to both are refused (``ALLOW_CONNECTIONS false``) and their sessions
    terminated, then both renames and re-opening ``<db>`` happen in ONE transaction, so a
    client sees the old database or the new one, never a missing or empty one. Retries
    while sessions linger, up to ``timeout`` seconds. The pre-restore copy keeps refusing
    connections (nothing can write into the rollback copy). When ``<db>`` does not exist
    yet, the side database is simply renamed. Raises ``SwapFailed`` (the live database
    unchanged and open again) when it cannot happen.
    """
    database = database_name(url)
    return _swap(url, live=database, incoming=copy_name(database, run_id, CopyKind.SIDE),
                 aside=copy_name(database, run_id, CopyKind.PRE), timeout=timeout)


def swap_back(url: str, run_id, *, timeout: float = 15.0) -> SwapResult:
    """Roll back: ``<db>`` → ``<db>__failed_<tag>``, ``<db>__pre_<tag>`` → ``<db>`` (same guarantees as ``swap_in``)."""
    database = database_name(url)
    return _swap(url, live=database, incoming=copy_name(database, run_id, CopyKind.PRE),
                 aside=copy_name(database, run_id, CopyKind.FAILED), timeout=timeout)


class SwapState(StrEnum):
    """Where a run's databases stand; all but ``UNKNOWN`` can be made consistent automatically."""

    CLEAN = "clean"                # no copy of this run exists
    RESTORING = "restoring"        # the side database exists; the swap has not happened
    SWAPPED = "swapped"            # the restored database is live; the pre-restore copy is kept
    ROLLED_BACK = "rolled_back"    # the pre-restore copy is live again; the restored one kept as failed
    LIVE_MISSING = "live_missing"  # <db> is missing while its pre-restore copy exists
    UNKNOWN = "unknown"            # a combination no swap of ours leaves behind: needs a person


def swap_state(database: str, run_id, existing: Iterable[str]) -> SwapState:
    """Name the state from the set of database names that exist (no I/O)."""
    names = set(existing)
    live = database in names
    side, pre, failed = (copy_name(database, run_id, kind) in names for kind in CopyKind)
    if pre and failed:
        return SwapState.UNKNOWN
    if pre and not live:
        return SwapState.LIVE_MISSING
    if pre:
        return SwapState.SWAPPED
    if failed:
        return SwapState.ROLLED_BACK if live else SwapState.UNKNOWN
    if side:
        return SwapState.RESTORING
    return SwapState.CLEAN


@dataclass
class Reconciliation:
    """What ``reconcile_swap`` found and did."""

    found: SwapState
    state: SwapState
    actions: list[str]

    def as_dict(self) -> dict:
        return {"found": str(self.found), "state": str(self.state), "actions": self.actions}


def reconcile_swap(url: str, run_id, *, existing: Iterable[str] | None = None) -> Reconciliation:
    """Bring a run's databases to a consistent state after its worker died (call only then).

    - ``RESTORING`` (died before or during the swap's transaction): the side database is
      dropped and ``<db>`` accepts connections again → ``CLEAN``, the target untouched;
    - ``SWAPPED`` (died after the swap committed): kept; ``<db>`` accepts connections; a
      stray side database of the run is dropped. Rolling back is a decision for the caller
      (``swap_back``);
    - ``ROLLED_BACK``: kept; ``<db>`` accepts connections;
    - ``LIVE_MISSING``: the pre-restore copy is renamed back to ``<db>`` → ``CLEAN``;
    - ``UNKNOWN``: nothing is changed; a person must look.

    ``existing`` may pass the database names already read; by default they are queried.
    """
    database = database_name(url)
    names = {kind: copy_name(database, run_id, kind) for kind in CopyKind}
    actions: list[str] = []
    with connect(url) as conn:
        present = set(existing) if existing is not None else existing_databases(conn, [database, *names.values()])
        found = swap_state(database, run_id, present)
        state = found
        if found == SwapState.LIVE_MISSING:
            with conn.transaction():
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(names[CopyKind.PRE]), sql.Identifier(database)))
                allow_connections(conn, database, True)
            actions.append(f"renamed {names[CopyKind.PRE]} back to {database}")
            present = (present - {names[CopyKind.PRE]}) | {database}
            state = SwapState.CLEAN
        if found in (SwapState.RESTORING, SwapState.SWAPPED, SwapState.LIVE_MISSING) \
                and names[CopyKind.SIDE] in present:
            drop_copy_on(conn, names[CopyKind.SIDE], database)
            actions.append(f"dropped {names[CopyKind.SIDE]}")
            if found == SwapState.RESTORING:
                state = SwapState.CLEAN
        if found != SwapState.CLEAN and database in present:
            allowed = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s",
                                   [database]).fetchone()
            if allowed is not None and not allowed[0]:
                allow_connections(conn, database, True)
                actions.append(f"{database} accepts connections again")
    return Reconciliation(found=found, state=state, actions=actions)
