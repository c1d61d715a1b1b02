"""The panel's URLs: probes and metrics, the API, project pages, then each app's pages and the admin site."""

from django.contrib import admin
from django.urls import include, path

from drpanel import metrics, probes, views, views_approvals, views_health

handler403 = "drpanel.views.permission_denied"
handler404 = "drpanel.views.page_not_found"
handler500 = "drpanel.views.server_error"

panel_patterns = (
    [
        path("", views.dashboard, name="dashboard"),
        path("dashboard/jobs", views.dashboard_jobs, name="dashboard-jobs"),
        path("systems/<int:pk>/health", views_health.health_detail, name="health-detail"),
        path("login/", views.LoginView.as_view(), name="login"),
        path("logout/", views.LogoutView.as_view(), name="logout"),
        path("reauth/", views.reauth, name="reauth"),
        path("tokens/", views.token_list, name="token-list"),
        path("tokens/new", views.token_create, name="token-create"),
        path("tokens/<int:pk>/revoke", views.token_revoke, name="token-revoke"),
        path("approvals/protection/<int:pk>", views_approvals.approval_detail, name="approval-detail"),
        path("approvals/protection/<int:pk>/approve", views_approvals.approval_approve, name="approval-approve"),
        path("approvals/protection/<int:pk>/reject", views_approvals.approval_reject, name="approval-reject"),
        path("users/<int:pk>/roles", views_approvals.user_roles, name="user-roles"),
    ],
    "drpanel",
)

urlpatterns = [
    path("health", views.health, name="health"),
    path("health/live", probes.live, name="health-live"),
    path("health/ready", probes.ready, name="health-ready"),
    path("metrics", metrics.metrics, name="metrics"),
    # Before the pages: an API request then never walks (and lists as tried) every page's pattern first.
    path("api/v1/", include("drpanel.api_urls")),
    path("", include(panel_patterns)),
    path("", include("backups.urls")),
    path("", include("restores.urls")),
    path("", include("compliance.urls")),
    path("admin/", admin.site.urls),
]
