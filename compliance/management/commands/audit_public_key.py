"""``manage.py audit_public_key``: print the audit log's public key (PEM), for auditors.

``--retired`` also prints the public keys of retired signing keys, which still verify what
they signed. The fingerprints go to stderr, so stdout can be redirected into a .pem file.
"""

from django.core.management.base import BaseCommand

from compliance.audit.signing import current_public_key, fingerprint, public_pem, retired_public_keys


class Command(BaseCommand):
    help = "Print the audit signing key's public half (PEM)."
    # System checks would import every URL, view and API module; this command needs none of them.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--retired", action="store_true", help="also print retired public keys")

    def handle(self, *args, retired=False, **options):
        keys = [("current", current_public_key())]
        if retired:
            keys += retired_public_keys()
        for label, key in keys:
            self.stderr.write(f"{label}: fingerprint {fingerprint(key)}")
            self.stdout.write(public_pem(key), ending="")
