"""Compliance models: the roster, checklists, alerts, health snapshots, certifications.

The audit log's model is in ``compliance.audit.models`` (append-only and hash-chained).
"""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

# The audit log's model lives in its package; imported here so the app loads it with the others.
from compliance.audit.models import AuditEvent, AuditEventQuerySet  # noqa: F401
from drpanel.clock import now as clock_now


class ContactQuerySet(models.QuerySet):
    def in_roster_order(self):
        """L1, L2, L3, Emergency, Vendor; within a level by position, then name."""
        rank = models.Case(
            *(models.When(level=level, then=models.Value(n)) for n, level in enumerate(Contact.Level.values)),
            output_field=models.IntegerField(),
        )
        return self.annotate(level_rank=rank).order_by("level_rank", "position", "name", "pk")

    def active(self):
        return self.filter(active=True)


class Contact(models.Model):
    """One entry of the emergency roster (DESIGN.md "contact").

    Levels L1, L2, L3 and Emergency are the escalation chain of alerts, in that order;
    each needs an email and a response-time target (the time after which the next level is
    called). Vendors are listed for people to call, never emailed by the panel. A contact
    is never deleted, because alert notifications point at it: deactivate it instead.
    Every change goes through ``compliance.contacts`` and is audited.
    """

    class Level(models.TextChoices):
        L1 = "l1", "L1"
        L2 = "l2", "L2"
        L3 = "l3", "L3"
        EMERGENCY = "emergency", "Emergency"
        VENDOR = "vendor", "Vendor"

    level = models.CharField(max_length=10, choices=Level.choices)
    position = models.PositiveSmallIntegerField(default=1, help_text="Order within the level (1 is called first).")
    name = models.CharField(max_length=150)
    role = models.CharField(max_length=150, blank=True)
    phone = models.CharField(max_length=40, blank=True, validators=[RegexValidator(
        r"^\+?[0-9A-Za-z][0-9A-Za-z ().-]{1,38}$",
        "Use digits, letters (as in 1-800-CHATBOT), spaces, dots, dashes and brackets, optionally a leading +.")])
    email = models.EmailField(blank=True)
    response_minutes = models.PositiveIntegerField(
        null=True, blank=True, help_text="Response-time target in minutes; escalation moves on after it.")
    notes = models.TextField(blank=True, max_length=2000)
    active = models.BooleanField(default=True)
    last_verified_on = models.DateField(null=True, blank=True)
    last_verified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=clock_now)
    updated_at = models.DateTimeField(default=clock_now)

    objects = ContactQuerySet.as_manager()

    class Meta:
        # Levels do not sort alphabetically: lists use ``Contact.objects.in_roster_order()``.
        ordering = ["position", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_level_display()})"

    @property
    def escalates(self) -> bool:
        return self.level != self.Level.VENDOR


# --- checklists ------------------------------------------------------------------------------

class Cadence(models.TextChoices):
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"


class ItemKind(models.TextChoices):
    AUTOMATIC = "automatic", "automatic"
    MANUAL = "manual", "manual"
    SIGNOFF = "signoff", "sign-off"


class ChecklistTemplate(models.Model):
    """The items of one cadence (daily, weekly, monthly), edited by admins.

    ``version`` grows by one with every edit; a period records the version it was
    materialised from, and an edit marks the open periods of the cadence as changed.
    """

    cadence = models.CharField(max_length=10, choices=Cadence.choices, unique=True)
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(null=True, blank=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.get_cadence_display()} checklist v{self.version}"


class ChecklistTemplateItem(models.Model):
    """One item of a template. ``code`` is stable (evaluators and validators are registered by it).

    Items are never deleted (old periods and evidence name them): an admin deactivates one.
    ``requires_evidence`` items can only be ticked with evidence a registered validator accepts.
    """

    template = models.ForeignKey(ChecklistTemplate, on_delete=models.CASCADE, related_name="items")
    code = models.CharField(max_length=64, unique=True)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True, max_length=1000)
    kind = models.CharField(max_length=10, choices=ItemKind.choices)
    position = models.PositiveSmallIntegerField(default=1)
    active = models.BooleanField(default=True)
    requires_evidence = models.BooleanField(default=False)
    evidence_hint = models.CharField(
        max_length=200, blank=True, help_text="What evidence ticking needs, e.g. 'a successful staging restore'.")

    class Meta:
        ordering = ["template", "position", "pk"]

    def __str__(self) -> str:
        return f"{self.code}: {self.title}"


