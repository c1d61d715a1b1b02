"""``manage.py restore ARTIFACT TARGET --as USER --confirm TARGET [--mode MODE] [--drill]``: request a restore.

It goes through the same service as the pages and the API: the user must hold
``restore_to_target`` on the target, and a production restore waits for a manager's approval
in the panel (there is no command to approve).
"""

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from backups.models import Artifact
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from restores import requests, runstate
from restores.models import RestoreRun, Target


class Command(BaseCommand):
    help = "Request a restore of an artifact into a target, as a user (production waits for approval)."

    def add_arguments(self, parser):
        parser.add_argument("artifact")
        parser.add_argument("target", help="the target's name")
        parser.add_argument("--as", dest="username", required=True, help="the user requesting it")
        parser.add_argument("--confirm", required=True, help="the target's name again, as typed confirmation")
        parser.add_argument("--mode", default="database-only", choices=RestoreRun.Mode.values)
        parser.add_argument("--drill", action="store_true")
        parser.add_argument("--reason", default="")

    def handle(self, *args, artifact, target, username, confirm, mode, drill, reason, **options):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"no active user {username!r}")
        artifacts = list(Artifact.objects.filter(pk__startswith=artifact)[:2]) if len(artifact) < 36 else list(
            Artifact.objects.filter(pk=artifact))
        if len(artifacts) != 1:
            raise CommandError(f"no single artifact matches {artifact!r}")
        found = Target.objects.filter(name=target).first()
        if found is None:
            raise CommandError(f"no target {target!r}")
        try:
            run = requests.restore_request(actor=user, artifact=artifacts[0], target=found, mode=mode, confirm=confirm,
                                           is_drill=drill, reason=reason, trigger=RestoreRun.Trigger.COMMAND)
        except PermissionDenied as exc:
            with transaction.atomic():
                audit_record(actor=user, action=AuditAction.ACCESS_DENIED, obj=found, outcome="denied",
                             details={"attempted": "restore.request", "via": "manage.py restore",
                                      "reason": str(exc)[:300]})
            raise CommandError(f"refused: {exc}") from None
        except runstate.RestoreError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"restore {run.pk}: {run.state}")
        if run.state == RestoreRun.State.AWAITING_APPROVAL:
            self.stdout.write("a manager holding approve_restore on the target must approve it in the panel")
