"""Demo data of compliance: the old guide's contact table, as a clearly marked demo roster; the scores of
the demo's real backups; and the month the demo manager can certify."""

import os

from django.db import transaction

from backups.models import BackupRun
from backups.runs import backup_run_execute
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.certification_record import certification_assemble, period_label
from compliance.certifications import current_certification
from compliance.checklists import checklist_periods_current
from compliance.contacts import contacts_review
from compliance.health_recompute import health_recompute_all, health_recompute_deferred
from compliance.models import Contact
from drpanel import clock

DEMO_NOTE = "Demo data: replace with your real roster."

# The old guide's "EMERGENCY CONTACTS" table; names and addresses are invented (example.com).
DEMO_CONTACTS = [
    (Contact.Level.L1, 1, "Dana Whitfield", "L1 Support on-call", "+1-800-CHATBOT-1",
     "dana.whitfield@example.com", 5),
    (Contact.Level.L2, 1, "Marcus Oyelaran", "L2 Engineering", "+1-800-CHATBOT-2", "marcus.oyelaran@example.com", 15),
    (Contact.Level.L3, 1, "Priya Raman", "L3 Architecture", "+1-800-CHATBOT-3", "priya.raman@example.com", 30),
    (Contact.Level.EMERGENCY, 1, "Tomás Herrera", "Emergency escalation", "+1-555-EMERGENCY",
     "tomas.herrera@example.com", 2),
    (Contact.Level.VENDOR, 1, "AWS Support", "Enterprise support, 24/7", "", "aws-support@example.com", None),
    (Contact.Level.VENDOR, 2, "PostgreSQL Professional", "Database support", "", "pg-support@example.com", None),
    (Contact.Level.VENDOR, 3, "Rapid7 Emergency Response", "Security incident response", "",
     "rapid7-ir@example.com", None),
]


def seed_contacts(out) -> None:
    """The demo roster (created once, never overwritten), today's checklists, the contact review."""
    created = 0
    with transaction.atomic():
        for level, position, name, role, phone, email, minutes in DEMO_CONTACTS:
            if Contact.objects.filter(level=level, name=name).exists():
                continue
            now = clock.now()
            contact = Contact.objects.create(
                level=level, position=position, name=name, role=role, phone=phone, email=email,
                response_minutes=minutes, notes=DEMO_NOTE, created_at=now, updated_at=now)
            audit_record(actor=None, action=AuditAction.CONTACT_CREATED, obj=contact,
                         details={"seeded": "demo", "level": level, "name": name})
            created += 1
    checklist_periods_current()
    review = contacts_review()
    out.write(f"Demo roster: {created} contact(s) added ({Contact.objects.count()} in all, never verified: "
              f"{review['raised']} review reminder(s) open). Checklists of today opened.")


def seed_health(out) -> None:
    """Make the demo dashboard true: run the demo's queued backups now, then compute every score.

    The backups are the real ones the catalog's demo step queued (``backup_run_execute``, the
    job's own service; a worker that picks the job up later finds it done). Their health
    recomputes are held until both finished, so the demo does not alert about the moment
    between the full and the config backup. No history is invented: it starts now.
    """
    queued = list(BackupRun.objects.filter(state=BackupRun.State.QUEUED, trigger=BackupRun.Trigger.DEMO)
                  .order_by("created_at").values_list("pk", flat=True))
    with health_recompute_deferred():
        for pk in queued:
            run = backup_run_execute(pk)
            out.write(f"  ran the queued {run.kind} backup of {run.system.name} now: {run.state}"
                      + (f" ({run.error[:200]})" if run.error else ""))
    for snapshot in health_recompute_all(trigger="demo seed"):
        failing = [c["label"] for c in snapshot.checks if c["enabled"] and not c["passed"]]
        out.write(f"Health of {snapshot.system.name}: {snapshot.score}/100 ({snapshot.status})"
                  + (f"; failing: {'; '.join(failing)}" if failing else "") + ". History starts now.")
    seed_certification(out)


def seed_certification(out) -> None:
    """Say which month the demo manager can certify, with the figures the demo's runs give it now.

    Nothing is stored: an unsigned month is assembled live from the panel's rows, so the page
    shows the demo's real backups, verifications and restores. The demo manager ran no drill,
    so they may sign the current month (and every earlier one the panel knows).
    """
    today = clock.today()
    label = period_label(today.year, today.month)
    if current_certification(today.year, today.month) is not None:
        out.write(f"Certification {label}: already signed.")
        return
    record = certification_assemble(year=today.year, month=today.month)
    backups, verifications = record["backups"]["total"], record["verifications"]
    port = int(os.environ.get("PORT", 8000))
    out.write(f"Certification {label} (not signed yet): {backups['succeeded']} backup(s) succeeded, "
              f"{backups['failed']} failed; {verifications['total']} verification(s) "
              f"({verifications['passed']} passed, {verifications['open']} still running); "
              f"{len(record['restores'])} restore run(s). Sign it as manager: "
              f"http://127.0.0.1:{port}/certifications/{label}/")
