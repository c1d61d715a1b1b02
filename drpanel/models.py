"""Models that cross the apps: the panel-wide capabilities of the roles, and API tokens."""

import hashlib
import secrets
from datetime import timedelta

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


def token_expiry(created_at):
    """When a token created at ``created_at`` stops working (``DRPANEL_TOKEN_DAYS`` later)."""
    return created_at + timedelta(days=settings.TOKEN_DAYS)


class ApiTokenQuerySet(models.QuerySet):
    def active(self):
        """Tokens that authenticate now: not revoked and not expired."""
        return self.filter(revoked_at__isnull=True, expires_at__gt=timezone.now())


class ApiToken(models.Model):
    """A personal API token. Only its SHA-256 is stored; the token is shown once, at creation.

    States: active → revoked (final), active → expired (at ``expires_at``, final). A revoked or
    expired token never authenticates again.

    Kinds: ``api`` calls ``/api/v1/`` as its user, with the user's roles (``read_only`` limits it to
    GET, HEAD and OPTIONS); ``metrics`` is scrape-only: ``GET /metrics`` and nothing else.
    """

    class Kind(models.TextChoices):
        API = "api", "API"
        METRICS = "metrics", "metrics scrape only"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="The first characters, to recognise a token in lists.")
    token_hash = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.API)
    read_only = models.BooleanField(default=False, help_text="Only safe methods (GET, HEAD, OPTIONS).")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def save(self, *args, **kwargs):
        if self.expires_at is None:
            self.expires_at = token_expiry(self.created_at)
        super().save(*args, **kwargs)

    @staticmethod
    def generate() -> str:
        return TOKEN_PREFIX + secrets.token_urlsafe(32)

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    @property
    def access(self) -> str:
        """What the token may do, in words (the token page and the API show it)."""
        if self.kind == self.Kind.METRICS:
            return "metrics"
        return "read-only" if self.read_only else "read-write"


class SignInFailureWindow(models.Model):
    """Failed sign-ins with usernames that do not exist, counted over one time window.

    ``drpanel.signin`` owns it: each such failure adds one to its window's row (never an audit
    event), and once the window has ended one ``auth.unknown_user_failures`` event records the
    counts and ``recorded_at`` is set. States: counting (``recorded_at`` empty) → recorded (final).
    """

    window_start = models.DateTimeField(unique=True)
    window_end = models.DateTimeField()
    failures = models.PositiveIntegerField(default=0)
    lockouts = models.PositiveIntegerField(default=0)
    addresses = models.JSONField(default=dict, blank=True, help_text="Failures per client address (the first 20).")
    recorded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["window_start"]

    def __str__(self) -> str:
        return f"unknown-user sign-in failures from {self.window_start:%Y-%m-%d %H:%M}"


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
