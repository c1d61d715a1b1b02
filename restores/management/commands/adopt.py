"""``manage.py adopt ARTIFACT --as USERNAME [--inline]``: an admin adopts a quarantined artifact found in storage."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from backups.models import Artifact
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.permissions import Denied
from restores import adoption, verifications
from restores.models import VerificationRun


class Command(BaseCommand):
    help = ("Adopt a quarantined artifact as an admin (named: adoption is a person's decision) and verify it up "
            "to the structure level; it leaves quarantine only if that passes.")

    def add_arguments(self, parser):
        parser.add_argument("artifact", help="the artifact's id (or its first 8 characters)")
        parser.add_argument("--as", dest="username", required=True, help="the admin who adopts it (the audited actor)")
        parser.add_argument("--inline", action="store_true", help="run the verification in this process")

    def handle(self, *args, artifact, username, inline, **options):
        matches = list(Artifact.objects.filter(pk__startswith=artifact)[:2]) if len(artifact) < 36 else list(
            Artifact.objects.filter(pk=artifact))
        if len(matches) != 1:
            raise CommandError(f"no single artifact matches {artifact!r}")
        actor = get_user_model().objects.filter(username=username, is_active=True).first()
        if actor is None:
            raise CommandError(f"no active user named {username!r}")
        try:
            run = adoption.artifact_adopt(actor=actor, artifact=matches[0])
        except Denied as exc:
            with transaction.atomic():
                audit_record(actor=actor, action=AuditAction.ACCESS_DENIED, obj=matches[0], outcome="denied",
                             details={"attempted": exc.action, "need": exc.need, "via": "manage.py adopt"})
            raise CommandError(f"{username} may not adopt artifacts: only admins do") from None
        except adoption.AdoptionError as exc:
            raise CommandError(str(exc)) from None
        if not inline:
            self.stdout.write(f"adopted; verification {run.pk} queued ({run.level}): the artifact stays quarantined "
                              "until it passes")
            return
        run = verifications.verification_execute(run.pk)
        if run.state != VerificationRun.State.SUCCEEDED:
            raise CommandError(f"verification {run.pk} failed, the artifact stays quarantined: {run.error}")
        self.stdout.write(self.style.SUCCESS(f"verified at level {run.reached_level}: the artifact is available"))
