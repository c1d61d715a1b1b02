"""The backup catalog: systems, storage locations, artifacts, their copies, and backup/inventory runs.

No secret is stored here: a system's database and a location's credentials are secret
references (``drpanel.secrets``), resolved by the process that needs them.
"""

import uuid
from datetime import timedelta
from pathlib import PurePosixPath

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from backups.storage import backend_for
from drpanel import endpoints, queues, secrets

NAME = RegexValidator(r"^[a-z0-9][a-z0-9_-]{0,62}$", "Lower-case letters, digits, dashes and underscores.")


def _check_reference(value: str) -> None:
    try:
        secrets.validate(value)
    except secrets.SecretReferenceError as exc:
        raise ValidationError(str(exc)) from None


class System(models.Model):
    """A protected application: a PostgreSQL database (by secret reference) plus config paths, and its policy.

    Policy: a full backup every ``full_every_hours``, an incremental every
    ``incremental_every_hours`` when enabled (incrementals come from an external tool for now),
    a config backup every ``config_every_hours``. Retention keeps the last ``keep_last`` plus
    the newest of each of the last ``keep_daily`` days, ``keep_weekly`` weeks and
    ``keep_monthly`` months, per kind.
    """

    name = models.CharField(max_length=63, unique=True, validators=[NAME])
    description = models.CharField(max_length=200, blank=True)
    database_ref = models.CharField(
        "database (secret reference)", max_length=300, validators=[_check_reference],
        help_text="env:VARIABLE or file:/path naming a libpq URL; the URL itself is never stored.")
    config_paths = models.JSONField(default=list, blank=True,
                                    help_text="Absolute paths of config files or directories.")
    schedule_enabled = models.BooleanField(default=True)
    full_every_hours = models.PositiveIntegerField(default=24)
    incremental_enabled = models.BooleanField(default=False)
    incremental_every_hours = models.PositiveIntegerField(default=6)
    config_every_hours = models.PositiveIntegerField(default=4)
    keep_last = models.PositiveIntegerField(default=7)
    keep_daily = models.PositiveIntegerField(default=7)
    keep_weekly = models.PositiveIntegerField(default=4)
    keep_monthly = models.PositiveIntegerField(default=6)
    continuous_enabled = models.BooleanField(
        "continuous protection", default=False,
        help_text="Stream the server's WAL through Barman (a replication slot), for an RPO of seconds.")
    rpo_target_minutes = models.PositiveIntegerField(
        "RPO target (minutes)", default=30, validators=[MinValueValidator(1), MaxValueValidator(7 * 24 * 60)],
        help_text="An alert fires when the measured RPO passes it.")
    base_every_hours = models.PositiveIntegerField(
        "base backup every (hours)", default=7 * 24, validators=[MinValueValidator(1)],
        help_text="Continuous protection: how often Barman takes a base backup (weekly by default).")
    recovery_window_days = models.PositiveIntegerField(
        "recovery window (days)", default=14, validators=[MinValueValidator(1), MaxValueValidator(3660)],
        help_text="Continuous protection: any point in this many last days stays recoverable.")
    worker_pool = models.CharField(
        max_length=40, blank=True, validators=[queues.validate_pool],
        help_text="The worker pool whose workers run its jobs (a host near its database); empty: any worker.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        paths = self.config_paths or []
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValidationError({"config_paths": "A list of absolute paths."})
        for path in paths:
            pure = PurePosixPath(path)
            if not pure.is_absolute() or ".." in pure.parts:
                raise ValidationError({"config_paths": f"{path!r} is not an absolute path without '..'."})
            try:
                endpoints.check_config_path(path, what="config path")
            except endpoints.EndpointRefused as exc:
                raise ValidationError({"config_paths": str(exc)}) from None
        names = [PurePosixPath(p).name for p in paths]
        if len(set(names)) != len(names):
            raise ValidationError({"config_paths": "Two paths share a last name; the archive could not tell them "
                                                   "apart."})

    def interval(self, kind: str) -> timedelta | None:
        """How often a kind is due under the policy (None: not scheduled)."""
        if kind == Artifact.Kind.FULL:
            return timedelta(hours=self.full_every_hours)
        if kind == Artifact.Kind.CONFIG:
            return timedelta(hours=self.config_every_hours) if self.config_paths else None
        if kind == Artifact.Kind.INCREMENTAL:
            return timedelta(hours=self.incremental_every_hours) if self.incremental_enabled else None
        if kind == Artifact.Kind.BASE:
            return timedelta(hours=self.base_every_hours) if self.continuous_enabled else None
        return None


class StorageLocation(models.Model):
    """Where artifacts live: a local directory, or an S3 bucket + prefix on any S3-compatible endpoint.

    One enabled location is the primary (backups are written there first); every enabled
    off-site location receives a copy that is re-checked by checksum. Credentials are secret
    references, or empty for boto3's default chain.
    """

    class Kind(models.TextChoices):
        LOCAL = "local", "local directory"
        S3 = "s3", "S3 bucket"

    class Role(models.TextChoices):
        PRIMARY = "primary", "primary"
        OFFSITE = "offsite", "off-site"

    name = models.CharField(max_length=63, unique=True, validators=[NAME])
    kind = models.CharField(max_length=10, choices=Kind.choices)
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.OFFSITE)
    enabled = models.BooleanField(default=True)
    path = models.CharField(max_length=500, blank=True, help_text="Local: an absolute directory.")
    bucket = models.CharField(max_length=63, blank=True)
    prefix = models.CharField(max_length=200, blank=True)
    region = models.CharField(max_length=40, blank=True)
    endpoint_url = models.URLField(blank=True, help_text="For S3-compatible stores; empty for AWS.")
    access_key_ref = models.CharField("access key (secret reference)", max_length=300, blank=True)
    secret_key_ref = models.CharField("secret key (secret reference)", max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["role", "name"]
        constraints = [
            models.UniqueConstraint(fields=["role"], condition=Q(role="primary", enabled=True),
                                    name="backups_one_enabled_primary"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.kind == self.Kind.LOCAL:
            if not self.path or not PurePosixPath(self.path).is_absolute() or ".." in PurePosixPath(self.path).parts:
                raise ValidationError({"path": "A local location needs an absolute directory."})
        elif self.kind == self.Kind.S3:
            if not self.bucket:
                raise ValidationError({"bucket": "An S3 location needs a bucket."})
            try:
                endpoints.check_endpoint(self.endpoint_url, what="endpoint URL")
            except endpoints.EndpointRefused as exc:
                raise ValidationError({"endpoint_url": str(exc)}) from None
            if bool(self.access_key_ref) != bool(self.secret_key_ref):
                raise ValidationError({"secret_key_ref": "Give both credential references, or neither "
                                                         "(boto3's default chain)."})
            for field in ("access_key_ref", "secret_key_ref"):
                if getattr(self, field):
                    try:
                        secrets.validate(getattr(self, field))
                    except secrets.SecretReferenceError as exc:
                        raise ValidationError({field: str(exc)}) from None

    @property
    def is_offsite(self) -> bool:
        return self.role == self.Role.OFFSITE

    def backend(self):
        return backend_for(self)


class ArtifactQuerySet(models.QuerySet):
    def live(self):
        """Artifacts the panel stands behind: not deleted, failed, still writing, or quarantined.

        Quarantined artifacts were found in storage; retention, key rotation and the cloud-sync
        check leave them alone until they are adopted and verified.
        """
        return self.exclude(status__in=[Artifact.Status.DELETED, Artifact.Status.FAILED, Artifact.Status.WRITING,
                                        Artifact.Status.QUARANTINED])


class Artifact(models.Model):
    """One backup object, identified by its UUID (which is also in its encrypted header).

    ``sha256``/``size`` are of the stored bytes (they change when a key rotation rewrites the
    key section); ``plaintext_sha256``/``plaintext_size`` of what it decrypts to.

    Status transitions: writing → available | failed; available ↔ missing (inventory sync);
    available | missing → deleted (retention or an approved deletion; final). What the inventory
    finds in storage (``source`` sync or legacy) starts *quarantined*: not restorable, not
    scheduled, no evidence. ``restores.adoption.artifact_adopt`` queues a verification up to the
    structure level; quarantined → available when it passes (``adopted_by``/``adopted_at`` set),
    and a failure leaves it quarantined with the reason in ``quarantine_reason``.
    ``last_verified_level``/``last_verified_at`` are set by verification runs (restores app).
    """

    class Kind(models.TextChoices):
        FULL = "full", "full"
        INCREMENTAL = "incremental", "incremental"
        CONFIG = "config", "config"
        BASE = "base", "base (Barman)"

    class Format(models.TextChoices):
        PG_CUSTOM = "pg_custom", "pg_dump custom"
        PG_DIRECTORY_TAR = "pg_directory_tar", "pg_dump directory (tarred)"
        PG_PLAIN = "pg_plain", "plain SQL"
        PG_PLAIN_GZIP = "pg_plain_gzip", "plain SQL, gzip"
        CONFIG_TAR = "config_tar", "config tar"
        WAL = "wal", "WAL segments"
        BARMAN_BASE = "barman_base", "Barman base backup"
        UNKNOWN = "unknown", "unknown"

    class Encryption(models.TextChoices):
        DRPANEL = "drpanel-v1", "DR Panel AES-256-GCM"
        OPENSSL = "openssl-aes-256-cbc-pbkdf2", "legacy openssl AES-256-CBC"
        NONE = "none", "not encrypted"

    class Status(models.TextChoices):
        WRITING = "writing", "writing"
        AVAILABLE = "available", "available"
        MISSING = "missing", "missing"
        FAILED = "failed", "failed"
        DELETED = "deleted", "deleted"
        QUARANTINED = "quarantined", "quarantined"

    class Source(models.TextChoices):
        BACKUP = "backup", "backup job"
        SYNC = "sync", "inventory (manifest)"
        LEGACY = "legacy", "legacy import"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    system = models.ForeignKey(System, on_delete=models.PROTECT, related_name="artifacts")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    format = models.CharField(max_length=20, choices=Format.choices)
    encryption = models.CharField(max_length=30, choices=Encryption.choices, default=Encryption.DRPANEL)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.WRITING)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.BACKUP)
    created_at = models.DateTimeField(default=timezone.now)
    size = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    plaintext_size = models.BigIntegerField(null=True, blank=True)
    plaintext_sha256 = models.CharField(max_length=64, blank=True)
    key_id = models.CharField(max_length=300, blank=True)
    storage_key = models.CharField(max_length=900)
    manifest = models.JSONField(default=dict, blank=True)
    offsite_verified_at = models.DateTimeField(null=True, blank=True,
                                               help_text="An off-site copy's checksum matched (cloud sync verified).")
    last_verified_level = models.CharField(max_length=20, blank=True)
    last_verified_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    quarantine_reason = models.TextField(blank=True, help_text="Why a quarantined artifact is not usable yet.")
    adopted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", help_text="Who adopted this artifact found in storage.")
    adopted_at = models.DateTimeField(null=True, blank=True,
                                      help_text="When its adoption verification passed and it left quarantine.")

    objects = ArtifactQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["created_at", "id"], name="artifact_created"),
            models.Index(fields=["size", "id"], name="artifact_size"),
            # Covering: the dashboard's size charts read the newest artifacts' sizes from the index alone (and
            # the newest artifact of a kind walks it backwards, as before).
            models.Index(fields=["system", "kind", "created_at"], include=["size", "status", "id"],
                         name="artifact_created_sizes"),
            models.Index(fields=["status", "created_at"], name="artifact_status"),
        ]

    def __str__(self) -> str:
        return f"{self.system.name} {self.kind} {self.created_at:%Y-%m-%d %H:%M} ({str(self.id)[:8]})"

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    @property
    def is_live(self) -> bool:
        return self.status in (self.Status.AVAILABLE, self.Status.MISSING)

    @property
    def is_quarantined(self) -> bool:
        return self.status == self.Status.QUARANTINED


