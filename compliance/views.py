"""Pages of compliance: checklists, the contact roster and the audit log."""

from django.shortcuts import render
from django.views.decorators.http import require_GET

from compliance.models import AuditEvent
from drpanel.permissions import Cap, capability_required


@capability_required(Cap.READ_AUDIT)
@require_GET
def audit_list(request):
    events = AuditEvent.objects.order_by("-seq")[:100]
    return render(request, "compliance/audit_list.html", {"events": events})
