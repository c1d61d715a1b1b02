"""``manage.py demo_writer``: keep placing orders in the demo database (a child of ``serve --demo``)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from backups import demo
from backups.demo_writer import write_orders


class Command(BaseCommand):
    help = "Place an order in the demo database every few seconds, until stopped."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=5.0, help="seconds between two orders (default 5)")
        parser.add_argument("--count", type=int, default=None, help="stop after this many orders")

    def handle(self, *args, every, count, **options):
        if settings.PRODUCTION:
            raise CommandError("the demo writer is refused when DRPANEL_ENV=production")
        if every <= 0:
            raise CommandError("--every must be a positive number of seconds")
        placed = write_orders(demo.source_url(), every=every, count=count)
        self.stdout.write(f"{placed} orders placed")
