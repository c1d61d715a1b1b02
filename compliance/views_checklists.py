"""Pages of the checklists: today's, a period, the monthly history, the template editor."""

from datetime import date, timedelta

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from compliance.checklists import (
    KINDS_BY_CADENCE,
    TEMPLATE_FIELDS,
    ChecklistError,
    checklist_evaluate,
    checklist_item_tick,
    checklist_item_untick,
    checklist_month_summary,
    checklist_periods_current,
    checklist_template_item_add,
    checklist_template_item_change,
    evidence_candidates,
    is_open,
    parse_label,
)
from compliance.forms import TemplateItemAddForm, TemplateItemForm, TickForm
from compliance.models import (
    Alert,
    Cadence,
    ChecklistItem,
    ChecklistPeriod,
    ChecklistTemplate,
    ChecklistTemplateItem,
    ItemKind,
)
from drpanel import clock
from drpanel import evidence as evaluators
from drpanel.permissions import Cap, capability_required, has_cap


def _period_view(period: ChecklistPeriod, user, today: date) -> dict:
    """A period with what the page needs per item: evidence candidates, whether ticking is possible."""
    open_now = is_open(period, today)
    items = list(period.items.select_related("ticked_by").order_by("position", "pk"))
    can_tick = has_cap(user, Cap.TICK_CHECKLISTS) and open_now
    for item in items:
        item.missed = period.end < today and not item.complete
        item.has_evaluator = evaluators.evaluator_for(item.code) is not None
        item.tickable = can_tick and item.kind == ItemKind.MANUAL and item.status == ChecklistItem.Status.PENDING
        item.untickable = (open_now and item.status == ChecklistItem.Status.DONE and item.ticked_by_id == user.pk)
        item.needs_validator = item.requires_evidence and evaluators.validator_for(item.code) is None
        item.candidates = evidence_candidates(item) if item.tickable and item.requires_evidence else []
    complete = sum(i.complete for i in items)
    return {"period": period, "items": items, "open": open_now, "complete": complete, "total": len(items),
            "percent": round(100 * complete / len(items)) if items else 0}


@capability_required(Cap.VIEW_PANEL)
@require_GET
def checklist_today(request):
    today = clock.today()
    periods = [_period_view(p, request.user, today) for p in checklist_periods_current(today)]
    return render(request, "compliance/checklist_today.html", {
        "today": today, "periods": periods,
        "can_evaluate": has_cap(request.user, Cap.TICK_CHECKLISTS),
        "open_alerts": Alert.objects.filter(state=Alert.State.OPEN).count(),
    })


@capability_required(Cap.VIEW_PANEL)
@require_GET
def checklist_period_detail(request, cadence: str, label: str):
    if cadence not in Cadence.values:
        raise Http404
    try:
        start = parse_label(cadence, label)
    except ValueError:
        raise Http404 from None
    period = get_object_or_404(ChecklistPeriod, cadence=cadence, start=start)
    return render(request, "compliance/checklist_period_detail.html",
                  {"p": _period_view(period, request.user, clock.today())})


@capability_required(Cap.VIEW_PANEL)
@require_GET
def checklist_history(request):
    today = clock.today()
    try:
        year, month = (int(x) for x in request.GET.get("month", f"{today:%Y-%m}").split("-"))
        first = date(year, month, 1)
    except ValueError:
        raise Http404 from None
    previous = (first - timedelta(days=1)).replace(day=1)
    following = date(year + (month == 12), month % 12 + 1, 1)
    return render(request, "compliance/checklist_history.html", {
        "summary": checklist_month_summary(year, month), "first": first, "previous": previous,
        "following": following if following <= today else None,
    })


def _back_to(item: ChecklistItem) -> str:
    return f"{reverse('compliance:checklist-today')}#item-{item.code}"


@capability_required(Cap.TICK_CHECKLISTS)
@require_POST
def checklist_evaluate_view(request):
    try:
        period = checklist_evaluate(actor=request.user)
    except ChecklistError as exc:
        messages.error(request, str(exc))
    else:
        counts = {s: period.items.filter(kind=ItemKind.AUTOMATIC, status=s).count()
                  for s in ("passed", "failed", "no_data")}
        messages.success(request, f"Evaluated today's automatic items: {counts['passed']} passed, "
                                  f"{counts['failed']} failed, {counts['no_data']} without evidence.")
    return redirect("compliance:checklist-today")


@capability_required(Cap.TICK_CHECKLISTS)
@require_POST
def checklist_item_tick_view(request, pk: int):
    item = get_object_or_404(ChecklistItem.objects.select_related("period"), pk=pk)
    form = TickForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Say what you checked in the note.")
        return redirect(_back_to(item))
    try:
        checklist_item_tick(actor=request.user, item=item, **form.cleaned_data)
    except ChecklistError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Ticked “{item.title}”.")
    return redirect(_back_to(item))


@capability_required(Cap.TICK_CHECKLISTS)
@require_POST
def checklist_item_untick_view(request, pk: int):
    item = get_object_or_404(ChecklistItem.objects.select_related("period"), pk=pk)
    try:
        checklist_item_untick(actor=request.user, item=item)
    except ChecklistError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Unticked “{item.title}”.")
    return redirect(_back_to(item))


@capability_required(Cap.VIEW_PANEL)
@require_GET
def checklist_template_list(request):
    templates = ChecklistTemplate.objects.prefetch_related("items").order_by("pk")
    can_edit = has_cap(request.user, Cap.MANAGE_PANEL)
    return render(request, "compliance/checklist_template_list.html", {
        "templates": [(t, t.items.all(), TemplateItemAddForm(kinds=KINDS_BY_CADENCE[t.cadence],
                                                             prefix=t.cadence) if can_edit else None)
                      for t in templates],
        "can_edit": can_edit,
    })


@capability_required(Cap.MANAGE_PANEL)
@require_http_methods(["GET", "POST"])
def checklist_template_item_edit(request, pk: int):
    item = get_object_or_404(ChecklistTemplateItem.objects.select_related("template"), pk=pk)
    form = TemplateItemForm(request.POST or None, instance=ChecklistTemplateItem.objects.get(pk=pk))
    if request.method == "POST" and form.is_valid():
        try:
            checklist_template_item_change(actor=request.user, item=item,
                                           **{name: form.cleaned_data[name] for name in TEMPLATE_FIELDS})
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"“{form.cleaned_data['title']}” saved; open checklists are marked as changed.")
            return redirect("compliance:checklist-template-list")
    return render(request, "compliance/checklist_template_item_edit.html", {"form": form, "item": item},
                  status=400 if form.errors else 200)


@capability_required(Cap.MANAGE_PANEL)
@require_POST
def checklist_template_item_add_view(request, cadence: str):
    template = get_object_or_404(ChecklistTemplate, cadence=cadence)
    form = TemplateItemAddForm(request.POST, kinds=KINDS_BY_CADENCE[template.cadence], prefix=cadence)
    if form.is_valid():
        try:
            item = checklist_template_item_add(actor=request.user, template=template, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Added {item.code}; it appears in checklists opened from now on.")
            return redirect("compliance:checklist-template-list")
    errors = "; ".join(f"{field}: {' '.join(errs)}" if field != "__all__" else " ".join(errs)
                       for field, errs in form.errors.items())
    messages.error(request, f"Nothing was added. {errors}")
    return redirect("compliance:checklist-template-list")
