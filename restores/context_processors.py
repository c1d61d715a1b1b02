"""Template context of disaster mode: the open incidents whose clock every page shows in its banner.

Named in ``TEMPLATES`` by its dotted path (settings), so the panel's core never imports restores.
"""

from drpanel.permissions import Cap, has_cap
from restores.models import Incident
from restores.models_incidents import OPEN_STATES


def incidents(request):
    user = getattr(request, "user", None)
    if user is None or not has_cap(user, Cap.VIEW_PANEL):
        return {}
    rows = list(Incident.objects.filter(state__in=OPEN_STATES, is_drill=False).select_related("system")
                .order_by("declared_at")[:5])
    return {"open_incidents": rows}
