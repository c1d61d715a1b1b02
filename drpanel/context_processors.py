"""Template context every page needs: the navigation the user's role may use."""

from django.conf import settings
from django.urls import reverse

from drpanel.permissions import Cap, has_cap, roles_of

NAVIGATION = (
    ("Dashboard", "drpanel:dashboard", Cap.VIEW_PANEL, ""),
    ("Artifacts", "backups:artifact-list", Cap.VIEW_PANEL, "/artifacts/"),
    ("Restores", "restores:run-list", Cap.VIEW_PANEL, "/restores/"),
    ("Incidents", "restores:incident-list", Cap.VIEW_PANEL, "/incidents/"),
    ("Checklists", "compliance:checklist-today", Cap.VIEW_PANEL, "/checklists/"),
    ("Contacts", "compliance:contact-list", Cap.VIEW_PANEL, "/contacts/"),
    ("Certification", "compliance:certification-list", Cap.VIEW_PANEL, "/certifications/"),
    ("Audit", "compliance:audit-list", Cap.READ_AUDIT, "/audit/"),
)


def panel(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav": [], "roles": [], "drpanel_env": settings.DRPANEL_ENV}
    path = request.path
    nav = []
    for label, url_name, cap, prefix in NAVIGATION:
        if has_cap(user, cap):
            url = reverse(url_name)
            active = path.startswith(prefix) if prefix else path == url
            nav.append({"label": label, "url": url, "active": active})
    return {
        "nav": nav,
        "roles": roles_of(user),
        "can_manage": has_cap(user, Cap.MANAGE_PANEL),
        "drpanel_env": settings.DRPANEL_ENV,
    }
