"""Continuous protection off-site: the runs that copy it there, and the encrypted packages they leave.

A base backup (its Barman directory, tarred) and each batch of archived WAL segments (tarred)
become one *package* per off-site location, in the panel's artifact format (``backups.formats``):
chunked AES-256-GCM under its own data key, wrapped by the keyring's master key, the package's
UUID in its header. The WAL packages of a location, ordered by segment, show whether the
location holds every segment since a base backup, and name the first one it lacks.
"""

import uuid

from django.db import models
from django.utils import timezone


class OffsiteRun(models.Model):
    """One run copying a system's base backups and archived WAL not yet off-site; the RQ job is its vehicle.

    States: queued → running → succeeded | failed; queued → failed (its job was lost too often).
    ``steps`` is the run's step list; ``bytes_done``/``percent`` its live progress (``drpanel.runs``).
    A run that wrote nothing still succeeds (nothing was due).
    """

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    system = models.ForeignKey("backups.System", on_delete=models.CASCADE, related_name="offsite_runs")
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    reason = models.CharField(max_length=200, blank=True, help_text="What asked for it (a base backup, the tick).")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    progress_at = models.DateTimeField(null=True, blank=True, help_text="When its progress last moved.")
    bytes_done = models.BigIntegerField(default=0)
    bytes_expected = models.BigIntegerField(null=True, blank=True)
    percent = models.PositiveSmallIntegerField(default=0)
    steps = models.JSONField(default=list, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    job_id = models.CharField(max_length=64, blank=True)
    enqueue_count = models.PositiveSmallIntegerField(default=0)
    needs_cleanup = models.BooleanField(default=False, help_text="A package it was writing may be left to discard.")
    worker_host = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"off-site copy of {self.system} ({str(self.id)[:8]})"


class OffsitePackage(models.Model):
    """One encrypted package in one off-site location: a base backup, or a run of consecutive WAL segments.

    Status: writing → ok (re-read there, SHA-256 matches) | failed; ok → missing (its object was
    not found there any more) | removed (off-site retention deleted it: outside the recovery window,
    no kept base backup needs it). Only ``ok`` packages count as off-site: segments covered by
    none of them are copied again while Barman still holds them.
    """

    class Kind(models.TextChoices):
        BASE = "base", "base backup"
        WAL = "wal", "WAL segments"

    class Status(models.TextChoices):
        WRITING = "writing", "writing"
        OK = "ok", "ok"
        FAILED = "failed", "failed"
        MISSING = "missing", "missing"
        REMOVED = "removed", "removed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    system = models.ForeignKey("backups.System", on_delete=models.CASCADE, related_name="offsite_packages")
    location = models.ForeignKey("backups.StorageLocation", on_delete=models.PROTECT, related_name="packages")
    run = models.ForeignKey(OffsiteRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="packages")
    kind = models.CharField(max_length=4, choices=Kind.choices)
    base_artifact = models.ForeignKey("backups.Artifact", null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="offsite_packages")
    backup_id = models.CharField(max_length=100, blank=True)
    timeline = models.PositiveIntegerField(null=True, blank=True)
    first_segment = models.CharField(max_length=24, blank=True)
    last_segment = models.CharField(max_length=24, blank=True)
    segments = models.PositiveIntegerField(default=0)
    key = models.CharField(max_length=900)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.WRITING)
    size = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    plaintext_size = models.BigIntegerField(null=True, blank=True)
    plaintext_sha256 = models.CharField(max_length=64, blank=True)
    key_id = models.CharField(max_length=300, blank=True)
    manifest = models.JSONField(default=dict, blank=True,
                                help_text="Base: Barman's show-backup; WAL: the segment names it holds.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    checked_at = models.DateTimeField(null=True, blank=True, help_text="When its object was last seen there.")
    removed_at = models.DateTimeField(null=True, blank=True, help_text="When off-site retention removed it.")

    class Meta:
        ordering = ["system", "location", "kind", "timeline", "first_segment", "created_at"]
        indexes = [models.Index(fields=["system", "location", "kind", "status"], name="offsite_package_lookup")]

    def __str__(self) -> str:
        if self.kind == self.Kind.BASE:
            return f"base backup {self.backup_id} of {self.system} @ {self.location}"
        return f"WAL {self.first_segment}–{self.last_segment} of {self.system} @ {self.location}"

    @property
    def label(self) -> str:
        """How a page or an error names it: the base backup, or the segment range."""
        if self.kind == self.Kind.BASE:
            return f"base backup {self.backup_id}"
        return f"WAL batch {self.first_segment}–{self.last_segment}"
