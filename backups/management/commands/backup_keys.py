"""``manage.py backup_keys list|generate|rotate``: master key ids, a new key, re-wrapping everything."""

from django.core.management.base import BaseCommand, CommandError

from backups.errors import BackupError
from backups.keyrotation import key_rotation_execute
from backups.keys import generate_key, get_keyring


class Command(BaseCommand):
    help = ("list: key ids and the active one (never key material); generate: print a new base64 key for "
            "DRPANEL_KEYS; rotate: re-wrap every artifact under the active key (or --to KEY_ID), in this process.")

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["list", "generate", "rotate"])
        parser.add_argument("--to", dest="to_key_id", default=None)

    def handle(self, *args, action, to_key_id, **options):
        keyring = get_keyring()
        if action == "generate":
            self.stdout.write(generate_key())
        elif action == "list":
            for key_id in keyring.key_ids():
                self.stdout.write(f"{key_id}{'  (active)' if key_id == keyring.active_key_id else ''}")
        else:
            target = to_key_id or keyring.active_key_id
            if not target or target not in keyring.key_ids():
                raise CommandError(f"{target!r} is not a key this process holds")
            try:
                result = key_rotation_execute(target)
            except BackupError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"re-wrapped {result['rewrapped']} artifacts under {target}; "
                              f"{len(result['failed'])} failed")
            for failure in result["failed"]:
                self.stdout.write(f"  {failure['artifact']}: {failure['error']}")
