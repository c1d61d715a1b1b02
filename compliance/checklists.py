"""Daily, weekly and monthly checklists: periods, evaluation, ticking, template edits, summaries.

A *period* is one day, ISO week (Monday–Sunday) or month. It is opened (materialised) the
first time anyone or any job needs it, from the template version in force at that moment,
and it is open until the panel's today passes its last day. After that its unticked and
failed items are *missed*, shown on its page and counted by ``checklist_month_summary``.

- ``automatic`` items are decided by the evaluators registered in ``drpanel.evidence``
  (none exist in this phase, so they honestly show "no evidence source yet").
- ``manual`` items are ticked by operators and managers with a note; an item that
  ``requires_evidence`` needs evidence a registered validator accepts.
- ``signoff`` items are signed by the monthly certification.
"""

import calendar
import re
from datetime import date, timedelta

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.checklist_seed import seed_templates
from compliance.models import (
    Cadence,
    ChecklistItem,
    ChecklistPeriod,
    ChecklistTemplate,
    ChecklistTemplateItem,
    ItemKind,
)
from drpanel import clock
from drpanel import evidence as evaluators
from drpanel.permissions import Cap, require_cap

KINDS_BY_CADENCE = {
    Cadence.DAILY: (ItemKind.AUTOMATIC, ItemKind.MANUAL),
    Cadence.WEEKLY: (ItemKind.MANUAL,),
    Cadence.MONTHLY: (ItemKind.SIGNOFF,),
}
TEMPLATE_FIELDS = ("title", "description", "position", "active", "requires_evidence", "evidence_hint")
_CODE = re.compile(r"^(daily|weekly|monthly)\.[a-z0-9_]{2,50}$")


class ChecklistError(Exception):
    """A checklist action that cannot be done; the message tells the person why."""


# --- periods ---------------------------------------------------------------------------------

def period_bounds(cadence: str, day: date) -> tuple[date, date]:
    """First and last day of the day / ISO week / month holding ``day``."""
    if cadence == Cadence.DAILY:
        return day, day
    if cadence == Cadence.WEEKLY:
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=6)
    if cadence == Cadence.MONTHLY:
        return day.replace(day=1), day.replace(day=calendar.monthrange(day.year, day.month)[1])
    raise ValueError(f"unknown cadence {cadence!r}")


def parse_label(cadence: str, label: str) -> date:
    """The start of the period a label names: ``2026-11-25``, ``2026-W48`` or ``2026-11``."""
    try:
        if cadence == Cadence.DAILY:
            return date.fromisoformat(label)
        if cadence == Cadence.WEEKLY:
            year, week = label.split("-W")
            return date.fromisocalendar(int(year), int(week), 1)
        if cadence == Cadence.MONTHLY:
            year, month = label.split("-")
            return date(int(year), int(month), 1)
    except (ValueError, TypeError):
        pass
    raise ValueError(f"{label!r} does not name a {cadence} period")


def is_open(period: ChecklistPeriod, today: date | None = None) -> bool:
    return period.start <= (today or clock.today()) <= period.end


def checklist_period_open(cadence: str, day: date | None = None) -> ChecklistPeriod:
    """The period of ``cadence`` holding ``day`` (default today), materialised on first use.

    Materialising copies the template's active items; the period remembers the template
    version. Opening is done by the system (audited as such), whoever looked first.
    """
    day = day or clock.today()
    start, end = period_bounds(cadence, day)
    period = ChecklistPeriod.objects.filter(cadence=cadence, start=start).first()
    if period is not None:
        return period
    template = ChecklistTemplate.objects.get(cadence=cadence)
    try:
        with transaction.atomic():
            period = ChecklistPeriod.objects.create(
                cadence=cadence, start=start, end=end, template_version=template.version, opened_at=clock.now())
            items = [ChecklistItem(period=period, code=t.code, title=t.title, description=t.description, kind=t.kind,
                                   position=t.position, requires_evidence=t.requires_evidence,
                                   evidence_hint=t.evidence_hint)
                     for t in template.items.filter(active=True).order_by("position", "pk")]
            ChecklistItem.objects.bulk_create(items)
            audit_record(actor=None, action=AuditAction.CHECKLIST_PERIOD_OPENED, obj=period, details={
                "cadence": cadence, "period": period.label, "template_version": template.version,
                "items": len(items)})
    except IntegrityError:
        # Someone else opened it at the same moment (unique cadence + start): use theirs.
        return ChecklistPeriod.objects.get(cadence=cadence, start=start)
    return period


