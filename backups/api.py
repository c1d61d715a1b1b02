"""``/api/v1/`` endpoints of the backup catalog (systems, backups, artifacts, backup runs).

The serializers here describe the answers for the OpenAPI schema (the selectors build the
dicts) and validate what callers send: a refused value is a 400 naming it, never ignored.
"""

from django.shortcuts import get_object_or_404
from django.urls import path
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from backups import deletion, errors
from backups import runs as backup_runs
from backups.models import Artifact, ArtifactCopy, BackupRun, StorageLocation, System
from backups.schedules import policy_status
from backups.selectors import SORTS, artifact_json, artifact_rows, run_json
from drpanel.api import (
    PAGE_PARAMETERS,
    InputSerializer,
    PasswordField,
    StrictCharField,
    api_error,
    capability,
    page_schema,
    paginate,
    password_refusal,
    validated_body,
)
from drpanel.approvals import ApprovalError, approval_reject, open_approvals
from drpanel.passwords import PasswordError
from drpanel.permissions import Cap
from drpanel.schema import error_response


def system_json(system: System) -> dict:
    return {
        "id": system.pk, "name": system.name, "description": system.description,
        "schedule_enabled": system.schedule_enabled, "config_paths": system.config_paths,
        "worker_pool": system.worker_pool or None,
        "policy": [{"kind": p["kind"], "every_seconds": int(p["interval"].total_seconds()),
                    "newest_artifact": str(p["newest"].pk) if p["newest"] else None,
                    "newest_at": p["newest"].created_at.isoformat() if p["newest"] else None,
                    "within_policy": p["within_policy"]} for p in policy_status(system)],
    }


class PolicySerializer(serializers.Serializer):
    kind = serializers.ChoiceField(Artifact.Kind.choices)
    every_seconds = serializers.IntegerField()
    newest_artifact = serializers.UUIDField(allow_null=True)
    newest_at = serializers.DateTimeField(allow_null=True)
    within_policy = serializers.BooleanField()


class SystemSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    schedule_enabled = serializers.BooleanField()
    config_paths = serializers.ListField(child=serializers.CharField())
    worker_pool = serializers.CharField(allow_null=True, help_text="The worker pool that runs its jobs.")
    policy = PolicySerializer(many=True, help_text="Per scheduled kind: the interval and the newest good artifact.")


class StepSerializer(serializers.Serializer):
    name = serializers.CharField()
    state = serializers.ChoiceField(["running", "succeeded", "failed"])
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    bytes = serializers.IntegerField(allow_null=True)
    detail = serializers.CharField(allow_blank=True)


class BackupRunSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    system = serializers.CharField()
    kind = serializers.ChoiceField(Artifact.Kind.choices)
    state = serializers.ChoiceField(BackupRun.State.choices)
    trigger = serializers.ChoiceField(BackupRun.Trigger.choices)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    progress = serializers.IntegerField(min_value=0, max_value=100)
    bytes_done = serializers.IntegerField()
    steps = StepSerializer(many=True)
    error = serializers.CharField(allow_null=True)
    artifact = serializers.UUIDField(allow_null=True)
    worker_host = serializers.CharField(allow_null=True, help_text="The host whose worker ran it.")


# The kinds the panel makes itself (incrementals come from an external tool).
BACKUP_KINDS = [(Artifact.Kind.FULL.value, "full"), (Artifact.Kind.CONFIG.value, "config")]


class BackupRequestSerializer(InputSerializer):
    kind = serializers.ChoiceField(BACKUP_KINDS)


class CopySerializer(serializers.Serializer):
    location = serializers.CharField()
    role = serializers.ChoiceField(StorageLocation.Role.choices)
    status = serializers.ChoiceField(ArtifactCopy.Status.choices)
    size = serializers.IntegerField(allow_null=True)
    sha256 = serializers.CharField(allow_null=True)
    checked_at = serializers.DateTimeField(allow_null=True)


class VerificationSummarySerializer(serializers.Serializer):
    level = serializers.CharField()
    at = serializers.DateTimeField(allow_null=True)


class ArtifactSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    system = serializers.CharField()
    system_id = serializers.IntegerField()
    kind = serializers.ChoiceField(Artifact.Kind.choices)
    format = serializers.ChoiceField(Artifact.Format.choices)
    encryption = serializers.ChoiceField(Artifact.Encryption.choices)
    key_id = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    size = serializers.IntegerField(allow_null=True, help_text="Stored bytes.")
    sha256 = serializers.CharField(allow_blank=True, help_text="SHA-256 of the stored bytes.")
    plaintext_size = serializers.IntegerField(allow_null=True)
    plaintext_sha256 = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(Artifact.Status.choices, help_text=(
        "quarantined: found in storage, not restorable until an admin adopts it and it passes its verification."))
    source = serializers.ChoiceField(Artifact.Source.choices)
    quarantine = serializers.JSONField(allow_null=True, help_text=(
        "null unless quarantined: {reason}. After adoption: adopted_by/adopted_at are set."))
    adopted_by = serializers.CharField(allow_null=True)
    adopted_at = serializers.DateTimeField(allow_null=True)
    offsite_verified_at = serializers.DateTimeField(allow_null=True)
    copies = CopySerializer(many=True)
    last_verification = VerificationSummarySerializer(allow_null=True)


