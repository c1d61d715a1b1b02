"""``manage.py api_token USERNAME``: create an API token for a user and print it (once)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from drpanel.services import api_token_create


class Command(BaseCommand):
    help = "Create a new API token for USERNAME and print it. Only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="created with manage.py api_token")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"no active user named {username!r}")
        _, raw = api_token_create(actor=None, user=user, name=name)
        self.stdout.write(raw)