def checklist_periods_current(today: date | None = None) -> list[ChecklistPeriod]:
    """Today's daily checklist, this week's and this month's."""
    today = today or clock.today()
    return [checklist_period_open(cadence, today) for cadence in (Cadence.DAILY, Cadence.WEEKLY, Cadence.MONTHLY)]


# --- automatic items -------------------------------------------------------------------------

def checklist_evaluate(*, actor, day: date | None = None) -> ChecklistPeriod:
    """Evaluate the automatic items of a day (today by default) and store results and evidence.

    Run by the daily job (``actor=None``) and by the "Evaluate now" button (operators,
    managers). A closed day is not re-evaluated: its record stays as it was.
    """
    if actor is not None:
        require_cap(actor, Cap.TICK_CHECKLISTS, action="checklist.evaluate")
    today = clock.today()
    day = day or today
    if day != today:
        raise ChecklistError(f"Only today's checklist can be evaluated; {day:%Y-%m-%d} is closed.")
    period = checklist_period_open(Cadence.DAILY, day)
    results = {}
    now = clock.now()
    with transaction.atomic():
        for item in period.items.select_for_update().filter(kind=ItemKind.AUTOMATIC):
            result = evaluators.evaluate(item.code, day)
            item.status = result.status
            item.summary = result.summary[:500]
            item.evidence = [e.as_dict() for e in result.evidence]
            item.evaluated_at = now
            item.save(update_fields=["status", "summary", "evidence", "evaluated_at"])
            results[item.code] = {"status": result.status, "evidence": len(result.evidence)}
        audit_record(actor=actor, action=AuditAction.CHECKLIST_EVALUATED, obj=period,
                     details={"period": period.label, "results": results})
    return period


# --- manual items ----------------------------------------------------------------------------

def _check_evidence_url(url: str) -> str:
    url = (url or "").strip()
    if not url:
        return ""
    if url.startswith("/") and not url.startswith("//"):
        return url[:500]
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise ChecklistError("The evidence link must be a panel path (/…) or an http(s) address.") from None
    return url[:500]


def evidence_candidates(item: ChecklistItem) -> list[evaluators.Evidence]:
    """What can be linked to tick ``item`` (empty when no validator is registered yet)."""
    validator = evaluators.validator_for(item.code)
    return validator.candidates(item.period.start, item.period.end) if validator else []


