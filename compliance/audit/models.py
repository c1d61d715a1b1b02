"""The audit log's table: one append-only, hash-chained row per event (see ``compliance.audit``).

Part of the ``compliance`` app (Django finds a model's app by its module's prefix); ``compliance.models``
imports it so the app's models stay in one place for migrations.
"""

from django.conf import settings
from django.db import models

# The statement trigger that refuses TRUNCATE. Only the table's owner or a superuser can disable
# it (ALTER TABLE): the test suite's flush and the benchmark do, inside their own transaction.
TRUNCATE_TRIGGER = "compliance_auditevent_no_truncate"
APPEND_ONLY_TRIGGERS = ("compliance_auditevent_no_update_delete", TRUNCATE_TRIGGER)


class AuditEventQuerySet(models.QuerySet):
    """Refuses bulk changes: the audit log only grows."""

    def update(self, **kwargs):
        raise PermissionError("the audit log is append-only: events cannot be updated")

    def delete(self):
        raise PermissionError("the audit log is append-only: events cannot be deleted")

    _raw_delete = delete

    def bulk_update(self, objs, fields, batch_size=None):
        raise PermissionError("the audit log is append-only: events cannot be updated")

    def bulk_create(self, objs, *args, **kwargs):
        raise PermissionError("audit events are appended one by one by compliance.audit.audit_record")


class AuditEvent(models.Model):
    """One append-only, hash-chained record of something that happened.

    Written only by ``compliance.audit.audit_record``, which assigns ``seq`` (gapless,
    strictly increasing) under a lock and computes ``hash`` = SHA-256 of the canonical
    encoding of every field and ``prev_hash``. Rows are never updated or deleted: the model
    refuses it here and database triggers refuse UPDATE, DELETE and TRUNCATE in PostgreSQL
    (``migrations/0004_audit_append_only.py``), in every ``session_replication_role``
    (``ENABLE ALWAYS``, ``migrations/0007_audit_triggers_always.py``). The panel's runtime
    database role may only SELECT and INSERT here (``drpanel.dbroles``).
    ``compliance.audit.verify`` recomputes the chain.
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success", "success"
        FAILURE = "failure", "failure"
        DENIED = "denied", "denied"

    seq = models.BigIntegerField(unique=True)
    occurred_at = models.DateTimeField(db_index=True)
    # No database constraint and no cascade: deleting a user must never touch the log.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING,
        db_constraint=False, related_name="+",
    )
    actor_username = models.CharField(max_length=150, db_index=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=200, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=100, db_index=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    details = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [models.Index(fields=["object_type", "object_id"])]
        default_permissions = ("view",)
        constraints = [
            models.CheckConstraint(condition=models.Q(seq__gte=1), name="audit_seq_positive"),
            # Two events after the same one would be a fork: the database refuses the second.
            models.UniqueConstraint(fields=["prev_hash"], name="audit_prev_hash_unique"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor_username}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise PermissionError("the audit log is append-only: events cannot be updated")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("the audit log is append-only: events cannot be deleted")


# --- the contact roster ----------------------------------------------------------------------
