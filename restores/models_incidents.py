"""Disaster mode's models: runbook templates (versioned), recovery objectives per system, incidents and their steps.

Imported by ``restores.models`` so Django sees them; the services live in ``restores.runbooks``,
``restores.incidents`` and ``restores.incident_steps``.
"""

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Scenario(models.TextChoices):
    """The old guide's three scenarios."""

    DATABASE = "database", "database corruption or loss"
    SYSTEM = "system", "complete system failure"
    DATACENTER = "datacenter", "data-center outage (cloud recovery)"


class RunbookTemplate(models.Model):
    """One version of the runbook of a scenario: its steps, in the guide's phases, each with an expected duration.

    A version is never changed once written: an admin's edit writes the next version
    (``restores.runbooks.runbook_edit``, audited), and an incident keeps the version it was
    declared with. ``steps`` is a list of ``{code, title, phase, kind, action, expected_seconds,
    required, evidence_required, help}`` (validated by ``restores.runbooks.validate_steps``).
    """

    scenario = models.CharField(max_length=12, choices=Scenario.choices)
    version = models.PositiveIntegerField()
    title = models.CharField(max_length=200)
    steps = models.JSONField(default=list)
    note = models.CharField(max_length=500, blank=True, help_text="What changed in this version.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["scenario", "-version"]
        constraints = [models.UniqueConstraint(fields=["scenario", "version"], name="restores_runbook_version")]

    def __str__(self) -> str:
        return f"{self.get_scenario_display()} runbook v{self.version}"


class RecoveryObjective(models.Model):
    """A system's RTO and RPO targets; a system without a row uses ``DRPANEL_RTO/RPO_TARGET_MINUTES`` (15, 30)."""

    system = models.OneToOneField("backups.System", on_delete=models.CASCADE, related_name="recovery_objective")
    rto_minutes = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(7 * 24 * 60)])
    rpo_minutes = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(7 * 24 * 60)])
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.system}: RTO {self.rto_minutes} min, RPO {self.rpo_minutes} min"


OPEN_STATES = ("declared", "recovering", "recovered")


class Incident(models.Model):
    """A declared disaster on a system (or a drill of one), following one runbook version, with its RTO clock.

    States and transitions (each a conditional update, each audited; ``restores.incidents``):

    - declared → recovering (the first step starts)
    - declared | recovering → recovered (every required step done or skipped, and the health
      checks passed: the RTO clock stops at ``recovered_at``)
    - declared | recovering | recovered → closed (a manager, with the review, once no required
      step is open; the report's hash is signed into the audit chain)

    One open incident per system, and one open drill per system: a partial unique index
    decides between two declarations, not a prior read. The clock runs from ``noticed_at``
    when given (earlier than the declaration, with a reason), else from ``declared_at``.
    """

    class State(models.TextChoices):
        DECLARED = "declared", "declared"
        RECOVERING = "recovering", "recovering"
        RECOVERED = "recovered", "recovered"
        CLOSED = "closed", "closed"

    class Severity(models.TextChoices):
        CRITICAL = "critical", "critical (service down)"
        MAJOR = "major", "major (degraded)"
        MINOR = "minor", "minor"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    system = models.ForeignKey("backups.System", on_delete=models.PROTECT, related_name="incidents")
    scenario = models.CharField(max_length=12, choices=Scenario.choices)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    is_drill = models.BooleanField(default=False, help_text="The runbook run on purpose against staging or scratch.")
    target = models.ForeignKey("restores.Target", on_delete=models.PROTECT, related_name="incidents",
                               help_text="Where the system is recovered into.")
    runbook = models.ForeignKey(RunbookTemplate, on_delete=models.PROTECT, related_name="incidents")
    state = models.CharField(max_length=12, choices=State.choices, default=State.DECLARED)
    summary = models.CharField(max_length=500, blank=True)
    declared_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    declared_at = models.DateTimeField(default=timezone.now)
    noticed_at = models.DateTimeField(null=True, blank=True, help_text="When the failure was first noticed.")
    noticed_reason = models.CharField(max_length=500, blank=True)
    rto_target_seconds = models.PositiveIntegerField()
    rpo_target_seconds = models.PositiveIntegerField()
    recovery_artifact = models.ForeignKey("backups.Artifact", null=True, blank=True, on_delete=models.PROTECT,
                                          related_name="+")
    recovery_point_at = models.DateTimeField(null=True, blank=True, help_text="What the restore brought back.")
    recovery_kind = models.CharField(
        max_length=8, blank=True, choices=[("artifact", "a verified full"), ("latest", "the latest WAL received"),
                                           ("time", "a moment")],
        help_text="What the recovery point step chose; latest and a moment are point-in-time restores.")
    recovered_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="+")
    review = models.JSONField(default=dict, blank=True, help_text="cause, remediation, follow_ups.")
    report = models.JSONField(default=dict, blank=True, help_text="The report as signed when closed.")
    report_hash = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-declared_at"]
        constraints = [
            models.UniqueConstraint(fields=["system", "is_drill"], condition=Q(state__in=list(OPEN_STATES)),
                                    name="restores_one_open_incident_per_system"),
        ]

    def __str__(self) -> str:
        return f"{'drill' if self.is_drill else 'incident'} {self.short_id}: {self.get_scenario_display()} on " \
               f"{self.system.name}"

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def failure_at(self):
        """When the clock starts: the failure noticed, else the declaration."""
        return self.noticed_at or self.declared_at

    @property
    def rto_seconds(self) -> float | None:
        if self.recovered_at is None:
            return None
        return (self.recovered_at - self.failure_at).total_seconds()

    @property
    def rpo_seconds(self) -> float | None:
        if self.recovery_point_at is None or self.recovered_at is None:
            return None
        return max(0.0, (self.failure_at - self.recovery_point_at).total_seconds())

    def elapsed_seconds(self, now=None) -> float:
        end = self.recovered_at or now or timezone.now()
        return max(0.0, (end - self.failure_at).total_seconds())