def checklist_item_tick(*, actor, item: ChecklistItem, note: str, evidence_url: str = "",
                        evidence_ref: str = "") -> ChecklistItem:
    """Tick a manual item of an open period, with a note and optional evidence link.

    ``evidence_ref`` is ``"<object_type>:<object_id>"`` of one of ``evidence_candidates``;
    it is required (and checked by the item's validator) when the item ``requires_evidence``.
    """
    require_cap(actor, Cap.TICK_CHECKLISTS, obj=item, action="checklist.tick")
    period = item.period
    if item.kind != ItemKind.MANUAL:
        raise ChecklistError(f"“{item.title}” is {item.get_kind_display()}, not ticked by hand.")
    if not is_open(period):
        raise ChecklistError(f"The {period.get_cadence_display().lower()} checklist {period.label} is closed.")
    note = (note or "").strip()
    if not note:
        raise ChecklistError("Say what you checked in the note.")
    evidence = []
    url = _check_evidence_url(evidence_url)
    if url:
        evidence.append(evaluators.Evidence(label="link given when ticking", url=url).as_dict())
    if item.requires_evidence:
        validator = evaluators.validator_for(item.code)
        if validator is None:
            raise ChecklistError(f"“{item.title}” needs {item.evidence_hint or 'linked evidence'}; "
                                 "none can be linked yet.")
        object_type, _, object_id = (evidence_ref or "").partition(":")
        if not object_type or not object_id:
            raise ChecklistError(f"“{item.title}” needs {item.evidence_hint or 'linked evidence'}: pick one.")
        try:
            proof = validator.validate(period.start, period.end, object_type, object_id)
        except evaluators.EvidenceRejected as exc:
            raise ChecklistError(str(exc)) from None
        evidence.insert(0, proof.as_dict())
    now = clock.now()
    with transaction.atomic():
        # Conditional update: two people ticking at once record one tick, not two.
        changed = ChecklistItem.objects.filter(pk=item.pk, status=ChecklistItem.Status.PENDING).update(
            status=ChecklistItem.Status.DONE, ticked_by=actor, ticked_at=now, note=note[:2000], evidence=evidence,
            summary="")
        item.refresh_from_db()
        if not changed:
            raise ChecklistError(f"“{item.title}” is already {item.get_status_display()}.")
        audit_record(actor=actor, action=AuditAction.CHECKLIST_TICKED, obj=item, details={
            "period": period.label, "code": item.code, "note": note[:300], "evidence": evidence})
    return item


def checklist_item_untick(*, actor, item: ChecklistItem) -> ChecklistItem:
    """Take back one's own tick while the period is open; the tick stays in the audit log."""
    require_cap(actor, Cap.TICK_CHECKLISTS, obj=item, action="checklist.untick")
    if item.ticked_by_id != actor.pk:
        raise ChecklistError("Only the person who ticked an item can untick it.")
    if not is_open(item.period):
        raise ChecklistError(f"The checklist {item.period.label} is closed; its ticks are final.")
    with transaction.atomic():
        changed = ChecklistItem.objects.filter(pk=item.pk, status=ChecklistItem.Status.DONE, ticked_by=actor).update(
            status=ChecklistItem.Status.PENDING, ticked_by=None, ticked_at=None, note="", evidence=[])
        if not changed:
            raise ChecklistError(f"“{item.title}” is not ticked by you.")
        audit_record(actor=actor, action=AuditAction.CHECKLIST_UNTICKED, obj=item, details={
            "period": item.period.label, "code": item.code, "previous_note": item.note[:300],
            "previous_evidence": item.evidence, "ticked_at": item.ticked_at})
    item.refresh_from_db()
    return item


# --- templates -------------------------------------------------------------------------------

def _template_changed(template: ChecklistTemplate, *, actor, now) -> int:
    """Bump the version and mark the cadence's open periods as changed; returns how many."""
    template.version += 1
    template.updated_at = now
    template.updated_by = actor
    template.save(update_fields=["version", "updated_at", "updated_by"])
    return ChecklistPeriod.objects.filter(cadence=template.cadence, end__gte=clock.today()).update(
        changed_since_opened=True, template_changed_at=now)


def _validate_template_item(item: ChecklistTemplateItem, cadence: str) -> None:
    if item.kind not in KINDS_BY_CADENCE[cadence]:
        allowed = ", ".join(str(k) for k in KINDS_BY_CADENCE[cadence])
        raise ValidationError({"kind": f"{cadence} items are {allowed}."})
    if item.requires_evidence and item.kind != ItemKind.MANUAL:
        raise ValidationError({"requires_evidence": "Only manual items are ticked with evidence."})
    if item.requires_evidence and not item.evidence_hint.strip():
        raise ValidationError({"evidence_hint": "Say what evidence ticking needs."})
    item.full_clean(exclude=["template"])


