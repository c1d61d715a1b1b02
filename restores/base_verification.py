"""The verification ladder of a base backup (kind ``base``, in Barman's home): manifest → restore-test.

- **manifest** — ``barman verify-backup``, which runs ``pg_verifybackup -n`` on the backup's data
  directory: every file is re-read and its size and checksum compared with the
  ``backup_manifest`` that ``pg_basebackup`` wrote, and a file missing or added is an error. A
  failure names the files (``pg_verifybackup``'s own lines).
- **restore-test** — the base backup is recovered through ``restores.pitr`` into a scratch data
  directory at the latest point (every WAL segment Barman holds after it is replayed), started
  on a free local port reachable only through a private socket, the sanity checks of the targets
  that receive the system are run on the system's database in it, and it is stopped and removed
  whatever happens. The step's data keeps the time each part took (recover, start, checks, stop).

The first level that fails raises ``LevelFailed`` (the levels after it are "not run");
``restores.verifications`` records the run as for any other artifact.
"""

from __future__ import annotations

import re
import time

import psycopg
from django.conf import settings
from psycopg.conninfo import make_conninfo

from backups import barman
from backups.barman import BarmanError
from drpanel import runs
from drpanel.scrub import scrub
from restores import pitr, sanity
from restores.materialize import TEMP_PREFIX
from restores.models import VerificationRun
from restores.verification_levels import LevelFailed, fail_level, system_sanity_checks

# What pg_verifybackup says of a damaged backup: its "error:" lines name the file.
VERIFY_ERROR = re.compile(r"pg_verifybackup: error: (.+)")


class BaseBackupMissing(LevelFailed):
    """The artifact does not name a base backup Barman holds."""


def backup_id_of(artifact) -> str:
    """The Barman backup id in ``barman:<server>/<backup id>``, checked against the artifact's system."""
    prefix = f"barman:{artifact.system.name}/"
    key = artifact.storage_key or ""
    backup_id = key[len(prefix):] if key.startswith(prefix) else ""
    # Barman's ids are timestamps (20261203T101500) or names it made: never a path.
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", backup_id) or backup_id.startswith("."):
        raise BaseBackupMissing(f"the artifact's storage key {key!r} does not name a base backup of "
                                f"{artifact.system.name} in Barman's home")
    return backup_id


def scratch_prefix(run_id) -> str:
    """The name its recovered copy's scratch directory starts with: ``drpanel-run-<run id>-pitr-``, so the janitors
    that look for a run's temporary files (``restores.reliability``) find it too."""
    return f"{TEMP_PREFIX}{run_id}-pitr-"


def discard_scratch(run: VerificationRun) -> list[str]:
    """Stop and remove what a restore-test of ``run`` left on this host (a worker that died mid-test)."""
    return pitr.discard(scratch_prefix(run.pk))


def verify_base_levels(run: VerificationRun, steps: runs.StepList, levels: tuple[str, ...]) -> None:
    """Run the base ladder up to ``levels[-1]``; raises ``LevelFailed`` at the first level that fails."""
    artifact = run.artifact
    system = artifact.system
    steps.start("manifest", detail="barman verify-backup (pg_verifybackup)")
    try:
        backup_id = backup_id_of(artifact)
        barman.write_server(system)
    except (BaseBackupMissing, BarmanError) as exc:
        fail_level(steps, "manifest", str(exc))
    VerificationRun.objects.filter(pk=run.pk).update(location=f"barman:{system.name}")
    _manifest(steps, system, backup_id)
    if "restore-test" in levels:
        _restore_test(run, steps, system, backup_id)


