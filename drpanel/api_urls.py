"""``/api/v1/``: the project's endpoints, then each app's ``api.urlpatterns``."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from backups.api import urlpatterns as backups_api
from compliance.api import urlpatterns as compliance_api
from drpanel.api import MeView, TokenListView, TokenRevokeView
from drpanel.api_dashboard import DashboardView
from restores.api import urlpatterns as restores_api
from restores.api_incidents import urlpatterns as incidents_api

app_name = "api"

urlpatterns = [
    path("me", MeView.as_view(), name="me"),
    path("dashboard", DashboardView.as_view(), name="dashboard"),
    path("tokens", TokenListView.as_view(), name="token-list"),
    path("tokens/<int:pk>/revoke", TokenRevokeView.as_view(), name="token-revoke"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    *backups_api,
    *restores_api,
    *incidents_api,
    *compliance_api,
]
