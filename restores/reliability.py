"""What happens when a worker dies, Redis forgets a job, or a swap is left half done.

The run rows are the truth; RQ is only the vehicle. ``reconcile`` (cron, every minute)
compares the two and repairs, through the run runtime (``drpanel.runs.reconcile_runs``) and
the hooks of the restore and verification kinds:

- a **running** run whose heartbeat stopped for ``DRPANEL_RUN_STALE_SECONDS`` (its worker and
  work horse died: ``kill -9``, OOM, a lost host), or whose RQ job already ended, becomes
  **failed** with that reason, and its databases are reconciled (``execution.tidy_failed``): a
  side database is dropped (the target untouched), a swap that committed is recorded and
  kept for a rollback, a live database missing after a crash mid-swap is renamed back;
- a **queued** run whose RQ job vanished (Redis flushed, the enqueue failed after commit)
  is queued again, at most ``drpanel.runs.MAX_ENQUEUES`` times in all, then failed with the
  reason; a queued run whose job failed before it started is failed;
- failed runs still marked ``needs_cleanup`` are reconciled again (a target unreachable a
  minute ago may answer now);
- side databases left by finished runs of this panel are dropped, and so are the
  decrypted temporary files of runs that are not running (both restore-specific, here).

RQ failure callbacks (``restores.jobs.*_job_failed``) do the same for one run as soon as RQ
knows: a job that raised, a work horse that died, a job found abandoned by a registry
clean-up.
"""

import contextlib
import os
import shutil
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import runs, secrets
from restores import materialize, pg, pitr
from restores.execution import RESTORE_RUNS
from restores.models import RestoreRun, Target, VerificationRun
from restores.verification_levels import verify_server_url
from restores.verifications import VERIFICATION_RUNS

# The kinds of runs this reconciler settles.
KINDS = (RESTORE_RUNS, VERIFICATION_RUNS)


def reconcile(now=None) -> dict:
    """Compare run rows with RQ and with their databases, and repair (see the module docstring)."""
    now = now or timezone.now()
    summary: dict = {"failed": [], "requeued": [], "tidied": [], "dropped": [], "files": 0}
    runs.reconcile_runs(now, summary, run_kinds=KINDS)
    summary["dropped"] = drop_orphan_side_databases()
    summary["files"] = remove_stale_files()
    return summary


def drop_orphan_side_databases() -> list[str]:
    """Drop side databases (``…__restore_<tag>``) of this panel's runs that are no longer running.

    Only tags of runs this panel knows are touched: another panel sharing the server keeps
    its own. Pre-restore and failed copies are left to ``rollback.restore_copies_drop_due``.
    """
    running = {pg.run_tag(pk) for pk in RestoreRun.objects.filter(
        state__in=[RestoreRun.State.QUEUED, RestoreRun.State.RUNNING]).values_list("pk", flat=True)}
    running |= {pg.run_tag(pk) for pk in VerificationRun.objects.filter(
        state__in=[VerificationRun.State.QUEUED, VerificationRun.State.RUNNING]).values_list("pk", flat=True)}
    urls = []
    for target in Target.objects.filter(runs__isnull=False).distinct():
        with contextlib.suppress(secrets.SecretReferenceError):
            urls.append((secrets.resolve(target.database_ref), RestoreRun.objects.filter(target=target)))
    with contextlib.suppress(secrets.SecretReferenceError):
        urls.append((verify_server_url(), VerificationRun.objects.all()))
    dropped = []
    for url, known_runs in urls:
        try:
            copies = [c for c in pg.find_orphans(url, keep=running) if c.kind == pg.CopyKind.SIDE]
        except pg.PgOpsError:
            continue
        if not copies:
            continue
        known = {pg.run_tag(pk) for pk in known_runs.values_list("pk", flat=True)}
        for copy in copies:
            if copy.tag in known:
                with contextlib.suppress(pg.PgOpsError):
                    if pg.drop_database_copy(url, copy.name):
                        dropped.append(copy.name)
    if dropped:
        with transaction.atomic():
            audit_record(actor=None, action=AuditAction.RESTORE_ORPHANS_DROPPED, object_type="restores.target",
                         object_repr="side databases", details={"dropped": dropped})
    return dropped


def remove_stale_files() -> int:
    """Remove decrypted temporary files (``drpanel-run-<run id>-…``) of this panel's runs that are not running.

    Files of run ids this panel does not know belong to another panel sharing the host: left alone.
    """
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(Path(materialize.temp_dir())):
            if not entry.name.startswith(materialize.TEMP_PREFIX):
                continue
            run_id = entry.name[len(materialize.TEMP_PREFIX):len(materialize.TEMP_PREFIX) + 36]
            with contextlib.suppress(ValueError):
                finished = (RestoreRun.objects.filter(pk=run_id).exclude(state__in=[
                    RestoreRun.State.QUEUED, RestoreRun.State.RUNNING]).exists()
                    or VerificationRun.objects.filter(pk=run_id, state__in=[
                        VerificationRun.State.SUCCEEDED, VerificationRun.State.FAILED]).exists())
                if not finished:
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        # A base backup's restore-test recovers into such a directory: stop its server first.
                        pitr.stop_left_server(Path(entry.path))
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed += 1
    return removed
