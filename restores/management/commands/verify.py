"""``manage.py verify ARTIFACT [--level LEVEL] [--inline]``: verify an artifact (queued, or here and now)."""

from django.core.management.base import BaseCommand, CommandError

from backups.models import Artifact
from restores import verifications
from restores.models import ALL_LEVELS, VerificationRun


class Command(BaseCommand):
    help = ("Verify an artifact up to a level (checksum, decrypt, structure, restore-test; a base backup: manifest, "
            "restore-test), as the system.")

    def add_arguments(self, parser):
        parser.add_argument("artifact", help="the artifact's id (or its first 8 characters)")
        parser.add_argument("--level", choices=ALL_LEVELS,
                            help="default: decrypt (manifest for a base backup)")
        parser.add_argument("--inline", action="store_true", help="run it in this process instead of a worker")

    def handle(self, *args, artifact, level, inline, **options):
        matches = list(Artifact.objects.filter(pk__startswith=artifact)[:2]) if len(artifact) < 36 else list(
            Artifact.objects.filter(pk=artifact))
        if len(matches) != 1:
            raise CommandError(f"no single artifact matches {artifact!r}")
        level = level or ("manifest" if matches[0].kind == Artifact.Kind.BASE else "decrypt")
        try:
            run = verifications.verification_request(actor=None, artifact=matches[0], level=level,
                                                     trigger=VerificationRun.Trigger.MANUAL)
        except verifications.VerificationError as exc:
            raise CommandError(str(exc)) from None
        if not inline:
            self.stdout.write(f"verification {run.pk} queued ({level})")
            return
        run = verifications.verification_execute(run.pk)
        for result in run.results:
            self.stdout.write(f"  {result['name']:<13} {result['state']:<10} {result.get('detail', '')}")
        if run.state != VerificationRun.State.SUCCEEDED:
            raise CommandError(f"verification {run.pk} failed: {run.error}")
        self.stdout.write(self.style.SUCCESS(f"verified at level {run.reached_level}"))
