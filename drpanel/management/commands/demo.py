"""``manage.py demo``: seed (or refresh) the demo. Safe to run again.

Each app adds its part as a ``seed(out)`` function listed in ``STEPS``, in dependency order.
Refused in production.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

STEPS = [
    "drpanel.demo.seed_users",
    "backups.demo.seed",
    "restores.demo.seed",
    "compliance.demo.seed_contacts",
    "compliance.demo.seed_health",
    "compliance.audit.demo.seed",
]


class Command(BaseCommand):
    help = "Seed the demo: users per role, and each app's demo data."

    def handle(self, *args, **options):
        if settings.PRODUCTION:
            raise CommandError("the demo (users with printed passwords, demo data) is refused when "
                               "DRPANEL_ENV=production")
        for step in STEPS:
            import_string(step)(self.stdout)
        self.stdout.write(self.style.SUCCESS("Demo ready."))