class ChecklistPeriod(models.Model):
    """One day, ISO week or month of one cadence, with the items in force when it opened.

    Open while the panel's today lies within ``start``–``end``; closed after. Items left
    unticked or failed in a closed period are "missed" and stay visible.
    """

    cadence = models.CharField(max_length=10, choices=Cadence.choices)
    start = models.DateField()
    end = models.DateField()
    template_version = models.PositiveIntegerField()
    opened_at = models.DateTimeField(default=clock_now)
    changed_since_opened = models.BooleanField(default=False)
    template_changed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-start", "cadence"]
        constraints = [models.UniqueConstraint(fields=["cadence", "start"], name="compliance_one_period_per_start")]

    def __str__(self) -> str:
        return f"{self.get_cadence_display()} checklist {self.label}"

    @property
    def label(self) -> str:
        if self.cadence == Cadence.WEEKLY:
            year, week, _ = self.start.isocalendar()
            return f"{year}-W{week:02d}"
        if self.cadence == Cadence.MONTHLY:
            return self.start.strftime("%Y-%m")
        return self.start.isoformat()


class ChecklistItem(models.Model):
    """One item of one period, copied from the template, with its state and evidence.

    States by kind:
    - automatic: pending → passed | failed | no_data; re-evaluated while the period is open.
    - manual: pending → done (ticked with a note) → pending (unticked by its ticker) while open.
    - signoff: pending → signed (by the monthly certification).
    ``evidence`` is a list of ``{"label", "url", "object_type", "object_id"}``.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        PASSED = "passed", "passed"
        FAILED = "failed", "failed"
        NO_DATA = "no_data", "no data"
        DONE = "done", "done"
        SIGNED = "signed", "signed"

    COMPLETE = (Status.PASSED, Status.DONE, Status.SIGNED)

    period = models.ForeignKey(ChecklistPeriod, on_delete=models.CASCADE, related_name="items")
    code = models.CharField(max_length=64)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=10, choices=ItemKind.choices)
    position = models.PositiveSmallIntegerField(default=1)
    requires_evidence = models.BooleanField(default=False)
    evidence_hint = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    summary = models.CharField(max_length=500, blank=True)
    evidence = models.JSONField(default=list, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    ticked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    ticked_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, max_length=2000)

    class Meta:
        ordering = ["period", "position", "pk"]
        constraints = [models.UniqueConstraint(fields=["period", "code"], name="compliance_one_item_per_code")]

    def __str__(self) -> str:
        return f"{self.code} ({self.period.label})"

    @property
    def complete(self) -> bool:
        return self.status in self.COMPLETE


# --- alerts ----------------------------------------------------------------------------------

class Alert(models.Model):
    """A condition that needs people: raised by a check, escalated through the roster by email.

    States: open → acknowledged → resolved, or open → resolved. Acknowledging stops the
    escalation; resolving (the condition is healthy again) also mails the contacts notified.
    At most one unresolved alert exists per ``dedup_key`` (a database constraint), so one
    condition opens one alert per transition into it. ``escalation_step`` is how many levels
    of the chain (L1, L2, L3, Emergency) have been called; ``next_escalation_at`` is when the
    next one is, or null when the chain is done or stopped.
    """

    class Severity(models.TextChoices):
        CRITICAL = "critical", "critical"
        WARNING = "warning", "warning"
        INFO = "info", "info"

    class State(models.TextChoices):
        OPEN = "open", "open"
        ACKNOWLEDGED = "acknowledged", "acknowledged"
        RESOLVED = "resolved", "resolved"

    kind = models.CharField(max_length=64, db_index=True)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    subject = models.CharField(max_length=200)
    message = models.TextField(blank=True, max_length=4000)
    evidence_url = models.CharField(max_length=500, blank=True)
    dedup_key = models.CharField(max_length=200)
    state = models.CharField(max_length=12, choices=State.choices, default=State.OPEN, db_index=True)
    opened_at = models.DateTimeField(default=clock_now, db_index=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    acknowledged_by_contact = models.ForeignKey(
        Contact, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    resolved_at = models.DateTimeField(null=True, blank=True)
    escalation_step = models.PositiveSmallIntegerField(default=0)
    next_escalation_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-opened_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["dedup_key"], condition=~models.Q(state="resolved"),
                                               name="compliance_one_unresolved_alert_per_key")]

    def __str__(self) -> str:
        return f"{self.severity}: {self.subject}"


class AlertNotification(models.Model):
    """One message to one contact about one alert: its level, channel, time and outcome.

    Outcomes: pending → sending → sent | failed; skipped when it could not be sent at all.
    A sender claims a pending row with a conditional update, so each mail goes out once.
    The acknowledge link in a ``raised`` mail works once (``ack_used_at``).
    """

    class Purpose(models.TextChoices):
        RAISED = "raised", "raised"
        RESOLVED = "resolved", "resolved"

    class Outcome(models.TextChoices):
        PENDING = "pending", "pending"
        SENDING = "sending", "sending"
        SENT = "sent", "sent"
        FAILED = "failed", "failed"
        SKIPPED = "skipped", "skipped"

    alert = models.ForeignKey(Alert, on_delete=models.PROTECT, related_name="notifications")
    contact = models.ForeignKey(Contact, on_delete=models.PROTECT, related_name="notifications")
    level = models.CharField(max_length=10, choices=Contact.Level.choices)
    step = models.PositiveSmallIntegerField()
    purpose = models.CharField(max_length=10, choices=Purpose.choices, default=Purpose.RAISED)
    channel = models.CharField(max_length=10, default="email")
    created_at = models.DateTimeField(default=clock_now)
    sent_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.PENDING)
    error = models.CharField(max_length=300, blank=True)
    ack_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.purpose} mail to {self.contact.name} about alert {self.alert_id}"


# --- the health score ------------------------------------------------------------------------

class HealthSnapshot(models.Model):
    """One computed health score of a system (DESIGN.md "Health score"), with its checks and evidence.

    Written only by ``compliance.health_recompute.health_recompute``, and only when the score, the
    status or a check (its outcome or the evidence it rests on) changed, or when the newest
    row is older than ``compliance.health_recompute.SNAPSHOT_EVERY`` (so the 15-minute recompute keeps at
    least one row per hour). Rows are never changed afterwards: they are the history.
    ``checks`` is a list of ``{"code", "label", "weight", "enabled", "passed", "reason",
    "evidence": [{"label", "url", "object_type", "object_id"}]}``; ``fingerprint`` is the
    SHA-256 of what counts as a change (score, status, each check's outcome and evidence ids).
    """

    class Status(models.TextChoices):
        HEALTHY = "healthy", "healthy"
        WARNING = "warning", "warning"
        CRITICAL = "critical", "critical"

    system = models.ForeignKey("backups.System", on_delete=models.CASCADE, related_name="health_snapshots")
    at = models.DateTimeField(default=clock_now)
    score = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices)
    checks = models.JSONField(default=list)
    fingerprint = models.CharField(max_length=64)
    trigger = models.CharField(max_length=100, blank=True, help_text="What made the panel recompute it.")

    class Meta:
        ordering = ["-at", "-pk"]
        # Covering: the dashboard's health chart groups the scores of 30 days from the index alone.
        indexes = [models.Index(fields=["system", "at"], include=["score", "id"], name="health_system_at_score")]

    def __str__(self) -> str:
        return f"{self.system_id}: {self.score} ({self.status}) at {self.at:%Y-%m-%d %H:%M}"


class HealthSlot(models.Model):
    """The health chart's 3-hour slot (from midnight UTC) of one system's snapshots: how many scores were recorded,
    the lowest, the last (the newest time, then the newest row) and the time of the first.

    Written only by the database: triggers on the snapshot table recompute the slots each statement touched, in
    its transaction (compliance/migrations/0011_health_slots.py). The dashboard reads it.
    """

    pk = models.CompositePrimaryKey("slot", "system")
    slot = models.DateTimeField()
    system = models.ForeignKey("backups.System", on_delete=models.DO_NOTHING, db_constraint=False, db_index=False,
                               related_name="+")
    count = models.IntegerField()
    lowest = models.IntegerField()
    last = models.IntegerField()
    first_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.system_id} {self.slot:%Y-%m-%d %H:%M}: {self.count}"


# --- monthly certification ---------------------------------------------------------------------

class Certification(models.Model):
    """The signed monthly DR certification of one period (DESIGN.md "certification").

    States: draft → signed. A month without a signed row is a *draft*: its record is assembled
    live from the panel's data (``compliance.certification_record.certification_assemble``) and
    shown, never stored. ``certification_sign`` writes the row as ``draft`` with the record
    assembled in its transaction, marks the signed record of the same period (if any) as
    superseded by it, and seals it as ``signed`` — one transaction, one audit event
    (``certification.signed``, its details carrying ``content_hash``, so the hash enters the
    audit chain).

    A signed row never changes: ``save()`` refuses it, except setting ``superseded_by`` /
    ``superseded_at`` once, and a database trigger (``migrations/0006_certification.py``)
    refuses any other UPDATE and every DELETE of a signed row. Signing a month again needs a
    ``reason`` and makes a new record whose ``supersedes`` names the old one. At most one
    signed, unsuperseded record exists per period (a partial unique index).

    ``content_hash`` = SHA-256 of ``compliance.audit.canonical.canonical_bytes(record)``.
    """

    class State(models.TextChoices):
        DRAFT = "draft", "draft"
        SIGNED = "signed", "signed"

    year = models.PositiveSmallIntegerField()
    month = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.DRAFT)
    scope = models.JSONField(default=list, blank=True, help_text="The systems certified: [{id, name}].")
    record = models.JSONField(default=dict, blank=True)
    content_hash = models.CharField(max_length=64, blank=True)
    attestation = models.TextField(max_length=4000, blank=True)
    reason = models.TextField(max_length=2000, blank=True, help_text="Why this record supersedes an earlier one.")
    signed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="+")
    signed_at = models.DateTimeField(null=True, blank=True)
    supersedes = models.OneToOneField("self", null=True, blank=True, on_delete=models.PROTECT,
                                      related_name="superseding")
    superseded_by = models.OneToOneField("self", null=True, blank=True, on_delete=models.PROTECT,
                                         related_name="+")
    superseded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=clock_now)

    SUPERSEDE_FIELDS = frozenset({"superseded_by", "superseded_by_id", "superseded_at"})

    class Meta:
        ordering = ["-year", "-month", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["year", "month"],
                                    condition=models.Q(state="signed", superseded_by__isnull=True),
                                    name="compliance_one_current_certification_per_month"),
            models.CheckConstraint(condition=models.Q(month__gte=1, month__lte=12),
                                   name="compliance_certification_month_1_12"),
        ]

    def __str__(self) -> str:
        return f"DR certification {self.label} ({self.state})"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            stored = Certification.objects.filter(pk=self.pk).values("state", "superseded_by_id").first()
            if stored and stored["state"] == self.State.SIGNED:
                fields = set(kwargs.get("update_fields") or ())
                if not fields or not fields <= self.SUPERSEDE_FIELDS or stored["superseded_by_id"] is not None:
                    raise PermissionError("a signed certification never changes (only superseded_by is set, once)")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if Certification.objects.filter(pk=self.pk, state=self.State.SIGNED).exists():
            raise PermissionError("a signed certification is never deleted")
        return super().delete(*args, **kwargs)

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def is_current(self) -> bool:
        return self.state == self.State.SIGNED and self.superseded_by_id is None


# --- notifications -----------------------------------------------------------------------------

class NotificationChannel(models.Model):
    """One way to reach a contact, or everyone of a roster level: email, Slack, Teams, PagerDuty, JSON webhook.

    Exactly one of ``contact`` and ``level`` is set. An email channel holds its address (not a
    secret); every other kind holds ``url_ref``, a secret reference (``env:NAME`` / ``file:/path``,
    ``drpanel.secrets``) naming the apprise URL, because those URLs carry the credential (a
    webhook token, a routing key): the URL itself is never stored, shown, logged or audited.
    ``events`` lists the events the channel takes (empty: all). Changed only through
    ``compliance.notifications`` (audited; managers and admins, like contacts).
    """

    class Kind(models.TextChoices):
        EMAIL = "email", "Email"
        SLACK = "slack", "Slack"
        TEAMS = "teams", "Microsoft Teams"
        PAGERDUTY = "pagerduty", "PagerDuty"
        WEBHOOK = "webhook", "JSON webhook"

    contact = models.ForeignKey(Contact, null=True, blank=True, on_delete=models.PROTECT, related_name="channels")
    level = models.CharField(max_length=10, choices=Contact.Level.choices, blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    label = models.CharField(max_length=100, blank=True)
    address = models.EmailField(blank=True)
    url_ref = models.CharField(max_length=300, blank=True)
    events = models.JSONField(default=list, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=clock_now)
    updated_at = models.DateTimeField(default=clock_now)

    class Meta:
        ordering = ["pk"]
        constraints = [models.CheckConstraint(
            condition=(models.Q(contact__isnull=False, level="")
                       | models.Q(contact__isnull=True) & ~models.Q(level="")),
            name="compliance_channel_contact_xor_level")]

    def __str__(self) -> str:
        owner = self.contact.name if self.contact_id else f"level {self.get_level_display()}"
        return f"{self.get_kind_display()} for {owner}"

    @property
    def shown_target(self) -> str:
        """What pages may show of the target: the address of an email, the reference (never the URL) otherwise."""
        return self.address if self.kind == self.Kind.EMAIL else self.url_ref


class Delivery(models.Model):
    """One notification of one event through one channel to one contact (or level), and its fate.

    ``channel`` is null for a contact's own email address (the roster's ``email``), which every
    escalating contact has. States: pending → sent | retrying | failed; retrying → sent |
    retrying | failed. A sender claims a row by a conditional update of ``claimed_until`` (a
    lease longer than the hard timeout), so a delivery goes out once even with two senders.
    ``queued_at`` is when its job was last queued, so the retry sweep queues a due delivery once, and again
    only when that job was lost. ``last_error`` is scrubbed of every secret before it is stored. ``alert_notification``
    links an alert's mail to the row whose acknowledge link it carries.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        SENT = "sent", "sent"
        FAILED = "failed", "failed"
        RETRYING = "retrying", "retrying"

    id = models.UUIDField(primary_key=True)
    event = models.CharField(max_length=40, db_index=True)
    channel = models.ForeignKey(NotificationChannel, null=True, blank=True, on_delete=models.PROTECT,
                                related_name="deliveries")
    kind = models.CharField(max_length=10, choices=NotificationChannel.Kind.choices)
    contact = models.ForeignKey(Contact, null=True, blank=True, on_delete=models.PROTECT, related_name="deliveries")
    subject = models.CharField(max_length=200)
    body = models.TextField(max_length=8000)
    details = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=clock_now, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    alert_notification = models.ForeignKey(AlertNotification, null=True, blank=True, on_delete=models.PROTECT,
                                           related_name="deliveries")

    class Meta:
        ordering = ["-created_at", "id"]

    def __str__(self) -> str:
        return f"{self.event} by {self.kind} ({self.status})"


