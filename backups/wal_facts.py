"""What a run of consecutive WAL segments holds, read with ``pg_waldump``: its last commit, its restore points.

A recovery to a moment stops at the first commit after it; when the WAL ends before such a
commit, PostgreSQL refuses to finish (``recovery ended before configured recovery target was
reached``). So the newest moment an off-site copy can recover is the last commit (or abort) in
its WAL, and a named restore point is reachable only when its record is there. Both are read
once, when a WAL package is written, and kept in its manifest: a request is checked against
them before anything is queued.

``pg_waldump`` must match the server's major version (the WAL page magic differs): each
installed one is tried, newest first, until one reads the segments. Reading stops with an
error at the end of the WAL written (the zeros after a switch); what it printed before counts.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from drpanel import pgbin

WALDUMP_TIMEOUT = 600
# "desc: COMMIT 2026-12-03 22:40:01.123456 UTC" (an abort stops a time target too); "desc: RESTORE_POINT name".
ENDS = re.compile(r"desc: (?:COMMIT|ABORT) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")
POINT = re.compile(r"desc: RESTORE_POINT (\S+)")


def wal_facts(paths: list[Path]) -> dict:
    """``last_commit`` (ISO, UTC, or None), ``restore_points`` and ``received_until`` (the last segment's
    modification time: every WAL byte written before it is in these segments) of consecutive segments."""
    facts: dict = {"last_commit": None, "restore_points": [], "received_until": None, "waldump": ""}
    if not paths:
        return facts
    try:
        facts["received_until"] = datetime.fromtimestamp(paths[-1].stat().st_mtime, UTC).isoformat()
        return _dumped(paths, facts)
    except OSError as exc:  # a segment gone meanwhile: the package itself fails on it, with its name
        facts["waldump"] = f"not read: {exc}"[:300]
        return facts


def _dumped(paths: list[Path], facts: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="drpanel-waldump-") as folder:
        # pg_waldump reads segments by name from one directory: links to where Barman keeps them.
        for path in paths:
            (Path(folder) / path.name).symlink_to(path.resolve())
        for tool in sorted(pgbin.candidates("pg_waldump"), key=lambda t: t.major, reverse=True):
            try:
                done = subprocess.run(
                    [tool.path, "--path", folder, "--rmgr", "Transaction", paths[0].name, paths[-1].name],
                    capture_output=True, text=True, timeout=WALDUMP_TIMEOUT, env={"TZ": "UTC", "LC_ALL": "C"})
                points = subprocess.run(
                    [tool.path, "--path", folder, "--rmgr", "XLOG", paths[0].name, paths[-1].name],
                    capture_output=True, text=True, timeout=WALDUMP_TIMEOUT, env={"TZ": "UTC", "LC_ALL": "C"})
            except (OSError, subprocess.TimeoutExpired) as exc:
                facts["waldump"] = f"{Path(tool.path).name}: {exc}"[:300]
                continue
            if "rmgr:" not in done.stdout and "rmgr:" not in points.stdout:
                facts["waldump"] = (done.stderr.strip().splitlines() or ["no record read"])[-1][:300]
                continue
            ends = ENDS.findall(done.stdout)
            if ends:
                facts["last_commit"] = datetime.fromisoformat(ends[-1] + "+00:00").isoformat()
            facts["restore_points"] = POINT.findall(points.stdout)
            facts["waldump"] = f"read by pg_waldump {tool.release}"
            return facts
    facts["waldump"] = facts["waldump"] or "no pg_waldump on this worker"
    return facts
