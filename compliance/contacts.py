"""The emergency contact roster: services (each audited), selectors, and the CSV / vCard exports.

Managers and admins edit (``Cap.EDIT_CONTACTS``); every panel role reads. A contact whose
details nobody has confirmed for ``CONTACT_REVIEW_DAYS`` (30) is due for review: the roster
page says so, and the daily review raises an info alert ``contact.unverified`` for it,
resolved when someone marks the contact verified (or deactivates it).
"""

import csv
import io
import uuid
from datetime import date, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.urls import reverse

from compliance.alerts import alert_raise, alert_resolve
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.models import Alert, Contact
from drpanel import clock
from drpanel.permissions import Cap, require_cap

EDITABLE_FIELDS = ("level", "position", "name", "role", "phone", "email", "response_minutes", "notes", "active")
UNVERIFIED_KIND = "contact.unverified"


def unverified_key(contact: Contact) -> str:
    return f"{UNVERIFIED_KIND}:{contact.pk}"


def _validate(contact: Contact) -> None:
    contact.full_clean(exclude=["created_at", "updated_at", "last_verified_by"])
    errors = {}
    if contact.escalates:
        if not contact.email:
            errors["email"] = "Alerts reach L1, L2, L3 and Emergency contacts by email: give an address."
        if contact.response_minutes is None:
            errors["response_minutes"] = "Escalation waits this long before calling the next level: give a target."
        elif contact.response_minutes < 1:
            errors["response_minutes"] = "A response target is at least one minute."
    if errors:
        raise ValidationError(errors)


def _small(value):
    """Audit details stay small: long notes are cut, dates become text."""
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "…"
    return value


def contact_create(*, actor, **fields) -> Contact:
    """Add a contact to the roster. Raises ``ValidationError`` for invalid fields."""
    require_cap(actor, Cap.EDIT_CONTACTS, action="contact.create")
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not contact fields: {', '.join(sorted(unknown))}")
    now = clock.now()
    contact = Contact(**fields, created_at=now, updated_at=now)
    _validate(contact)
    with transaction.atomic():
        contact.save(force_insert=True)
        audit_record(actor=actor, action=AuditAction.CONTACT_CREATED, obj=contact,
                     details={"after": {name: _small(getattr(contact, name)) for name in EDITABLE_FIELDS}})
    return contact


def contact_update(*, actor, contact: Contact, **fields) -> Contact:
    """Change a contact's fields; the audit event holds each changed field's before and after."""
    require_cap(actor, Cap.EDIT_CONTACTS, obj=contact, action="contact.update")
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not contact fields: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        # The row lock keeps two editors from each writing a "before" the other already changed.
        current = Contact.objects.select_for_update().get(pk=contact.pk)
        changes = {}
        for name, value in fields.items():
            before = getattr(current, name)
            if before != value:
                changes[name] = [_small(before), _small(value)]
                setattr(current, name, value)
        if not changes:
            return current
        _validate(current)
        current.updated_at = clock.now()
        current.save(update_fields=[*changes, "updated_at"])
        audit_record(actor=actor, action=AuditAction.CONTACT_UPDATED, obj=current, details={"changes": changes})
        if not current.active:
            alert_resolve(dedup_key=unverified_key(current), actor=actor, note="contact deactivated")
    return current


def contact_verify(*, actor, contact: Contact) -> Contact:
    """Someone confirmed the contact's details today (called them, checked the address)."""
    require_cap(actor, Cap.EDIT_CONTACTS, obj=contact, action="contact.verify")
    today = clock.today()
    with transaction.atomic():
        current = Contact.objects.select_for_update().get(pk=contact.pk)
        previous = current.last_verified_on
        current.last_verified_on = today
        current.last_verified_by = actor
        current.save(update_fields=["last_verified_on", "last_verified_by"])
        audit_record(actor=actor, action=AuditAction.CONTACT_VERIFIED, obj=current,
                     details={"verified_on": today.isoformat(),
                              "previous": previous.isoformat() if previous else None})
        alert_resolve(dedup_key=unverified_key(current), actor=actor, note="contact verified")
    return current


# --- selectors -------------------------------------------------------------------------------

def review_cutoff(today: date | None = None) -> date:
    """Contacts last verified on or before this date are due for review."""
    return (today or clock.today()) - timedelta(days=settings.CONTACT_REVIEW_DAYS)


def contacts_roster(*, include_inactive: bool = True):
    contacts = Contact.objects.select_related("last_verified_by").in_roster_order()
    return contacts if include_inactive else contacts.active()


def contacts_due_for_review(today: date | None = None):
    """Active contacts never verified, or not verified for ``CONTACT_REVIEW_DAYS`` days."""
    cutoff = review_cutoff(today)
    return (Contact.objects.active()
            .filter(Q(last_verified_on__isnull=True) | Q(last_verified_on__lte=cutoff)).in_roster_order())


def is_due_for_review(contact: Contact, today: date | None = None) -> bool:
    return contact.active and (contact.last_verified_on is None or contact.last_verified_on <= review_cutoff(today))


