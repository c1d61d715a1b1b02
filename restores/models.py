"""Restore models: targets with their checks, verification runs, restore runs and their post-recovery checklist.

A run's row in PostgreSQL is the truth about it; the RQ job that executes it is only its vehicle.
"""

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from drpanel import queues
from restores.sanity import Expectation, ExpectationError

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
    top of ``DRPANEL_HEALTHCHECK_ALLOWED_HOSTS`` (see ``restores.healthchecks``). ``system``,
    when set, is the only system whose artifacts it receives; its sanity checks then also run
    in that system's restore-tests.

    A target of kind ``server`` receives whole-server recoveries of a point in time (``restores.wholeserver``):
    the recovered cluster becomes a new server in ``server_data_dir`` (empty or absent, under
    ``DRPANEL_SERVER_DATA_ROOTS``), listening on ``server_port``, run by the OS user ``server_user``, on the
    host of its worker pool; ``database_ref`` then names a database of that new server (its checks use it).
    """

    class Kind(models.TextChoices):
        DATABASE = "database", "a database"
        SERVER = "server", "a new server (whole-server recovery)"

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
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.DATABASE)
    server_data_dir = models.CharField(
        "new data directory", max_length=500, blank=True,
        help_text="Server targets: where the recovered server's data directory is made, on the target host.")
    server_port = models.PositiveIntegerField(
        "new server's port", null=True, blank=True, validators=[MinValueValidator(1024), MaxValueValidator(65535)],
        help_text="Server targets: the port the recovered server listens on.")
    server_user = models.CharField(
        "OS user", max_length=32, blank=True,
        validators=[RegexValidator(r"^[a-z_][a-z0-9_-]{0,31}$", "An OS user name.")],
        help_text="Server targets: the OS user that owns and runs the recovered server (never root).")
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
    system = models.ForeignKey(
        "backups.System", null=True, blank=True, on_delete=models.PROTECT, related_name="restore_targets",
        help_text="The system whose artifacts this target receives (others are refused); its sanity checks "
                  "also run in that system's restore-tests. Empty: any system.",
    )
    is_active = models.BooleanField("active", default=True)
    worker_pool = models.CharField(
        max_length=40, blank=True, validators=[queues.validate_pool],
        help_text="The worker pool whose workers restore into it (a host near its database); empty: the pool of "
                  "the artifact's system, else any worker.")
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

    @property
    def is_server(self) -> bool:
        return self.kind == self.Kind.SERVER


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


# --- verification runs -------------------------------------------------------------------------


class VerificationRun(models.Model):
    """One verification of an artifact up to a level of the ladder checksum → decrypt → structure → restore-test.

    A base backup (kind ``base``, in Barman's home) climbs its own ladder: manifest
    (``barman verify-backup``) → restore-test (recovered and started, see
    ``restores.base_verification``). Every level up to ``level`` runs, in order, and stops at the first that fails.
    ``results`` holds one entry per level: ``{level, state, started_at, finished_at,
    duration_ms, bytes, detail, error, data}``; ``reached_level`` is the highest level that
    passed (empty when none did). When the run ends it sets the artifact's
    ``last_verified_level``/``last_verified_at`` to what this run reached.

    States: queued → running → succeeded | failed; queued → failed (its job was lost for good,
    see ``restores.reliability``, or the worker refused it: its requester may no longer start
    jobs); queued | running → cancelled (its requester or a manager cancelled it, see
    ``restores.cancel``; final). The queued → running transition is a conditional update,
    so a job delivered twice runs once. ``progress_at`` moves only when the run's progress
    does (a level, a byte, a percent): a run stalled for ``DRPANEL_RUN_STALL_SECONDS`` is failed.
    """

    class Level(models.TextChoices):
        CHECKSUM = "checksum", "checksum"
        DECRYPT = "decrypt", "decrypt"
        STRUCTURE = "structure", "structure"
        RESTORE_TEST = "restore-test", "restore-test"
        MANIFEST = "manifest", "manifest (base backups)"

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "manual"
        SCHEDULE = "schedule", "schedule"
        API = "api", "API"
        BACKUP = "backup", "after the backup"
        ADOPTION = "adoption", "adoption of an artifact found in storage"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    artifact = models.ForeignKey("backups.Artifact", on_delete=models.PROTECT, related_name="verifications")
    level = models.CharField(max_length=12, choices=Level.choices)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.MANUAL)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    progress_at = models.DateTimeField(null=True, blank=True, help_text="When its progress last moved.")
    job_id = models.CharField(max_length=64, blank=True)
    worker_host = models.CharField(max_length=100, blank=True, help_text="The host whose worker ran it.")
    enqueue_count = models.PositiveSmallIntegerField(default=0)
    location = models.CharField(max_length=63, blank=True, help_text="The storage location of the copy read.")
    percent = models.PositiveSmallIntegerField(default=0)
    results = models.JSONField(default=list, blank=True)
    reached_level = models.CharField(max_length=12, blank=True)
    error = models.TextField(blank=True)
    needs_cleanup = models.BooleanField(default=False, help_text="A throw-away database may be left to drop.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["artifact", "created_at"], name="verification_artifact"),
                   models.Index(fields=["state", "created_at"], name="verification_state")]

    def __str__(self) -> str:
        return f"{self.level} verification {str(self.id)[:8]}"

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    @property
    def is_done(self) -> bool:
        return self.state in (self.State.SUCCEEDED, self.State.FAILED, self.State.CANCELLED)

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


# The ladder of artifacts in a storage location, in order; a base backup (in Barman's home) has its own.
LEVELS = ("checksum", "decrypt", "structure", "restore-test")
BASE_LEVELS = ("manifest", "restore-test")
ALL_LEVELS = tuple(VerificationRun.Level.values)


# --- restore runs --------------------------------------------------------------------------------


class RestoreRun(models.Model):
    """A restore of an artifact — or of a continuously protected system at a recovery point (latest, a moment,
    a named restore point; database-only, or whole-server into a server target) — into a target, in a mode,
    with its steps, timings and rollback (none for whole-server: the new server has no previous state).

    States and the only allowed transitions (each is a conditional update on the state the
    caller saw, and each writes an audit event; see ``restores.requests``, ``restores.execution`` and
    ``restores.rollback``):

    - requested → awaiting_approval (production target) | queued (staging, scratch)
    - awaiting_approval → approved (a manager other than the requester, holding
      ``approve_restore`` on the target, re-entered their password) | rejected (final: one
      rejection ends the request) | expired (nobody approved in time; final)
    - approved → queued (the approval is consumed in the same transaction)
    - queued → running (a worker took the job; a second delivery finds it running and does
      nothing) | failed (its job was lost and could not be queued again) | cancelled (its
      requester or a manager cancelled it; its job is removed; final)
    - running → succeeded (swapped in, health checks answering) | failed (anything went
      wrong, or the worker refused it at the start: a right withdrawn, an approval older than
      ``DRPANEL_APPROVAL_EXECUTION_MINUTES``; before the swap the target is untouched) |
      cancelled (before the swap only, under the target's swap lock: its job is stopped, the
      side database dropped, the target untouched; final; after the swap, roll back instead)
    - succeeded | failed-after-the-swap → rolled_back (a manager swapped the previous
      database back within the rollback window; final)

    "Active" states (requested, awaiting_approval, approved, queued, running) are limited to
    one run per target by a partial unique index: two restores into one target cannot
    both be in flight, whoever asks first wins.

    ``binding_hash`` is the SHA-256 the production approval is bound to (artifact, target,
    mode, the target's database and config directory); the worker recomputes it and refuses
    a run whose approval does not match. RTO = request → healthy (``rto_seconds``); RPO = the
    artifact's age when it went live (``rpo_seconds``).
    """

    class Mode(models.TextChoices):
        DATABASE = "database-only", "database only"
        CONFIG = "config-only", "config only"
        FULL = "full", "full (database and config)"
        SERVER = "whole-server", "whole server (a new server from a point in time)"

    class State(models.TextChoices):
        REQUESTED = "requested", "requested"
        AWAITING_APPROVAL = "awaiting_approval", "awaiting approval"
        APPROVED = "approved", "approved"
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        ROLLED_BACK = "rolled_back", "rolled back"
        REJECTED = "rejected", "rejected"
        EXPIRED = "expired", "expired"
        CANCELLED = "cancelled", "cancelled"

    class RecoveryKind(models.TextChoices):
        LATEST = "latest", "latest"
        TIME = "time", "a moment"
        NAME = "name", "a named restore point"

    ACTIVE_STATES = ("requested", "awaiting_approval", "approved", "queued", "running")
    FINAL_STATES = ("succeeded", "failed", "rolled_back", "rejected", "expired", "cancelled")

    class Trigger(models.TextChoices):
        MANUAL = "manual", "manual"
        API = "api", "API"
        COMMAND = "command", "management command"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    artifact = models.ForeignKey("backups.Artifact", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="restore_runs",
                                 help_text="The logical full restored; empty for a point-in-time restore.")
    config_artifact = models.ForeignKey("backups.Artifact", null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="config_restore_runs",
                                        help_text="The config artifact restored with a full restore.")
    target = models.ForeignKey(Target, on_delete=models.PROTECT, related_name="runs")
    mode = models.CharField(max_length=14, choices=Mode.choices)
    state = models.CharField(max_length=18, choices=State.choices, default=State.REQUESTED)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.MANUAL)
    is_drill = models.BooleanField(default=False, help_text="Started on purpose to measure RTO (staging, scratch).")
    reason = models.CharField(max_length=500, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    approval = models.ForeignKey("drpanel.Approval", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="+")
    binding_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now, help_text="When it was requested: the RTO clock starts.")
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    swapped_at = models.DateTimeField(null=True, blank=True)
    healthy_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    progress_at = models.DateTimeField(null=True, blank=True,
                                       help_text="When its progress (bytes, percent, steps) last moved.")
    job_id = models.CharField(max_length=64, blank=True)
    worker_host = models.CharField(max_length=100, blank=True, help_text="The host whose worker ran it.")
    enqueue_count = models.PositiveSmallIntegerField(default=0)
    steps = models.JSONField(default=list, blank=True)
    percent = models.PositiveSmallIntegerField(default=0)
    eta_seconds = models.PositiveIntegerField(null=True, blank=True)
    plan = models.JSONField(default=dict, blank=True, help_text="How the archive was restored (file -jN or stream).")
    results = models.JSONField(default=dict, blank=True, help_text="Sanity checks, row counts, health checks.")
    error = models.TextField(blank=True)
    rto_seconds = models.FloatField(null=True, blank=True)
    rpo_seconds = models.FloatField(null=True, blank=True)
    rollback_until = models.DateTimeField(null=True, blank=True)
    rolled_back_at = models.DateTimeField(null=True, blank=True)
    rolled_back_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="+")
    rollback_seconds = models.FloatField(null=True, blank=True)
    copies_dropped_at = models.DateTimeField(null=True, blank=True,
                                             help_text="When the pre-restore (or failed) copies were dropped.")
    needs_cleanup = models.BooleanField(default=False, help_text="Its databases may need reconciling.")
    # A point-in-time restore carries a recovery point of a continuously protected system instead of an artifact.
    recovery_system = models.ForeignKey("backups.System", null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="point_in_time_restores",
                                        help_text="The system recovered to a point in time (no artifact).")
    recovery_kind = models.CharField(max_length=6, choices=RecoveryKind.choices, blank=True)
    recovery_time = models.DateTimeField(null=True, blank=True, help_text="The moment recovered to (kind time).")
    recovery_name = models.CharField(max_length=63, blank=True, help_text="The restore point (kind name).")
    recovery_location = models.ForeignKey(
        "backups.StorageLocation", null=True, blank=True, on_delete=models.PROTECT, related_name="offsite_restores",
        help_text="The off-site location the point is recovered from; empty: Barman's home, on the host of the run's "
                  "worker pool (a whole server for another pool's target: the system's pool, then shipped).")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["target", "created_at"], name="restorerun_target"),
                   models.Index(fields=["state", "created_at"], name="restorerun_state")]
        constraints = [
            models.UniqueConstraint(
                fields=["target"], condition=Q(state__in=["requested", "awaiting_approval", "approved", "queued",
                                                          "running"]),
                name="restores_one_active_run_per_target"),
            # Exactly one of an artifact or a recovery point (of a system, database-only or whole-server).
            models.CheckConstraint(
                condition=(Q(artifact__isnull=False, recovery_kind="", recovery_system__isnull=True)
                           & ~Q(mode="whole-server")
                           | Q(artifact__isnull=True, recovery_system__isnull=False,
                               mode__in=["database-only", "whole-server"])
                           & ~Q(recovery_kind="")),
                name="restores_artifact_or_recovery_point"),
        ]

    def __str__(self) -> str:
        return f"{self.get_mode_display()} restore into {self.target.name} ({str(self.id)[:8]})"

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def is_point_in_time(self) -> bool:
        return bool(self.recovery_kind)

    @property
    def source_system(self):
        """The system whose data this run restores: the artifact's, or the one recovered to a point in time."""
        return self.recovery_system if self.is_point_in_time else self.artifact.system

    @property
    def recovery_point(self):
        """The ``restores.pitr.RecoveryPoint`` of a point-in-time restore, None for an artifact's."""
        from restores.pitr import RecoveryPoint  # the engine's module imports Barman's; models load first

        if self.recovery_kind == self.RecoveryKind.TIME:
            return RecoveryPoint.at(self.recovery_time)
        if self.recovery_kind == self.RecoveryKind.NAME:
            return RecoveryPoint.named(self.recovery_name)
        return RecoveryPoint.latest() if self.recovery_kind else None

    @property
    def ship_pools(self) -> tuple[str, str] | None:
        """``(the system's pool, the target's pool)`` when a whole server is recovered from Barman's home onto
        another host: the system's pool (the Barman host) recovers it and ships it to the target's
        (``restores.shipping``). None: recovered where the run runs."""
        if not self.is_whole_server or self.recovery_location_id:
            return None
        system_pool, target_pool = self.recovery_system.worker_pool, self.target.worker_pool
        if system_pool and target_pool and system_pool != target_pool:
            return system_pool, target_pool
        return None

    @property
    def recovery_source(self) -> str:
        """Where a point-in-time restore recovers from, as the run page, the audit log and the API name it."""
        if not self.is_point_in_time:
            return ""
        if self.recovery_location_id:
            return f"off-site copy at {self.recovery_location.name}"
        if (pools := self.ship_pools) is not None:
            return f"Barman's home on pool {pools[0]}, shipped to pool {pools[1]}"
        # The run's pool (restores.execution.RestoreRuns.pool_for): Barman recovers on the host of the worker.
        pool = self.target.worker_pool or self.recovery_system.worker_pool
        return f"Barman's home on pool {pool}" if pool else "Barman's home on the worker's host"

    @property
    def is_done(self) -> bool:
        return self.state in self.FINAL_STATES

    @property
    def restores_database(self) -> bool:
        return self.mode in (self.Mode.DATABASE, self.Mode.FULL)

    @property
    def restores_config(self) -> bool:
        return self.mode in (self.Mode.CONFIG, self.Mode.FULL)

    @property
    def is_whole_server(self) -> bool:
        return self.mode == self.Mode.SERVER

    @property
    def needs_checklist(self) -> bool:
        return self.target.is_production or self.mode == self.Mode.FULL


class RecoveryCheck(models.Model):
    """One item of the post-recovery checklist of a production or full restore (the old guide's ten).

    Automatic items (database connectivity, tables intact, health URLs, backups re-enabled)
    are decided by the panel with their evidence; the others are ticked by a person with a
    note. Status: pending → passed | failed (automatic) or pending → done (ticked by hand).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        PASSED = "passed", "passed"
        FAILED = "failed", "failed"
        DONE = "done", "done"

    run = models.ForeignKey(RestoreRun, on_delete=models.CASCADE, related_name="recovery_checks")
    position = models.PositiveSmallIntegerField()
    code = models.CharField(max_length=40)
    title = models.CharField(max_length=200)
    automatic = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    summary = models.CharField(max_length=500, blank=True)
    evidence = models.JSONField(default=list, blank=True)
    note = models.TextField(blank=True)
    ticked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="+")
    ticked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["run", "code"], name="restores_one_check_per_code")]

    def __str__(self) -> str:
        return f"{self.title}: {self.status}"


# Disaster mode (incidents and runbooks) keeps its models in a module of its own.
from restores.models_incidents import (  # noqa: E402, F401
    Incident,
    IncidentStep,
    RecoveryObjective,
    RunbookTemplate,
    Scenario,
)
