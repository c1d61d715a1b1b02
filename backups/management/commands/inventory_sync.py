"""``manage.py inventory_sync``: compare every location with the catalog, in this process."""

from django.core.management.base import BaseCommand

from backups.inventory import inventory_sync_execute
from backups.models import InventoryRun


class Command(BaseCommand):
    help = "Run an inventory sync of every enabled storage location now and print its totals."

    def handle(self, *args, **options):
        run = inventory_sync_execute(InventoryRun.objects.create().id)
        self.stdout.write(f"inventory sync {run.id}: {run.state}")
        for key, value in (run.summary.get("totals") or {}).items():
            self.stdout.write(f"  {key}: {value}")
        for name, location in run.summary.get("locations", {}).items():
            if location.get("error"):
                self.stdout.write(f"  {name}: could not be listed: {location['error']}")
