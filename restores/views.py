"""Pages of verifications and restores."""

from django.shortcuts import render
from django.views.decorators.http import require_GET

from drpanel.permissions import Cap, capability_required


@capability_required(Cap.VIEW_PANEL)
@require_GET
def run_list(request):
    return render(request, "restores/run_list.html", {"runs": []})
