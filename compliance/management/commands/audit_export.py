"""``manage.py audit_export --format jsonl|csv --output FILE [filters]``: a signed export of the audit log.

JSON Lines carry their signed digest as the last line; a CSV gets it beside it
(``FILE.digest.json``). Check either offline with ``compliance/verify_export.py``.
"""

import getpass

from django.core.management.base import BaseCommand, CommandError

from compliance.audit.export import FORMATS, audit_export_start, export_to_file
from compliance.audit.query import AuditFilter, FilterError


class Command(BaseCommand):
    help = "Export the audit log (streamed, signed) to FILE."
    # System checks would import every URL, view and API module; this command needs none of them.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=FORMATS, required=True)
        parser.add_argument("--output", required=True, metavar="FILE")
        parser.add_argument("--from", dest="from", metavar="TIME", help="ISO date or date-time (UTC), inclusive")
        parser.add_argument("--to", metavar="TIME", help="ISO date-time, exclusive (a bare date includes that day)")
        parser.add_argument("--actor", help="username")
        parser.add_argument("--action", help="exact action, or a prefix ending in * (e.g. 'auth.*')")
        parser.add_argument("--object-type", help="e.g. auth.user")
        parser.add_argument("--object-id")
        parser.add_argument("--outcome", choices=("success", "failure", "denied"))

    def handle(self, *args, **options):
        try:
            flt = AuditFilter.from_params({name: options.get(name.replace("-", "_")) for name in (
                "from", "to", "actor", "action", "object_type", "object_id", "outcome")})
        except FilterError as exc:
            raise CommandError(str(exc)) from None
        plan = audit_export_start(actor=None, format=options["format"], flt=flt,
                                  via=f"manage.py audit_export (OS user {getpass.getuser()})")
        digest, files = export_to_file(plan, options["output"])
        self.stdout.write(
            f"Exported {digest['count']} events (seq {digest['first_seq']}–{digest['last_seq']}) to "
            f"{', '.join(str(f) for f in files)}; signed by key {digest['key_fingerprint'][:16]}…")