def checklist_template_item_change(*, actor, item: ChecklistTemplateItem, **fields) -> ChecklistTemplateItem:
    """Edit a template item (its code and kind never change). Audited with before/after."""
    require_cap(actor, Cap.MANAGE_PANEL, obj=item, action="checklist.template_change")
    unknown = set(fields) - set(TEMPLATE_FIELDS)
    if unknown:
        raise ValueError(f"not editable template fields: {', '.join(sorted(unknown))}")
    now = clock.now()
    with transaction.atomic():
        current = ChecklistTemplateItem.objects.select_for_update().select_related("template").get(pk=item.pk)
        changes = {}
        for name, value in fields.items():
            if getattr(current, name) != value:
                changes[name] = [getattr(current, name), value]
                setattr(current, name, value)
        if not changes:
            return current
        _validate_template_item(current, current.template.cadence)
        current.save(update_fields=list(changes))
        template = ChecklistTemplate.objects.select_for_update().get(pk=current.template_id)
        marked = _template_changed(template, actor=actor, now=now)
        audit_record(actor=actor, action=AuditAction.CHECKLIST_TEMPLATE_CHANGED, obj=current, details={
            "cadence": template.cadence, "code": current.code, "version": template.version,
            "changes": changes, "open_periods_marked": marked})
    return current


def checklist_template_item_add(*, actor, template: ChecklistTemplate, code: str, title: str, kind: str,
                                description: str = "", position: int | None = None,
                                requires_evidence: bool = False, evidence_hint: str = "") -> ChecklistTemplateItem:
    """Add an item to a template; it appears in periods opened from now on."""
    require_cap(actor, Cap.MANAGE_PANEL, obj=template, action="checklist.template_add")
    code = (code or "").strip()
    if not _CODE.match(code) or not code.startswith(f"{template.cadence}."):
        raise ValidationError({"code": f"A code looks like {template.cadence}.some_check (lowercase, digits, _)."})
    now = clock.now()
    with transaction.atomic():
        template = ChecklistTemplate.objects.select_for_update().get(pk=template.pk)
        if position is None:
            position = (template.items.order_by("-position").values_list("position", flat=True).first() or 0) + 1
        item = ChecklistTemplateItem(template=template, code=code, title=(title or "").strip(), kind=kind,
                                     description=description.strip(), position=position,
                                     requires_evidence=requires_evidence, evidence_hint=evidence_hint.strip())
        _validate_template_item(item, template.cadence)
        item.save(force_insert=True)
        marked = _template_changed(template, actor=actor, now=now)
        audit_record(actor=actor, action=AuditAction.CHECKLIST_TEMPLATE_CHANGED, obj=item, details={
            "cadence": template.cadence, "code": code, "version": template.version, "added": {
                "title": item.title, "kind": kind, "position": position, "requires_evidence": requires_evidence},
            "open_periods_marked": marked})
    return item


# --- selectors -------------------------------------------------------------------------------

def item_as_dict(item: ChecklistItem, *, closed: bool) -> dict:
    return {
        "code": item.code,
        "title": item.title,
        "kind": item.kind,
        "status": item.status,
        "summary": item.summary,
        "evidence": item.evidence,
        "evaluated_at": item.evaluated_at.isoformat() if item.evaluated_at else None,
        "ticked_by": item.ticked_by.get_username() if item.ticked_by else None,
        "ticked_at": item.ticked_at.isoformat() if item.ticked_at else None,
        "note": item.note,
        "missed": closed and not item.complete,
    }


def period_as_dict(period: ChecklistPeriod, today: date | None = None) -> dict:
    closed = period.end < (today or clock.today())
    items = list(period.items.select_related("ticked_by").order_by("position", "pk"))
    return {
        "cadence": period.cadence,
        "label": period.label,
        "start": period.start.isoformat(),
        "end": period.end.isoformat(),
        "closed": closed,
        "template_version": period.template_version,
        "changed_since_opened": period.changed_since_opened,
        "counts": _counts(items, closed),
        "items": [item_as_dict(i, closed=closed) for i in items],
    }


