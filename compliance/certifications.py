"""The monthly DR certification: reading the signed records, and signing a month.

``certification_sign`` stores the record (``compliance.certification_record``) with
``content_hash`` = SHA-256 of its canonical JSON and writes ``certification.signed`` with that
hash in the same transaction, so the hash is in the audit chain (see ``Certification``). A
month signed again gets a new record that supersedes the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.urls import reverse

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.certification_record import (
    RECORD_TYPE,
    CertificationConflict,
    CertificationError,
    certification_assemble,
    check_period,
    content_hash,
    iso_time,
    month_bounds,
    months,
    period_label,
    username_of,
)
from compliance.checklists import checklist_period_open
from compliance.measurements import drill_filter
from compliance.models import Cadence, Certification, ChecklistItem, ItemKind
from drpanel import clock
from drpanel.passwords import PasswordError
from drpanel.permissions import Cap, Denied, has_cap, recently_reauthenticated, require_cap
from drpanel.services import reauthenticate
from restores.models import RestoreRun

# --- reading ------------------------------------------------------------------------------------

def current_certification(year: int, month: int) -> Certification | None:
    """The month's signed record in force (not superseded), or None."""
    return (Certification.objects.filter(year=year, month=month, state=Certification.State.SIGNED,
                                         superseded_by__isnull=True).select_related("signed_by").first())


def certification_history(year: int, month: int) -> list[Certification]:
    """Every signed record of the month, newest first (the current one, then those it superseded)."""
    return list(Certification.objects.filter(year=year, month=month, state=Certification.State.SIGNED)
                .select_related("signed_by").order_by("-signed_at", "-pk"))


@dataclass(frozen=True)
class MonthRow:
    year: int
    month: int
    certification: Certification | None
    superseded: int

    @property
    def label(self) -> str:
        return period_label(self.year, self.month)

    @property
    def state(self) -> str:
        return Certification.State.SIGNED if self.certification else Certification.State.DRAFT

    def as_dict(self) -> dict:
        cert = self.certification
        return {"period": self.label, "year": self.year, "month": self.month, "state": self.state,
                "signed_by": username_of(cert.signed_by) if cert else None,
                "signed_at": iso_time(cert.signed_at) if cert else None,
                "content_hash": cert.content_hash if cert else None, "superseded_records": self.superseded,
                "url": reverse("compliance:certification-detail", args=[self.label])}


def certification_months() -> list[MonthRow]:
    """Every month with its state (signed: the record in force; draft: not signed), newest first."""
    signed = {}
    superseded: dict[tuple, int] = {}
    for cert in Certification.objects.filter(state=Certification.State.SIGNED).select_related("signed_by"):
        if cert.superseded_by_id is None:
            signed[(cert.year, cert.month)] = cert
        else:
            superseded[(cert.year, cert.month)] = superseded.get((cert.year, cert.month), 0) + 1
    return [MonthRow(y, m, signed.get((y, m)), superseded.get((y, m), 0)) for y, m in months()]


def certification_document(cert: Certification) -> dict:
    """``certification.json`` of the bundle and the API: the record, its hash, who signed, what they attested."""
    return {
        "type": RECORD_TYPE,
        "id": cert.pk,
        "period": cert.label,
        "state": cert.state,
        "content_hash": cert.content_hash,
        "content_hash_algorithm": "sha256 of the canonical JSON of record (sorted keys, separators ',' ':', UTF-8)",
        "signed_by": username_of(cert.signed_by),
        "signed_at": iso_time(cert.signed_at),
        "attestation": cert.attestation,
        "reason": cert.reason,
        "supersedes": {"id": cert.supersedes_id, "content_hash": cert.supersedes.content_hash}
        if cert.supersedes_id else None,
        "superseded_by": cert.superseded_by_id,
        "record": cert.record,
    }


def drills_requested_by(user, year: int, month: int):
    """Drills (restore runs into staging or scratch, or marked as drills) ``user`` requested in the month."""
    start, end = month_bounds(year, month)
    return RestoreRun.objects.filter(drill_filter(), requested_by=user, created_at__gte=start, created_at__lt=end)


def may_sign(user, year: int, month: int) -> tuple[bool, str]:
    """Whether ``user`` may sign the month, and if not, why (for the page; the service decides)."""
    if not has_cap(user, Cap.SIGN_CERTIFICATION):
        return False, "Only managers sign the monthly certification."
    drill = drills_requested_by(user, year, month).order_by("created_at").first()
    if drill is not None:
        return False, (f"You requested the drill {drill.short_id} this month: the certification must be signed "
                       "by a manager who is not the operator who ran that month's drill.")
    return True, ""


# --- signing ------------------------------------------------------------------------------------

def _sign_signoff_items(cert: Certification, actor, now: datetime) -> int:
    period = checklist_period_open(Cadence.MONTHLY, date(cert.year, cert.month, 1))
    url = reverse("compliance:certification-detail", args=[cert.label])
    evidence = [{"label": f"DR certification {cert.label}, content hash {cert.content_hash[:16]}…", "url": url,
                 "object_type": "compliance.certification", "object_id": str(cert.pk)}]
    return ChecklistItem.objects.filter(period=period, kind=ItemKind.SIGNOFF).update(
        status=ChecklistItem.Status.SIGNED, ticked_by=actor, ticked_at=now, evaluated_at=now, evidence=evidence,
        summary=f"Signed with the DR certification {cert.label}.",
        note=f"Signed by {actor.get_username()} with certification #{cert.pk} ({cert.content_hash}).")