def _manifest(steps: runs.StepList, system, backup_id: str) -> None:
    try:
        done = barman.run("verify-backup", barman.server_name(system), backup_id,
                          timeout=barman_verify_timeout(), check=False)
    except BarmanError as exc:
        fail_level(steps, "manifest", str(exc))
    said = f"{done.stdout}\n{done.stderr}"
    problems = [m.group(1).strip() for m in VERIFY_ERROR.finditer(said)]
    if done.returncode != 0 or problems:
        if not problems:
            problems = [line.strip() for line in said.splitlines() if "rror" in line][-3:] or [
                f"barman verify-backup ended with exit {done.returncode}"]
        fail_level(steps, "manifest", f"barman verify-backup found {len(problems)} problem(s) in base backup "
                                      f"{backup_id}: " + "; ".join(problems[:5]), problems=problems[:50])
    try:
        info = barman.show_backup(system, backup_id).get("base_backup_information") or {}
    except BarmanError as exc:
        fail_level(steps, "manifest", str(exc))
    steps.finish("manifest", bytes=info.get("backup_size_bytes"),
                 detail=f"pg_verifybackup: every file of {backup_id} matches its backup_manifest "
                        "(size and checksum; none missing, none added)",
                 data={"backup_id": backup_id, "said": scrub(said.strip())[-1000:]})


def barman_verify_timeout() -> int:
    # pg_verifybackup re-reads the whole backup: give it the time a recovery gets.
    return settings.BARMAN_TIMEOUT_SECONDS * 30


def _restore_test(run: VerificationRun, steps: runs.StepList, system, backup_id: str) -> None:
    steps.start("restore-test", detail=f"recovering {backup_id} at the latest point into a scratch directory")
    # Until the block below has removed it, a scratch directory (and a server) may be left if the worker dies.
    VerificationRun.objects.filter(pk=run.pk).update(needs_cleanup=True)
    checks = system_sanity_checks(system)
    timings: dict[str, float] = {}
    data: dict = {"backup_id": backup_id}
    began = time.monotonic()
    results: list[sanity.SanityResult] = []
    try:
        dbname = data["database"] = barman.connection_for(system)[0].dbname
        with pitr.recovered(system, pitr.RecoveryPoint.latest(), backup_id=backup_id,
                            prefix=scratch_prefix(run.pk)) as copy:
            ready = time.monotonic() - began
            timings.update(recover_s=round(copy.recover_seconds, 3), start_s=round(copy.start_seconds, 3),
                           # Closing and archiving the current WAL segment first, and replay until promotion.
                           wal_and_replay_s=round(ready - copy.recover_seconds - copy.start_seconds, 3))
            data.update(scratch=str(copy.data.parent), port=copy.port, replayed_to=copy.replay_position())
            steps.progress("restore-test", 0.7, detail=f"started on port {copy.port}; running the sanity checks")
            databases = [row[0] for row in copy.query(
                "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname")]
            data["databases"] = databases
            if dbname not in databases:
                raise BarmanError(f"the recovered server has no database {dbname!r} (it has "
                                  f"{', '.join(databases)})")
            checked = time.monotonic()
            url = make_conninfo(host=str(copy.socket_dir), port=copy.port, user=copy.user, dbname=dbname)
            results = sanity.run_sanity_checks(url, checks) if checks else []
            timings["checks_s"] = round(time.monotonic() - checked, 3)
            stopping = time.monotonic()
        timings["stop_s"] = round(time.monotonic() - stopping, 3)
    except (BarmanError, psycopg.Error, OSError) as exc:
        data["timings"] = timings
        fail_level(steps, "restore-test", f"the recovery of {backup_id} failed: {exc}", **data)
    timings["total_s"] = round(time.monotonic() - began, 3)
    data.update(timings=timings, sanity_checks=[r.as_dict() for r in results])
    bad = [r for r in results if not r.ok]
    if bad:
        fail_level(steps, "restore-test", f"{len(bad)} sanity check(s) failed on the recovered {dbname} (first: "
                                     f"{bad[0].name}: {bad[0].error}); the copy was stopped and removed", **data)
    steps.finish("restore-test", detail=(
        f"recovered at the latest point (WAL replayed to {data['replayed_to']}) in {timings['recover_s']:.1f} s, "
        f"started in {timings['start_s']:.1f} s; "
        + (f"{len(results)} sanity check(s) passed on {dbname}" if results
           else f"no sanity check applies to {system.name}; {dbname} is there")
        + "; stopped and removed"), data=data)
