"""``manage.py audit_rotate_key`` (development): retire the audit signing key under var/ and make a new one.

In production the key comes from ``DRPANEL_AUDIT_SIGNING_KEY``: docs/auditor.md's "Audit log"
section says how to rotate it there.
"""

from django.core.management.base import BaseCommand, CommandError

from compliance.audit.signing import SigningKeyError, signing_key_rotate


class Command(BaseCommand):
    help = "Retire the development audit signing key (its public key stays verifiable) and create a new one."
    # System checks would import every URL, view and API module; this command needs none of them.
    requires_system_checks = []

    def handle(self, *args, **options):
        try:
            old, new = signing_key_rotate(actor=None)
        except SigningKeyError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Retired key {old}; signing with {new} from now on.")