class IncidentEscalation(models.Model):
    """The roster's escalation of one declared incident (``compliance.escalation``), one row per incident.

    ``chain`` is the list of steps the incident's severity calls, each a list of roster levels
    (kept as planned at the start). ``step`` counts the steps already called. States, read from the
    fields: calling (``next_escalation_at`` set) → acknowledged (``acknowledged_at``) | ended
    (``ended_reason``: no level left, or the incident is over). The escalation job and an
    acknowledgement race on the row: each changes it under ``select_for_update`` or a conditional update.
    """

    class Via(models.TextChoices):
        PANEL = "panel", "the incident page"
        API = "api", "the API"
        LINK = "link", "the notified link"

    incident = models.OneToOneField("restores.Incident", on_delete=models.PROTECT, related_name="escalation")
    severity = models.CharField(max_length=10)
    chain = models.JSONField(default=list)
    step = models.PositiveSmallIntegerField(default=0)
    started_at = models.DateTimeField(default=clock_now)
    next_escalation_at = models.DateTimeField(null=True, blank=True, db_index=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="+")
    acknowledged_by_contact = models.ForeignKey(Contact, null=True, blank=True, on_delete=models.PROTECT,
                                                related_name="+")
    acknowledged_via = models.CharField(max_length=10, choices=Via.choices, blank=True)
    ended_reason = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"escalation of incident {str(self.incident_id)[:8]} (step {self.step})"


class IncidentCall(models.Model):
    """One contact called about an incident at one step of its escalation.

    Its messages are the ``Delivery`` rows whose ``details.call`` is this row's id. The acknowledge
    link it carries works once: ``acknowledged_at`` is set by a conditional update.
    """

    escalation = models.ForeignKey(IncidentEscalation, on_delete=models.PROTECT, related_name="calls")
    contact = models.ForeignKey(Contact, on_delete=models.PROTECT, related_name="incident_calls")
    level = models.CharField(max_length=10, choices=Contact.Level.choices)
    step = models.PositiveSmallIntegerField()
    response_minutes = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=clock_now)
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["step", "pk"]
        constraints = [models.UniqueConstraint(fields=["escalation", "contact", "step"], name="incident_call_once")]

    def __str__(self) -> str:
        return f"{self.contact} ({self.level}) at step {self.step}"
