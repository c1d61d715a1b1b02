"""Models that cross the apps: the panel-wide capabilities of the roles, and API tokens."""

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "drp_"  # noqa: S105 - a public prefix, not a secret


class Capability(models.Model):
    """Carries the panel-wide permissions of DESIGN.md's role table; it has no table and no rows.

    Roles (the groups Operator, Manager, Auditor, Admin) are granted these by a data
    migration. Rights on one target are django-guardian object permissions on
    ``restores.Target`` instead.
    """

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_panel", "View the dashboard, artifacts, runs, contacts and checklists"),
            ("start_jobs", "Start a verification or a backup"),
            ("tick_checklists", "Tick daily and weekly checks"),
            ("sign_certification", "Sign the monthly DR certification"),
            ("edit_contacts", "Edit the emergency contact roster"),
            ("read_audit", "Read and export the audit trail"),
            ("manage_panel", "Manage users, systems, targets and storage locations"),
        ]

    def __str__(self) -> str:
        return "capability"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class ApiToken(models.Model):
    """A personal API token. Only its SHA-256 is stored; the token is shown once, at creation.

    States: active → revoked (final). A revoked token never authenticates again.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="The first characters, to recognise a token in lists.")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate() -> str:
        return TOKEN_PREFIX + secrets.token_urlsafe(32)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class Approval(models.Model):
    """A second person's consent to one exact action (``drpanel.approvals`` owns every transition).

    ``kind`` names the action (``artifact.delete``, later ``restore.production``); the subject is
    any row (content type + id); ``binding_hash`` is the SHA-256 of the canonical parameters, so
    an approval given for one set of parameters is worth nothing for another.

    States: pending → approved | rejected | expired; approved → consumed (the action ran) |
    expired. Rejected, expired and consumed are final.
    """

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        APPROVED = "approved", "approved"
        REJECTED = "rejected", "rejected"
        EXPIRED = "expired", "expired"
        CONSUMED = "consumed", "consumed"

    kind = models.CharField(max_length=50, db_index=True)
    content_type = models.ForeignKey("contenttypes.ContentType", on_delete=models.PROTECT, related_name="+")
    object_id = models.CharField(max_length=64)
    params = models.JSONField(default=dict, blank=True)
    binding_hash = models.CharField(max_length=64)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    reason = models.TextField(blank=True)
    decision_note = models.TextField(blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    consumed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["content_type", "object_id", "state"], name="approval_subject")]

    def __str__(self) -> str:
        return f"{self.kind} approval #{self.pk} ({self.state})"

    @property
    def subject(self):
        return self.content_type.get_object_for_this_type(pk=self.object_id)

    @property
    def is_open(self) -> bool:
        return self.state == self.State.PENDING and self.expires_at > timezone.now()
