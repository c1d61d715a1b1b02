"""``manage.py api_token USERNAME``: create an API token for a user and print it (once)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from drpanel.models import ApiToken
from drpanel.services import api_token_create


class Command(BaseCommand):
    help = ("Create a new API token for USERNAME and print it (it expires after DRPANEL_TOKEN_DAYS). "
            "Only its hash is stored.")

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="created with manage.py api_token")
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument("--read-only", action="store_true", help="GET, HEAD and OPTIONS only.")
        scope.add_argument("--metrics", action="store_true", help="A scrape-only token for GET /metrics.")

    def handle(self, *args, username, name, read_only, metrics, **options):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"no active user named {username!r}")
        kind = ApiToken.Kind.METRICS if metrics else ApiToken.Kind.API
        _, raw = api_token_create(actor=None, user=user, name=name, kind=kind, read_only=read_only)
        self.stdout.write(raw)