class ArtifactDetailSerializer(ArtifactSerializer):
    manifest = serializers.DictField(help_text="The manifest written next to the artifact.")


class ArtifactQuerySerializer(serializers.Serializer):
    """The artifact list's filters; an unknown value is refused rather than ignored."""

    system = serializers.IntegerField(required=False, help_text="System id.")
    kind = serializers.ChoiceField(Artifact.Kind.choices, required=False)
    status = serializers.ChoiceField(Artifact.Status.choices, required=False,
                                     help_text="Default: every status but deleted.")
    location = serializers.IntegerField(required=False, help_text="Storage location id holding a copy.")
    # "from" is a Python keyword: the class body's namespace takes it as a plain name.
    locals()["from"] = serializers.DateField(required=False, help_text="Created on or after this day.")
    to = serializers.DateField(required=False, help_text="Created on or before this day.")
    sort = serializers.ChoiceField(list(SORTS), required=False, help_text="Default -created (newest first).")

    def to_internal_value(self, data):
        # A form would treat "kind=" as "any kind"; the API refuses it like any other unknown value.
        empty = {name: ["may not be empty"] for name in self.fields if data.get(name) == ""}
        if empty:
            raise ValidationError(empty)
        return super().to_internal_value(data)


class SystemListView(APIView):
    """Protected systems with their policy status."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="systems_list", parameters=PAGE_PARAMETERS,
                   responses=page_schema("SystemList", SystemSerializer))
    def get(self, request):
        return paginate(request, System.objects.all(), system_json, order=("name", "pk"))


class SystemBackupView(APIView):
    """Start a backup of a system: 202 with the backup run (an identical queued run is returned as is)."""

    permission_classes = [capability(Cap.START_JOBS)]

    @extend_schema(operation_id="systems_backups_create", request=BackupRequestSerializer,
                   responses={202: BackupRunSerializer,
                              400: error_response(400, "Refused: an unknown kind, or a config backup of a system "
                                                       "without config paths.")})
    def post(self, request, pk: int):
        system = get_object_or_404(System, pk=pk)
        body = validated_body(request, BackupRequestSerializer)
        try:
            run = backup_runs.backup_request(actor=request.user, system=system, kind=body["kind"],
                                          trigger=BackupRun.Trigger.API, request=request)
        except errors.BackupError as exc:
            return api_error(status.HTTP_400_BAD_REQUEST, str(exc))
        return Response(run_json(run), status=status.HTTP_202_ACCEPTED)


class BackupRunView(APIView):
    """A backup run: state, progress (0-100), steps."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="backup_runs_retrieve", responses=BackupRunSerializer)
    def get(self, request, pk):
        run = get_object_or_404(BackupRun.objects.select_related("system"), pk=pk)
        return Response(run_json(run))


class ArtifactListView(APIView):
    """Artifacts, newest first (50 a page; ``sort`` changes the order); filters; ``cursor`` = ``next``."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="artifacts_list", parameters=[ArtifactQuerySerializer, *PAGE_PARAMETERS],
                   responses=page_schema("ArtifactPage", ArtifactSerializer))
    def get(self, request):
        query = ArtifactQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows, order = artifact_rows(request.query_params)
        return paginate(request, rows, artifact_json, order=order)


class ArtifactDetailView(APIView):
    """One artifact with its copies and manifest."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="artifacts_retrieve", responses=ArtifactDetailSerializer)
    def get(self, request, pk):
        artifact = get_object_or_404(Artifact.objects.select_related("system").prefetch_related("copies__location"),
                                     pk=pk)
        return Response(artifact_json(artifact, with_manifest=True))


# --- deletion: asked by one person, approved by a manager with their password -------------------

def deletion_json(artifact: Artifact) -> dict:
    approval = open_approvals(artifact, deletion.DELETE_APPROVAL).first()
    return {"artifact": str(artifact.pk), "status": artifact.status,
            "approval": {"id": approval.pk, "state": approval.state, "reason": approval.reason,
                         "requested_by": approval.requested_by.get_username() if approval.requested_by else None,
                         "expires_at": approval.expires_at.isoformat()} if approval else None}


