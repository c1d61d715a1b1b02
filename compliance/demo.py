"""Demo data of compliance: the old guide's contact table, as a clearly marked demo roster."""

from django.db import transaction

from compliance.audit import audit_record
from compliance.checklists import checklist_periods_current
from compliance.contacts import contacts_review
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
            audit_record(actor=None, action="contact.created", obj=contact,
                         details={"seeded": "demo", "level": level, "name": name})
            created += 1
    checklist_periods_current()
    review = contacts_review()
    out.write(f"Demo roster: {created} contact(s) added ({Contact.objects.count()} in all, never verified: "
              f"{review['raised']} review reminder(s) open). Checklists of today opened.")
