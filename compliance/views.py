"""Pages of compliance: checklists, the contact roster and the audit log."""

import json

from django.apps import apps
from django.core.exceptions import ValidationError
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, render
from django.urls import NoReverseMatch, reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods

from compliance.audit.actions import AuditAction, action_choices
from compliance.audit.checkpoints import checkpoint_store
from compliance.audit.export import FORMATS, audit_export_start, export_response, public_key_response
from compliance.audit.query import FILTER_FIELDS, AuditFilter, FilterError, events_page
from compliance.audit.signing import current_public_key, fingerprint, retired_public_keys
from compliance.audit.verify import audit_verify as audit_verify_service
from compliance.models import AuditEvent
from drpanel.permissions import Cap, capability_required, has_cap


@capability_required(Cap.READ_AUDIT)
@require_GET
def audit_list(request):
    """Events, newest first, with filters and keyset pages (``before`` / ``after`` a seq)."""
    error, page, flt = None, None, AuditFilter()
    try:
        flt = AuditFilter.from_params(request.GET)
        page = events_page(flt, before=_seq_param(request, "before"), after=_seq_param(request, "after"))
    except FilterError as exc:
        error = str(exc)
    query = urlencode(flt.query_params())
    return render(request, "compliance/audit_list.html", {
        "page": page,
        "error": error,
        "values": {name: request.GET.get(name, "") for name in FILTER_FIELDS},
        "outcomes": AuditEvent.Outcome.values,
        "actions": action_choices(),
        "filtered": not flt.is_empty(),
        "query": query,
        "log_is_empty": not AuditEvent.objects.exists(),
    }, status=400 if error else 200)


def _seq_param(request, name: str) -> int | None:
    value = request.GET.get(name, "")
    if not value:
        return None
    if not value.isdigit():
        raise FilterError(f"{name} must be an event number")
    return int(value)


@capability_required(Cap.READ_AUDIT)
@require_GET
def audit_detail(request, seq: int):
    """One event: every field, its details pretty-printed, its hashes, a link to its object."""
    event = get_object_or_404(AuditEvent, seq=seq)
    object_url, object_exists = _object_link(request.user, event)
    return render(request, "compliance/audit_detail.html", {
        "event": event,
        "details": json.dumps(event.details, indent=2, sort_keys=True, ensure_ascii=False),
        "object_url": object_url,
        "object_exists": object_exists,
        "object_query": urlencode({"object_type": event.object_type, "object_id": event.object_id}),
        "previous_seq": seq - 1 if seq > 1 else None,
        "next_seq": seq + 1 if AuditEvent.objects.filter(seq=seq + 1).exists() else None,
    })


def _object_link(user, event) -> tuple[str | None, bool | None]:
    """Where the event's object can be seen (its page, else its admin page for admins), and if it exists."""
    if not event.object_type or not event.object_id:
        return None, None
    try:
        model = apps.get_model(event.object_type)
        obj = model._default_manager.filter(pk=event.object_id).first()
    except (LookupError, ValueError, ValidationError):
        return None, None
    if obj is None:
        return None, False
    if hasattr(obj, "get_absolute_url"):
        return obj.get_absolute_url(), True
    if has_cap(user, Cap.MANAGE_PANEL) and user.is_staff:
        try:
            return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[obj.pk]), True
        except NoReverseMatch:
            pass
    return None, True


@capability_required(Cap.READ_AUDIT)
@require_GET
def audit_export(request):
    """A signed export of the events the filter selects (JSON Lines, or CSV in a ZIP). Audited."""
    export_format = request.GET.get("format", "jsonl")
    try:
        flt = AuditFilter.from_params(request.GET)
        if export_format not in FORMATS:
            raise FilterError(f"format must be one of: {', '.join(FORMATS)}")
    except FilterError as exc:
        return HttpResponseBadRequest(str(exc), content_type="text/plain; charset=utf-8")
    plan = audit_export_start(actor=request.user, format=export_format, flt=flt, request=request, via="web")
    return export_response(plan)


@capability_required(Cap.READ_AUDIT)
@require_GET
def audit_public_key(request):
    """The current public key (PEM), to verify exports offline."""
    return public_key_response(current_public_key())


@capability_required(Cap.READ_AUDIT)
@require_http_methods(["GET", "POST"])
def audit_verify(request):
    """GET: the verify button and recent verifications. POST: verify the whole chain now (audited)."""
    result = audit_verify_service(actor=request.user, request=request) if request.method == "POST" else None
    recent = AuditEvent.objects.filter(action=AuditAction.AUDIT_VERIFIED).order_by("-seq")[:10]
    current = current_public_key()
    return render(request, "compliance/audit_verify.html", {
        "result": result,
        "recent": recent,
        "fingerprint": fingerprint(current),
        "retired": [fingerprint(key) for _, key in retired_public_keys()],
        "checkpoint_store": checkpoint_store().description,
    })