class ArtifactCopy(models.Model):
    """An artifact's object in one storage location, with what was last seen there.

    Status: pending (being written) → ok (size and SHA-256 match the artifact) | size_mismatch |
    checksum_mismatch | missing; the inventory sync moves between these; deleted is final.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        OK = "ok", "ok"
        MISSING = "missing", "missing"
        SIZE_MISMATCH = "size_mismatch", "size mismatch"
        CHECKSUM_MISMATCH = "checksum_mismatch", "checksum mismatch"
        DELETED = "deleted", "deleted"

    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="copies")
    location = models.ForeignKey(StorageLocation, on_delete=models.PROTECT, related_name="copies")
    key = models.CharField(max_length=900)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    size = models.BigIntegerField(null=True, blank=True)
    sha256_seen = models.CharField(max_length=64, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True, help_text="When the SHA-256 was last recomputed.")
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-location__role", "location__name"]
        constraints = [models.UniqueConstraint(fields=["artifact", "location"], name="backups_one_copy_per_location")]

    def __str__(self) -> str:
        return f"{self.artifact.short_id} @ {self.location.name}"


class ArtifactSlot(models.Model):
    """The size charts' 6-hour slot (from midnight UTC) of one system's artifacts of one kind: how many finished
    artifacts it holds and the largest of them (the earliest of equals).

    Written only by the database: triggers on the artifact table recompute the slots each statement touched, in
    its transaction (backups/migrations/0008_artifact_slots.py says why). The dashboard reads it.
    """

    pk = models.CompositePrimaryKey("slot", "system", "kind")
    slot = models.DateTimeField()
    system = models.ForeignKey(System, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False,
                               related_name="+")
    kind = models.CharField(max_length=12, choices=Artifact.Kind.choices)
    count = models.IntegerField()
    artifact = models.ForeignKey(Artifact, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False,
                                 related_name="+")
    size = models.BigIntegerField()
    created_at = models.DateTimeField()
    status = models.CharField(max_length=12, choices=Artifact.Status.choices)

    def __str__(self) -> str:
        return f"{self.system_id} {self.kind} {self.slot:%Y-%m-%d %H:%M}: {self.count}"


class BackupRun(models.Model):
    """One backup of a system (full or config): the truth about it; the RQ job is only its vehicle.

    States: queued → running → succeeded | failed; queued → failed (the job never started,
    e.g. the worker died). ``steps`` is a list of ``{name, state, started_at, finished_at,
    bytes, detail}``; ``bytes_done``/``percent`` show live progress.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "manual"
        SCHEDULE = "schedule", "schedule"
        API = "api", "API"
        DEMO = "demo", "demo"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    system = models.ForeignKey(System, on_delete=models.PROTECT, related_name="runs")
    kind = models.CharField(max_length=12, choices=Artifact.Kind.choices)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.MANUAL)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    bytes_done = models.BigIntegerField(default=0)
    bytes_expected = models.BigIntegerField(null=True, blank=True)
    percent = models.PositiveSmallIntegerField(default=0)
    steps = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    artifact = models.ForeignKey(Artifact, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    job_id = models.CharField(max_length=64, blank=True)
    worker_host = models.CharField(max_length=100, blank=True, help_text="The host whose worker ran it.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["system", "kind", "created_at"], name="backuprun_system_kind")]

    def __str__(self) -> str:
        return f"{self.kind} backup of {self.system.name} ({str(self.id)[:8]})"

    @property
    def is_done(self) -> bool:
        return self.state in (self.State.SUCCEEDED, self.State.FAILED)

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class InventoryRun(models.Model):
    """One inventory sync over every enabled location; ``summary`` holds what it found.

    States: queued → running → succeeded | failed.
    """

    State = BackupRun.State

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    state = models.CharField(max_length=10, choices=BackupRun.State.choices, default=BackupRun.State.QUEUED)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"inventory sync {str(self.id)[:8]}"


class ContinuousState(models.Model):
    """What the panel last learned from Barman about one continuously protected system.

    ``check_items`` is ``barman check``'s answer item by item (``[{"name", "status", "hint"}]``);
    ``last_wal_at`` is when the newest WAL byte was received (or when the receiver was last seen
    caught up with the server), the base of RPO now; ``streaming_pid`` the receiver Barman runs.
    Written only by ``backups.continuous`` (the worker that runs Barman).
    """

    system = models.OneToOneField(System, on_delete=models.CASCADE, related_name="continuous")
    checked_at = models.DateTimeField(null=True, blank=True)
    check_ok = models.BooleanField(null=True)
    check_items = models.JSONField(default=list, blank=True)
    check_error = models.TextField(blank=True)
    refreshed_at = models.DateTimeField(null=True, blank=True)
    last_wal_at = models.DateTimeField(null=True, blank=True)
    streaming_pid = models.PositiveIntegerField(null=True, blank=True)
    streaming_restarts = models.PositiveIntegerField(default=0)
    rpo_over_target = models.BooleanField(default=False, help_text="RPO now was past the target at the last refresh.")
    error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"continuous protection of {self.system}"


class WalTimeline(models.Model):
    """The WAL catalog of one timeline of a system: first and last segment held, when the last arrived, any gap.

    ``first_missing`` names the first segment absent between ``first_segment`` and
    ``last_segment`` (empty: continuous). Rebuilt from Barman's WAL directories at each refresh.
    """

    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="wal_timelines")
    timeline = models.PositiveIntegerField()
    first_segment = models.CharField(max_length=24)
    last_segment = models.CharField(max_length=24)
    segments = models.PositiveIntegerField(default=0)
    last_received_at = models.DateTimeField(null=True, blank=True)
    first_missing = models.CharField(max_length=24, blank=True)
    missing = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["system", "timeline"]
        constraints = [models.UniqueConstraint(fields=["system", "timeline"], name="backups_wal_timeline_once")]

    def __str__(self) -> str:
        return f"{self.system} timeline {self.timeline}"


# Continuous protection off-site keeps its models in a module of its own.
from backups.models_offsite import OffsitePackage, OffsiteRun  # noqa: E402, F401
