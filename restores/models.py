"""Restore models: targets, with their SQL sanity checks and HTTP health checks.

Verification runs, restore runs and approvals build on these in the next phase.
"""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

TARGET_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"

RESTORE_TO_TARGET = "restores.restore_to_target"
APPROVE_RESTORE = "restores.approve_restore"
TARGET_RIGHTS = {
    "restore_to_target": "Restore into this target",
    "approve_restore": "Approve restores into this target and roll them back",
}


class Target(models.Model):
    """A place to restore into: a PostgreSQL database (named by a secret reference) and a config directory.

    The database is reached through ``database_ref`` (``env:NAME`` or ``file:/path`` holding a
    libpq URL, see ``drpanel.secrets``); the URL itself is never stored. ``name`` is what a
    person types to confirm a restore. Rights on one target are django-guardian object
    permissions: ``restore_to_target`` (request a restore) and ``approve_restore`` (approve a
    production restore, roll back). A target is never deleted (runs refer to it); it is
    deactivated instead, and an inactive target accepts no new restore.

    ``health_check_hosts`` are hosts an admin approved for this target's health checks, on
    top of ``DRPANEL_HEALTHCHECK_ALLOWED_HOSTS`` (see ``restores.healthchecks``).
    """

    class Environment(models.TextChoices):
        PRODUCTION = "production", "production"
        STAGING = "staging", "staging"
        SCRATCH = "scratch", "scratch"

    name = models.CharField(
        max_length=63, unique=True,
        validators=[RegexValidator(TARGET_NAME_PATTERN, "Use lowercase letters, digits, '-' and '_' "
                                   "(starting with a letter or digit), at most 63 characters.")],
        help_text="Typed by whoever confirms a restore into this target.",
    )
    environment = models.CharField(max_length=12, choices=Environment.choices)
    description = models.CharField(max_length=300, blank=True)
    database_ref = models.CharField(
        "database", max_length=300,
        help_text="A secret reference to the libpq URL of the database: env:VARIABLE or file:/absolute/path.",
    )
    config_dir = models.CharField(
        "config directory", max_length=500, blank=True,
        help_text="Absolute path the configuration is restored into; empty if this target takes no config.",
    )
    health_check_hosts = models.JSONField(
        default=list, blank=True,
        help_text="Hosts (names, IP addresses or networks) approved for this target's health checks.",
    )
    is_active = models.BooleanField("active", default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        default_permissions = ()
        permissions = list(TARGET_RIGHTS.items())

    def __str__(self) -> str:
        return self.name

    @property
    def is_production(self) -> bool:
        return self.environment == self.Environment.PRODUCTION


class SanityCheck(models.Model):
    """An SQL query run read-only on a restored database, and what its single value must satisfy.

    ``expectation`` is a comparison such as ``>= 1``, ``= 0``, ``!= 'broken'`` (see
    ``restores.sanity.Expectation``). The query must return exactly one row with one column.
    """

    target = models.ForeignKey(Target, on_delete=models.CASCADE, related_name="sanity_checks")
    position = models.PositiveSmallIntegerField(default=0)
    name = models.CharField(max_length=100)
    query = models.TextField(max_length=4000)
    expectation = models.CharField(max_length=200)

    class Meta:
        ordering = ["position", "pk"]

    def __str__(self) -> str:
        return f"{self.name}: {self.expectation}"

    def clean(self):
        from restores.sanity import Expectation, ExpectationError

        try:
            Expectation.parse(self.expectation)
        except ExpectationError as exc:
            raise ValidationError({"expectation": str(exc)}) from None


class HealthCheck(models.Model):
    """An HTTP(S) URL called after a restore, and the status it must answer.

    The URL is checked against the health-check allowlist when it is saved and again,
    with the address actually connected to, each time it runs (``restores.healthchecks``).
    """

    target = models.ForeignKey(Target, on_delete=models.CASCADE, related_name="health_checks")
    position = models.PositiveSmallIntegerField(default=0)
    url = models.CharField("URL", max_length=2000)
    expected_status = models.PositiveSmallIntegerField(
        default=200, validators=[MinValueValidator(100), MaxValueValidator(599)])

    class Meta:
        ordering = ["position", "pk"]

    def __str__(self) -> str:
        return f"{self.url} → {self.expected_status}"
