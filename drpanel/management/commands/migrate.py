"""``manage.py migrate`` as the migration role when ``DRPANEL_MIGRATE_DATABASE_URL`` is set.

Django's own command, with two additions when a migration role is configured: the migrations
(and their post-migrate handlers) run on a connection as that role, which creates and owns the
tables; then the runtime role (``DATABASE_URL``'s) is given exactly its rights on every table,
the new ones included (``drpanel.dbroles.runtime_role_grant``, audited). The system checks run
before the switch, so they judge the runtime role. Without the setting it is Django's migrate.
"""

from django.conf import settings
from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import DEFAULT_DB_ALIAS, connections

from drpanel.dbroles import migration_connection, runtime_role_grant


class Command(DjangoMigrate):
    help = (f"{DjangoMigrate.help} With DRPANEL_MIGRATE_DATABASE_URL: as that role, then grants the runtime "
            "role (DATABASE_URL's) its rights.")

    def handle(self, *args, **options):
        if not settings.MIGRATE_DATABASE or options["database"] != DEFAULT_DB_ALIAS:
            return super().handle(*args, **options)
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT current_user")
            (runtime_role,) = cursor.fetchone()
        with migration_connection(DEFAULT_DB_ALIAS):
            super().handle(*args, **options)
            if options["plan"] or options["check_unapplied"]:
                return None
            runtime_role_grant(role=runtime_role)
        if options["verbosity"] >= 1:
            self.stdout.write(f"Granted the runtime role {runtime_role!r} its rights (SELECT and INSERT only on "
                              "the audit table).")
        return None
