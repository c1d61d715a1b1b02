"""``manage.py audit_actions_doc``: write ``docs/audit-actions.md`` from the list of audit actions.

``--check`` writes nothing and fails when the file is out of date (for CI).
"""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from compliance.audit.actions import DOC_PATH, action_choices, actions_markdown


class Command(BaseCommand):
    help = "Write docs/audit-actions.md from compliance/audit/actions.py."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true", help="fail if the file is out of date, write nothing")

    def handle(self, *args, check=False, **options):
        path = Path(settings.BASE_DIR) / DOC_PATH
        text = actions_markdown()
        if check:
            if not path.exists() or path.read_text() != text:
                raise CommandError(f"{DOC_PATH} is out of date: run `python manage.py audit_actions_doc`")
            self.stdout.write(f"{DOC_PATH} is up to date")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.stdout.write(f"wrote {DOC_PATH} ({len(action_choices())} actions)")
