"""``manage.py grant_runtime_role [ROLE] [--sql]``: give the runtime database role exactly its rights.

Run as the migration role: with ``DRPANEL_MIGRATE_DATABASE_URL`` set the command connects as that
role; ROLE defaults to ``DATABASE_URL``'s user. ``--sql`` only prints the statements (for a DBA
who prefers to run them with psql as the tables' owner). ``manage.py migrate`` does the same
after every migration when the migration role is configured.
"""

import contextlib

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from drpanel.dbroles import RuntimeRoleError, grant_sql, migration_connection, runtime_role_grant


class Command(BaseCommand):
    help = "Grant the runtime database role exactly its rights (SELECT and INSERT only on the audit table)."

    def add_arguments(self, parser):
        parser.add_argument("role", nargs="?", help="the runtime role (default: the user of DATABASE_URL)")
        parser.add_argument("--schema", default="public", help="with --sql: the schema of the panel's tables")
        parser.add_argument("--sql", action="store_true", help="print the statements instead of running them")

    def handle(self, *args, role, schema, sql, **options):
        role = role or settings.DATABASES["default"]["USER"]
        if not role:
            raise CommandError("name the runtime role: DATABASE_URL has no user")
        if sql:
            self.stdout.write(";\n".join(grant_sql(role, schema=schema)) + ";")
            return
        switch = migration_connection() if settings.MIGRATE_DATABASE else contextlib.nullcontext()
        try:
            with switch:
                runtime_role_grant(role=role)
        except RuntimeRoleError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Granted {role!r} the runtime role's rights.")