def contacts_review() -> dict:
    """The daily review (a job): one info alert per contact due for review; close the others.

    Returns ``{"raised": n, "resolved": n}`` (``raised`` counts alerts open after the run).
    """
    due = list(contacts_due_for_review())
    days = settings.CONTACT_REVIEW_DAYS
    for contact in due:
        since = (f"has not been verified since {contact.last_verified_on:%Y-%m-%d}"
                 if contact.last_verified_on else "has never been verified")
        alert_raise(
            kind=UNVERIFIED_KIND, severity=Alert.Severity.INFO,
            subject=f"Contact {contact.name} ({contact.get_level_display()}) {since}",
            message=(f"The roster entry of {contact.name} {since}; contacts are reviewed every {days} days. "
                     "Call or mail them, correct the entry if needed, then press “Mark verified”."),
            dedup_key=unverified_key(contact),
            evidence_url=f"{reverse('compliance:contact-list')}#contact-{contact.pk}")
    due_keys = {unverified_key(c) for c in due}
    resolved = 0
    stale = Alert.objects.filter(kind=UNVERIFIED_KIND).exclude(state=Alert.State.RESOLVED)
    for key in stale.exclude(dedup_key__in=due_keys).values_list("dedup_key", flat=True):
        resolved += alert_resolve(dedup_key=key, note="contact no longer due for review") is not None
    return {"raised": len(due), "resolved": resolved}


def contact_as_dict(contact: Contact, today: date | None = None) -> dict:
    """The API's (and the exports') view of a contact."""
    return {
        "id": contact.pk,
        "level": contact.level,
        "level_label": contact.get_level_display(),
        "position": contact.position,
        "name": contact.name,
        "role": contact.role,
        "phone": contact.phone,
        "email": contact.email,
        "response_minutes": contact.response_minutes,
        "notes": contact.notes,
        "active": contact.active,
        "last_verified_on": contact.last_verified_on.isoformat() if contact.last_verified_on else None,
        "last_verified_by": contact.last_verified_by.get_username() if contact.last_verified_by else None,
        "review_due": is_due_for_review(contact, today),
    }


# --- exports ---------------------------------------------------------------------------------

CSV_COLUMNS = ("level", "position", "name", "role", "phone", "email", "response_minutes", "active",
               "last_verified_on", "last_verified_by", "notes")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_safe(value) -> str:
    """Spreadsheets run cells that start like a formula; free text gets a leading apostrophe.

    Phone numbers (validated: digits, letters, + - . ( ) and spaces) are left as they are.
    """
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def contacts_csv(contacts) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for contact in contacts:
        row = contact_as_dict(contact)
        row["level"] = row["level_label"]
        writer.writerow([row[c] if c in ("phone", "position", "response_minutes", "active") else _csv_safe(row[c])
                         for c in CSV_COLUMNS])
    return out.getvalue()


def _vtext(value: str) -> str:
    """RFC 6350 §3.4 escaping of a text value."""
    return (value.replace("\\", "\\\\").replace("\r\n", "\n").replace("\r", "\n")
            .replace("\n", "\\n").replace(",", "\\,").replace(";", "\\;"))


def _fold(line: str) -> str:
    """RFC 6350 §3.2: lines longer than 75 octets continue after CRLF + one space (never inside a UTF-8 character)."""
    parts, current, size = [], "", 0
    for char in line:
        width = len(char.encode())
        limit = 75 if not parts else 74  # continuation lines spend one octet on the leading space
        if size + width > limit:
            parts.append(current)
            current, size = "", 0
        current += char
        size += width
    parts.append(current)
    return "\r\n ".join(parts)


def _vcard(contact: Contact) -> str:
    uid = uuid.uuid5(uuid.NAMESPACE_URL, f"{settings.PANEL_BASE_URL}/contacts/{contact.pk}")
    organisation = contact.level == Contact.Level.VENDOR
    note = [f"Level: {contact.get_level_display()}"]
    if contact.response_minutes is not None:
        note.append(f"Response-time target: {contact.response_minutes} min")
    note.append(f"Last verified: {contact.last_verified_on:%Y-%m-%d}" if contact.last_verified_on
                else "Last verified: never")
    if not contact.active:
        note.append("Inactive")
    if contact.notes:
        note.append(contact.notes)
    lines = ["BEGIN:VCARD", "VERSION:4.0", f"UID:urn:uuid:{uid}", f"KIND:{'org' if organisation else 'individual'}",
             f"FN:{_vtext(contact.name)}"]
    if organisation:
        lines.append(f"ORG:{_vtext(contact.name)}")
    else:
        given, _, family = contact.name.rpartition(" ")
        lines.append(f"N:{_vtext(family)};{_vtext(given)};;;")
    if contact.role:
        lines.append(f"TITLE:{_vtext(contact.role)}")
    if contact.phone:
        lines.append(f"TEL;TYPE=\"work,voice\":{_vtext(contact.phone)}")
    if contact.email:
        lines.append(f"EMAIL;TYPE=work:{_vtext(contact.email)}")
    lines.append(f"CATEGORIES:DR Panel,{_vtext(contact.get_level_display())}")
    lines.append(f"NOTE:{_vtext(chr(10).join(note))}")
    lines.append(f"REV:{contact.updated_at:%Y%m%dT%H%M%SZ}")
    lines.append("END:VCARD")
    return "".join(_fold(line) + "\r\n" for line in lines)


def contacts_vcard(contacts) -> str:
    """One vCard 4.0 file (RFC 6350) holding every contact."""
    return "".join(_vcard(c) for c in contacts)


def contacts_export(*, actor, fmt: str) -> tuple[str, str, str]:
    """The roster as CSV or vCard: ``(content, filename, content type)``; the export is audited."""
    require_cap(actor, Cap.VIEW_PANEL, action="contact.export")
    contacts = list(contacts_roster())
    if fmt == "csv":
        content, filename, content_type = contacts_csv(contacts), "contacts.csv", "text/csv; charset=utf-8"
    elif fmt == "vcard":
        content, filename, content_type = contacts_vcard(contacts), "contacts.vcf", "text/vcard; charset=utf-8"
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    with transaction.atomic():
        audit_record(actor=actor, action=AuditAction.CONTACT_EXPORTED, object_type="compliance.contact",
                     details={"format": fmt, "contacts": len(contacts)})
    return content, filename, content_type
