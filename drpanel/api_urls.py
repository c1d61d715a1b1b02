"""``/api/v1/``: the project's endpoints, then each app's ``api.urlpatterns``."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from backups.api import urlpatterns as backups_api
from compliance.api import urlpatterns as compliance_api
from drpanel.api import DashboardView, MeView
from restores.api import urlpatterns as restores_api

app_name = "api"

urlpatterns = [
    path("me", MeView.as_view(), name="me"),
    path("dashboard", DashboardView.as_view(), name="dashboard"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    *backups_api,
    *restores_api,
    *compliance_api,
]