DeletionAnswer = inline_serializer("ArtifactDeletion", {
    "artifact": serializers.UUIDField(), "status": serializers.ChoiceField(Artifact.Status.choices),
    "approval": serializers.DictField(allow_null=True, help_text="The open deletion request, if any.")})
DELETION_CONFLICT = error_response(409, "Refused: the artifact is already deleted, a deletion is already asked for, "
                                        "there is no open request, it expired, or a restore of its system runs.")


class DeletionRequestSerializer(InputSerializer):
    reason = StrictCharField(max_length=500, help_text="Why this artifact should be deleted.")


class DeletionApproveSerializer(InputSerializer):
    password = PasswordField()


class DeletionRejectSerializer(InputSerializer):
    note = StrictCharField(required=False, allow_blank=True, max_length=500)


def _deletion_error(exc: Exception) -> Response:
    if isinstance(exc, PasswordError):
        return password_refusal(exc)
    return api_error(status.HTTP_409_CONFLICT, str(exc))


def _open_request(artifact: Artifact):
    approval = open_approvals(artifact, deletion.DELETE_APPROVAL).first()
    if approval is None:
        raise ValidationError({"artifact": ["no deletion of this artifact is waiting for approval"]})
    return approval


class ArtifactDeletionView(APIView):
    """``GET``: the artifact's open deletion request. ``POST`` ``{"reason"}``: ask for its deletion from
    every location (operators, managers, admins); nothing is deleted until a manager approves."""

    def get_permissions(self):
        return [capability(Cap.START_JOBS if self.request.method == "POST" else Cap.VIEW_PANEL)()]

    @extend_schema(operation_id="artifacts_deletion_retrieve", responses=DeletionAnswer)
    def get(self, request, pk):
        return Response(deletion_json(get_object_or_404(Artifact, pk=pk)))

    @extend_schema(operation_id="artifacts_deletion_request", request=DeletionRequestSerializer,
                   responses={202: DeletionAnswer, 409: DELETION_CONFLICT})
    def post(self, request, pk):
        artifact = get_object_or_404(Artifact, pk=pk)
        body = validated_body(request, DeletionRequestSerializer)
        try:
            deletion.artifact_delete_request(actor=request.user, artifact=artifact, reason=body["reason"],
                                             request=request)
        except (errors.BackupError, ApprovalError) as exc:
            return _deletion_error(exc)
        return Response(deletion_json(artifact), status=status.HTTP_202_ACCEPTED)


class ArtifactDeletionApproveView(APIView):
    """A manager other than the requester approves with their password: the artifact is deleted now."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="artifacts_deletion_approve", request=DeletionApproveSerializer,
                   responses={200: DeletionAnswer, 409: DELETION_CONFLICT})
    def post(self, request, pk):
        artifact = get_object_or_404(Artifact, pk=pk)
        body = validated_body(request, DeletionApproveSerializer)
        approval = _open_request(artifact)
        try:
            deletion.artifact_delete_approve(actor=request.user, approval=approval, password=body["password"],
                                             request=request)
        except (errors.BackupError, ApprovalError, PasswordError) as exc:
            return _deletion_error(exc)
        artifact.refresh_from_db()
        return Response(deletion_json(artifact))


class ArtifactDeletionRejectView(APIView):
    """A manager rejects, or the requester withdraws, the open deletion request ``{"note"?}``."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="artifacts_deletion_reject", request=DeletionRejectSerializer,
                   responses={200: DeletionAnswer, 409: DELETION_CONFLICT})
    def post(self, request, pk):
        artifact = get_object_or_404(Artifact, pk=pk)
        body = validated_body(request, DeletionRejectSerializer)
        approval = _open_request(artifact)
        try:
            approval_reject(actor=request.user, approval=approval, may_approve=deletion.may_approve_deletion,
                            note=body.get("note", ""), request=request)
        except ApprovalError as exc:
            return _deletion_error(exc)
        return Response(deletion_json(artifact))


urlpatterns = [
    path("systems", SystemListView.as_view(), name="system-list"),
    path("systems/<int:pk>/backups", SystemBackupView.as_view(), name="system-backup"),
    path("backup-runs/<uuid:pk>", BackupRunView.as_view(), name="backup-run"),
    path("artifacts", ArtifactListView.as_view(), name="artifact-list"),
    path("artifacts/<uuid:pk>", ArtifactDetailView.as_view(), name="artifact-detail"),
    path("artifacts/<uuid:pk>/deletion", ArtifactDeletionView.as_view(), name="artifact-deletion"),
    path("artifacts/<uuid:pk>/deletion/approve", ArtifactDeletionApproveView.as_view(),
         name="artifact-deletion-approve"),
    path("artifacts/<uuid:pk>/deletion/reject", ArtifactDeletionRejectView.as_view(), name="artifact-deletion-reject"),
]
