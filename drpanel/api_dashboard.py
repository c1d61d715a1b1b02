"""``GET /api/v1/dashboard``: the dashboard's figures as JSON (a page that gathers every app, like the dashboard).

Apart from ``drpanel.api``, which the apps' API modules build on (``capability``), so that
those stay below the dashboard.
"""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from drpanel.api import capability
from drpanel.dashboard import dashboard_json
from drpanel.permissions import Cap


class DashboardView(APIView):
    """The worst system's health (score, status, checks with evidence), RPO and RTO now, every system's health."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(responses=inline_serializer("Dashboard", {"data": serializers.DictField()}))
    def get(self, request):
        return Response({"data": dashboard_json()})