def certification_sign(*, actor, year: int, month: int, attestation: str, request=None, password: str | None = None,
                       reason: str = "") -> Certification:
    """Sign the month: a manager, re-authenticated in the last minutes, not the month's drill operator.

    ``password`` (optional) re-authenticates here (``drpanel.services.reauthenticate``, which
    counts a wrong one toward the lockout); without it the session must have re-authenticated
    within ``DRPANEL_REAUTH_MINUTES``. A month that is already signed is signed again only with
    a ``reason``: the new record supersedes the old one. Raises ``Denied`` (403, audited),
    ``CertificationError`` (400) or ``CertificationConflict`` (409).
    """
    label = period_label(year, month)
    require_cap(actor, Cap.SIGN_CERTIFICATION, action="certification.sign")
    check_period(year, month)
    if password and request is None:
        raise Denied("A password is only re-entered from a signed-in session: the certification is not signed.",
                     need="re-authentication", action=f"certification.sign {label}")
    if password:
        try:
            reauthenticate(request=request, password=password, purpose="certification.sign")
        except PasswordError as exc:
            raise Denied(f"{exc} The certification is not signed.", need="re-authentication",
                         action=f"certification.sign {label}") from None
    if request is None or not recently_reauthenticated(request):
        raise Denied(f"Re-enter your password: signing needs a re-authentication within the last "
                     f"{settings.REAUTH_VALID_MINUTES} minutes.", need="re-authentication",
                     action=f"certification.sign {label}")
    allowed, why = may_sign(actor, year, month)
    if not allowed:
        raise Denied(why, need="not the operator who ran that month's drill", action=f"certification.sign {label}")
    attestation = (attestation or "").strip()
    if not attestation:
        raise CertificationError("Write the attestation: what you checked and what you certify.")
    if len(attestation) > 4000:
        raise CertificationError("The attestation is longer than 4000 characters.")
    reason = (reason or "").strip()[:2000]
    try:
        with transaction.atomic():
            # Row lock on the record in force: two managers signing again at once supersede it once.
            current = (Certification.objects.select_for_update()
                       .filter(year=year, month=month, state=Certification.State.SIGNED, superseded_by__isnull=True)
                       .first())
            if current is not None and not reason:
                raise CertificationConflict(
                    f"{label} is already signed (by {username_of(current.signed_by)} at "
                    f"{current.signed_at:%Y-%m-%d %H:%M} UTC). Signing it again makes a new record that supersedes "
                    "that one: give a reason.")
            record = certification_assemble(year=year, month=month)
            digest = content_hash(record)
            now = clock.now()
            cert = Certification.objects.create(
                year=year, month=month, state=Certification.State.DRAFT, scope=record["scope"], record=record,
                content_hash=digest, attestation=attestation, reason=reason if current else "", signed_by=actor,
                signed_at=now, supersedes=current, created_at=now)
            if current is not None:
                current.superseded_by = cert
                current.superseded_at = now
                current.save(update_fields=["superseded_by", "superseded_at"])
            # draft → signed: a conditional update, after the old record stepped aside (one in force per month).
            Certification.objects.filter(pk=cert.pk, state=Certification.State.DRAFT).update(
                state=Certification.State.SIGNED)
            cert.refresh_from_db()
            signed_items = _sign_signoff_items(cert, actor, now)
            audit_record(actor=actor, action=AuditAction.CERTIFICATION_SIGNED, obj=cert, request=request, details={
                "certification": cert.pk, "period": label, "content_hash": digest, "attestation": attestation,
                "supersedes": current.pk if current else None,
                "superseded_hash": current.content_hash if current else None, "reason": cert.reason,
                "audit_head_seq": record["audit_head"]["seq"], "signoff_items": signed_items,
                "reauthenticated": True})
    except IntegrityError:
        raise CertificationConflict(f"{label} was signed by someone else at the same moment; reload the page.") \
            from None
    return cert


# --- dashboard --------------------------------------------------------------------------------

def last_certification_status() -> dict:
    """For the dashboard: the newest signed month, and whether last month is signed."""
    today = clock.today()
    previous = (today.year - (today.month == 1), (today.month - 2) % 12 + 1)
    latest = (Certification.objects.filter(state=Certification.State.SIGNED, superseded_by__isnull=True)
              .select_related("signed_by").order_by("-year", "-month").first())
    return {"latest": latest, "previous_label": period_label(*previous),
            "previous_signed": current_certification(*previous) is not None,
            "previous_url": reverse("compliance:certification-detail", args=[period_label(*previous)]),
            "list_url": reverse("compliance:certification-list")}


def monthly_signoffs_open(year: int, month: int) -> int:
    """How many monthly sign-off items of the month wait for the certification (for the page)."""
    start, _ = month_bounds(year, month)
    return ChecklistItem.objects.filter(period__cadence=Cadence.MONTHLY, period__start=start.date(),
                                        kind=ItemKind.SIGNOFF).exclude(status=ChecklistItem.Status.SIGNED).count()

