"""``manage.py audit_verify``: recompute the audit chain and check it against every checkpoint.

Prints one line — ``OK: …`` with the count and head hash, or ``BROKEN at seq N: <why> — …`` —
and exits 1 when the chain is broken. The verification itself is recorded in the log.
"""

import sys

from django.core.management.base import BaseCommand

from compliance.audit.verify import audit_verify


class Command(BaseCommand):
    help = "Verify the audit log's hash chain and checkpoints; exit 1 when it is broken."
    # System checks would import every URL, view and API module; this command needs none of them.
    requires_system_checks = []

    def handle(self, *args, **options):
        result = audit_verify(actor=None, via="manage.py audit_verify")
        if result.ok:
            self.stdout.write(result.summary())
            return
        self.stdout.write(result.summary())
        sys.exit(1)
