"""``manage.py audit_checkpoint``: sign the audit chain's head and store it outside the database now.

The same as the hourly job (``drpanel/cron.py``); nothing is written when the head is
already checkpointed, unless ``--force``.
"""

from django.core.management.base import BaseCommand

from compliance.audit.checkpoints import checkpoint_write


class Command(BaseCommand):
    help = "Write a signed checkpoint of the audit chain head to the checkpoint store."
    # System checks would import every URL, view and API module; this command needs none of them.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="write one even if the head is checkpointed")

    def handle(self, *args, force=False, **options):
        _, message = checkpoint_write(force=force)
        self.stdout.write(message)