class IncidentStep(models.Model):
    """One step of an incident's runbook, copied from its template version when the incident is declared.

    ``kind`` is ``automatic`` (``action`` names what the panel does), ``manual`` (a person does
    it: an assignee, a note, an evidence link) or ``decision`` (continue, or skip with a
    reason). States: pending → queued (an automatic step waiting for a worker) → running →
    done | failed; a restore step: pending → running → waiting (for its restore run, whose
    end settles it) → done | failed; pending | running | failed → skipped (with a reason);
    failed → running (started again). An automatic step that takes time is a run of its own
    (``restores.incident_steps.INCIDENT_STEP_RUNS``): ``job_id``, ``heartbeat_at`` and
    ``enqueue_count`` are the run machinery's.
    """

    class Kind(models.TextChoices):
        AUTOMATIC = "automatic", "automatic"
        MANUAL = "manual", "manual"
        DECISION = "decision", "decision"

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        WAITING = "waiting", "waiting for its restore"
        DONE = "done", "done"
        FAILED = "failed", "failed"
        SKIPPED = "skipped", "skipped"

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField()
    code = models.CharField(max_length=40)
    title = models.CharField(max_length=200)
    phase = models.CharField(max_length=60)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    action = models.CharField(max_length=30, blank=True)
    help = models.CharField(max_length=500, blank=True)
    expected_seconds = models.PositiveIntegerField()
    required = models.BooleanField(default=True)
    evidence_required = models.BooleanField(default=False)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    assignee = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="+")
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")
    finished_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="+")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True)
    evidence_url = models.URLField(max_length=500, blank=True)
    decision = models.CharField(max_length=10, blank=True)
    skip_reason = models.CharField(max_length=500, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    restore_run = models.ForeignKey("restores.RestoreRun", null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="+")
    attempts = models.PositiveSmallIntegerField(default=0)
    job_id = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker_host = models.CharField(max_length=100, blank=True, help_text="The host whose worker ran its job.")
    enqueue_count = models.PositiveSmallIntegerField(default=0)
    queued_at = models.DateTimeField(null=True, blank=True)
    needs_cleanup = models.BooleanField(default=False, help_text="Never set: an incident step leaves nothing behind.")

    class Meta:
        ordering = ["incident", "position"]
        constraints = [models.UniqueConstraint(fields=["incident", "position"], name="restores_incident_step_pos")]

    def __str__(self) -> str:
        return f"{self.position + 1}. {self.title}"

    @property
    def is_finished(self) -> bool:
        return self.state in (self.State.DONE, self.State.SKIPPED)

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()
