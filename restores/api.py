"""``/api/v1/`` endpoints of verifications, targets and restores."""

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.generics import ListAPIView, RetrieveAPIView

from drpanel.api import capability
from drpanel.permissions import Cap
from restores.models import HealthCheck, SanityCheck, Target
from restores.selectors import access_target, rights_of, visible_targets


class SanityCheckSerializer(serializers.ModelSerializer):
    class Meta:
        model = SanityCheck
        fields = ["name", "query", "expectation"]


class HealthCheckSerializer(serializers.ModelSerializer):
    class Meta:
        model = HealthCheck
        fields = ["url", "expected_status"]


class TargetSerializer(serializers.ModelSerializer):
    """A target as the API shows it; ``database`` is the secret *reference*, never the URL."""

    database = serializers.CharField(source="database_ref")
    sanity_checks = SanityCheckSerializer(many=True)
    health_checks = HealthCheckSerializer(many=True)
    your_rights = serializers.SerializerMethodField()

    class Meta:
        model = Target
        fields = ["id", "name", "environment", "description", "is_active", "database", "config_dir",
                  "health_check_hosts", "sanity_checks", "health_checks", "your_rights", "updated_at"]

    def get_your_rights(self, target) -> list[str]:
        return rights_of(self.context["request"].user, target)


class TargetListView(ListAPIView):
    """Targets the caller may see: every target for admins, auditors and managers; otherwise those
    the caller holds ``restore_to_target`` or ``approve_restore`` on."""

    permission_classes = [capability(Cap.VIEW_PANEL)]
    serializer_class = TargetSerializer
    pagination_class = None

    def get_queryset(self):
        return visible_targets(self.request.user).prefetch_related("sanity_checks", "health_checks")


class TargetDetailView(RetrieveAPIView):
    """One target the caller may see (404 otherwise)."""

    permission_classes = [capability(Cap.VIEW_PANEL)]
    serializer_class = TargetSerializer

    @extend_schema(responses=TargetSerializer)
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_object(self):
        return access_target(self.request.user, self.kwargs["pk"])


urlpatterns = [
    path("targets", TargetListView.as_view(), name="target-list"),
    path("targets/<int:pk>", TargetDetailView.as_view(), name="target-detail"),
]
