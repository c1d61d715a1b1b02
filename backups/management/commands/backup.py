"""``manage.py backup SYSTEM [--kind full|config] [--inline]``: back a system up, as "Back up now" does."""

from django.core.management.base import BaseCommand, CommandError

from backups.errors import BackupError
from backups.models import BackupRun, System
from backups.runs import backup_request, backup_run_execute


class Command(BaseCommand):
    help = "Queue a backup of SYSTEM on the backup queue (or run it in this process with --inline)."

    def add_arguments(self, parser):
        parser.add_argument("system")
        parser.add_argument("--kind", default="full", choices=["full", "config"])
        parser.add_argument("--inline", action="store_true", help="run it here instead of on a worker")

    def handle(self, *args, system, kind, inline, **options):
        target = System.objects.filter(name=system).first()
        if target is None:
            raise CommandError(f"no system named {system!r}")
        try:
            run = backup_request(actor=None, system=target, kind=kind, trigger=BackupRun.Trigger.MANUAL)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        if not inline:
            self.stdout.write(f"queued: backup run {run.id}")
            return
        run = backup_run_execute(run.id)
        if run.state != BackupRun.State.SUCCEEDED:
            raise CommandError(f"backup run {run.id} failed: {run.error}")
        self.stdout.write(f"backup run {run.id} succeeded: artifact {run.artifact_id} ({run.artifact.size} bytes, "
                          f"sha256 {run.artifact.sha256})")
