"""Pages of the backup catalog."""

from django.shortcuts import render
from django.views.decorators.http import require_GET

from drpanel.permissions import Cap, capability_required


@capability_required(Cap.VIEW_PANEL)
@require_GET
def artifact_list(request):
    return render(request, "backups/artifact_list.html", {"artifacts": []})
