"""``/api/v1/`` endpoints of the backup catalog (systems, backups, artifacts, backup runs)."""

from django.shortcuts import get_object_or_404
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from backups import services
from backups.models import Artifact, BackupRun, System
from backups.schedules import policy_status
from backups.selectors import artifact_json, artifact_page, run_json
from drpanel.api import capability
from drpanel.permissions import Cap


def json_list():
    return serializers.ListField(child=serializers.JSONField())


def system_json(system: System) -> dict:
    return {
        "id": system.pk, "name": system.name, "description": system.description,
        "schedule_enabled": system.schedule_enabled, "config_paths": system.config_paths,
        "policy": [{"kind": p["kind"], "every_seconds": int(p["interval"].total_seconds()),
                    "newest_artifact": str(p["newest"].pk) if p["newest"] else None,
                    "newest_at": p["newest"].created_at.isoformat() if p["newest"] else None,
                    "within_policy": p["within_policy"]} for p in policy_status(system)],
    }


class SystemListView(APIView):
    """Protected systems with their policy status."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="systems_list", responses=inline_serializer("SystemList", {"results": json_list()}))
    def get(self, request):
        return Response({"results": [system_json(s) for s in System.objects.all()]})


class SystemBackupView(APIView):
    """Start a backup of a system: 202 with the backup run (an identical queued run is returned as is)."""

    permission_classes = [capability(Cap.START_JOBS)]

    @extend_schema(operation_id="systems_backups_create",
                   request=inline_serializer("BackupRequest", {"kind": serializers.ChoiceField(["full", "config"])}),
                   responses={202: inline_serializer("BackupRun", {"id": serializers.UUIDField(),
                                                                   "state": serializers.CharField()})})
    def post(self, request, pk: int):
        system = get_object_or_404(System, pk=pk)
        try:
            run = services.backup_request(actor=request.user, system=system, kind=str(request.data.get("kind", "")),
                                          trigger=BackupRun.Trigger.API, request=request)
        except services.BackupError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(run_json(run), status=status.HTTP_202_ACCEPTED)


class BackupRunView(APIView):
    """A backup run: state, progress (0-100), steps."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="backup_runs_retrieve",
                   responses=inline_serializer("BackupRunDetail", {"id": serializers.UUIDField(),
                                                                   "state": serializers.CharField(),
                                                                   "progress": serializers.IntegerField()}))
    def get(self, request, pk):
        run = get_object_or_404(BackupRun.objects.select_related("system"), pk=pk)
        return Response(run_json(run))


class ArtifactListView(APIView):
    """Artifacts, newest first; filters ``system`` (id), ``kind``, ``status``; ``cursor`` for the next page."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="artifacts_list", parameters=[OpenApiParameter(n, str, required=False) for n in (
        "system", "kind", "status", "location", "from", "to", "sort", "cursor")],
        responses=inline_serializer("ArtifactList", {"results": json_list(),
                                                     "next": serializers.CharField(allow_null=True)}))
    def get(self, request):
        page = artifact_page(request.query_params)
        return Response({"results": [artifact_json(a) for a in page.artifacts], "next": page.next_cursor})


class ArtifactDetailView(APIView):
    """One artifact with its copies and manifest."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="artifacts_retrieve",
                   responses=inline_serializer("ArtifactDetail", {"id": serializers.UUIDField(),
                                                                  "copies": json_list()}))
    def get(self, request, pk):
        artifact = get_object_or_404(Artifact.objects.select_related("system").prefetch_related("copies__location"),
                                     pk=pk)
        return Response(artifact_json(artifact, with_manifest=True))


urlpatterns = [
    path("systems", SystemListView.as_view(), name="system-list"),
    path("systems/<int:pk>/backups", SystemBackupView.as_view(), name="system-backup"),
    path("backup-runs/<uuid:pk>", BackupRunView.as_view(), name="backup-run"),
    path("artifacts", ArtifactListView.as_view(), name="artifact-list"),
    path("artifacts/<uuid:pk>", ArtifactDetailView.as_view(), name="artifact-detail"),
]