def _counts(items: list[ChecklistItem], closed: bool) -> dict:
    status = ChecklistItem.Status
    return {
        "total": len(items),
        "complete": sum(i.complete for i in items),
        "pending": sum(i.status == status.PENDING for i in items),
        "failed": sum(i.status == status.FAILED for i in items),
        "no_data": sum(i.status == status.NO_DATA for i in items),
        "missed": sum(not i.complete for i in items) if closed else 0,
    }


def checklist_today(today: date | None = None) -> dict:
    """Today's daily checklist, this week's and this month's, with states and evidence."""
    today = today or clock.today()
    return {"date": today.isoformat(), "periods": [period_as_dict(p, today) for p in checklist_periods_current(today)]}


def _weeks_of_month(year: int, month: int) -> list[date]:
    """Mondays of the ISO weeks that belong to the month: those whose Thursday falls in it."""
    first = date(year, month, 1)
    thursday = first + timedelta(days=(3 - first.weekday()) % 7)
    mondays = []
    while thursday.month == month:
        mondays.append(thursday - timedelta(days=3))
        thursday += timedelta(days=7)
    return mondays


def checklist_month_summary(year: int, month: int) -> dict:
    """Counts and missed items per period of a month, for the monthly certification.

    Days, weeks (and the month) that are over and for which no checklist was ever opened
    are listed as ``missing``: nobody and nothing looked at them. Periods before the very
    first checklist the panel opened (``tracked_since``) are not counted. JSON-ready.
    """
    today = clock.today()
    first = date(year, month, 1)
    last = first.replace(day=calendar.monthrange(year, month)[1])
    mondays = _weeks_of_month(year, month)
    periods = list(ChecklistPeriod.objects.filter(
        Q(cadence=Cadence.DAILY, start__range=(first, last))
        | Q(cadence=Cadence.WEEKLY, start__in=mondays)
        | Q(cadence=Cadence.MONTHLY, start=first)))
    periods.sort(key=lambda p: (list(Cadence.values).index(p.cadence), p.start))
    rows, totals = [], {"total": 0, "complete": 0, "pending": 0, "failed": 0, "no_data": 0, "missed": 0}
    missed = []
    for period in periods:
        data = period_as_dict(period, today)
        for key in totals:
            totals[key] += data["counts"][key]
        period_missed = [{"cadence": period.cadence, "period": period.label, "code": i["code"], "title": i["title"],
                          "status": i["status"]} for i in data["items"] if i["missed"]]
        missed += period_missed
        rows.append({key: data[key] for key in ("cadence", "label", "start", "end", "closed", "template_version",
                                                 "changed_since_opened", "counts")} | {"missed": period_missed})
    opened_days = {p.start for p in periods if p.cadence == Cadence.DAILY}
    opened_weeks = {p.start for p in periods if p.cadence == Cadence.WEEKLY}
    # Before the first checklist was ever opened the panel was not keeping them: nothing is
    # missing from then. After that, a period that is over and was never opened is missing.
    first_opened = ChecklistPeriod.objects.order_by("opened_at").values_list("opened_at", flat=True).first()
    since = timezone.localdate(first_opened) if first_opened else today
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    return {
        "year": year,
        "month": month,
        "label": f"{year:04d}-{month:02d}",
        "periods": rows,
        "totals": totals,
        "missed": missed,
        "tracked_since": since.isoformat() if first_opened else None,
        "missing": {
            "days": [d.isoformat() for d in days if since <= d < today and d not in opened_days],
            "weeks": [f"{m.isocalendar()[0]}-W{m.isocalendar()[1]:02d}" for m in mondays
                      if since <= m + timedelta(days=6) < today and m not in opened_weeks],
            "month": since <= last < today and not any(p.cadence == Cadence.MONTHLY for p in periods),
        },
    }


def ensure_checklist_templates(**kwargs) -> None:
    """Bring back missing templates after a flush (connected to ``post_migrate``).

    The data migration seeds them once; transactional tests flush every table, and this
    re-seeds a template only when its cadence has none, never touching edited ones.
    """
    seed_templates(ChecklistTemplate, ChecklistTemplateItem)
