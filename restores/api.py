"""``/api/v1/`` endpoints of verifications, targets and restores (DESIGN.md's interfaces table).

Same services, permissions and audit events as the pages. Refusals answer with a reason:
403 (no right, self-approval, wrong password; audited), 409 (the run or its target is not
in a state that allows it), 400 (bad input), 404 (missing, or a target you may not see).
"""

from datetime import datetime

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.generics import RetrieveAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from backups.models import Artifact, StorageLocation, System
from drpanel import runs
from drpanel.api import (
    PAGE_PARAMETERS,
    InputSerializer,
    NoBody,
    PasswordField,
    StrictBooleanField,
    StrictCharField,
    StrictUUIDField,
    api_error,
    capability,
    page_schema,
    paginate,
    password_refusal,
    validated_body,
)
from drpanel.models import Approval
from drpanel.passwords import PasswordError
from drpanel.permissions import Cap, require_cap
from drpanel.schema import error_response
from restores import adoption, cancel, recovery_checks, requests, rollback, runstate, targets, verifications
from restores.execution import RESTORE_RUNS
from restores.models import (
    ALL_LEVELS,
    BASE_LEVELS,
    LEVELS,
    TARGET_RIGHTS,
    HealthCheck,
    RecoveryCheck,
    RestoreRun,
    SanityCheck,
    Target,
    VerificationRun,
)
from restores.pitr import RecoveryPoint
from restores.selectors import access_run, access_target, access_verification, rights_of, visible_runs, visible_targets


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
    system = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    sanity_checks = SanityCheckSerializer(many=True)
    health_checks = HealthCheckSerializer(many=True)
    your_rights = serializers.SerializerMethodField()

    class Meta:
        model = Target
        fields = ["id", "name", "environment", "kind", "description", "is_active", "database", "config_dir",
                  "health_check_hosts", "system", "worker_pool", "server_data_dir", "server_port", "server_user",
                  "sanity_checks", "health_checks", "your_rights", "updated_at"]

    def get_your_rights(self, target) -> list[str]:
        return rights_of(self.context["request"].user, target)


class TargetListView(APIView):
    """Targets the caller may see, by name: every target for admins, auditors and managers; otherwise
    those the caller holds ``restore_to_target`` or ``approve_restore`` on."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="targets_list", parameters=PAGE_PARAMETERS,
                   responses=page_schema("TargetList", TargetSerializer))
    def get(self, request):
        rows = visible_targets(request.user).select_related("system").prefetch_related("sanity_checks",
                                                                                       "health_checks")
        context = {"request": request}
        return paginate(request, rows, lambda target: TargetSerializer(target, context=context).data,
                        order=("name", "pk"))


class TargetDetailView(RetrieveAPIView):
    """One target the caller may see (404 otherwise)."""

    permission_classes = [capability(Cap.VIEW_PANEL)]
    serializer_class = TargetSerializer

    @extend_schema(responses=TargetSerializer)
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_object(self):
        return access_target(self.request.user, self.kwargs["pk"])


# --- verifications ---------------------------------------------------------------------------


def verification_json(run: VerificationRun) -> dict:
    return {
        "id": str(run.pk), "artifact": str(run.artifact_id), "level": run.level, "state": run.state,
        "reached_level": run.reached_level or None, "trigger": run.trigger, "location": run.location or None,
        "requested_by": run.requested_by.get_username() if run.requested_by else None,
        "created_at": run.created_at.isoformat(), "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at), "progress": run.percent, "error": run.error or None,
        "worker_host": run.worker_host or None,
        "results": [{"level": r["name"], "state": r["state"], "started_at": r.get("started_at"),
                     "finished_at": r.get("finished_at"), "duration_ms": r.get("duration_ms"), "bytes": r.get("bytes"),
                     "detail": r.get("detail", ""), "data": r.get("data")} for r in run.results],
    }


def _iso(value):
    return value.isoformat() if value else None


def _json_list():
    return serializers.ListField(child=serializers.JSONField())


VerificationSchema = inline_serializer("Verification", {
    "id": serializers.UUIDField(), "artifact": serializers.UUIDField(), "level": serializers.CharField(),
    "state": serializers.CharField(), "reached_level": serializers.CharField(allow_null=True),
    "progress": serializers.IntegerField(), "results": _json_list(), "error": serializers.CharField(allow_null=True),
    "worker_host": serializers.CharField(allow_null=True)})
RestoreStateSchema = inline_serializer("RestoreState", {"id": serializers.UUIDField(),
                                                        "state": serializers.CharField()})
RestoreSchema = inline_serializer("Restore", {
    "id": serializers.UUIDField(), "state": serializers.CharField(), "target": serializers.CharField(),
    "mode": serializers.CharField(), "artifact": serializers.UUIDField(allow_null=True),
    "recovery_point": serializers.JSONField(allow_null=True), "server": serializers.JSONField(allow_null=True),
    "progress": serializers.IntegerField(),
    "eta_seconds": serializers.IntegerField(allow_null=True), "steps": _json_list(),
    "rto_seconds": serializers.FloatField(allow_null=True), "rpo_seconds": serializers.FloatField(allow_null=True),
    "approval": serializers.JSONField(allow_null=True), "rollback": serializers.JSONField(),
    "checklist": _json_list(), "error": serializers.CharField(allow_null=True),
    "worker_pool": serializers.CharField(allow_null=True), "worker_host": serializers.CharField(allow_null=True),
    "waiting": serializers.CharField(allow_null=True)})


class VerificationRequestSerializer(InputSerializer):
    level = serializers.ChoiceField(ALL_LEVELS, error_messages={
        "invalid_choice": f"unknown level {{input}}; the levels are {', '.join(LEVELS)} (of a base backup: "
                          f"{', '.join(BASE_LEVELS)})"})


class ArtifactVerificationView(APIView):
    """``GET``: the artifact's verification runs, newest first.

    ``POST``: start a verification up to a level: 202 with the run (one already queued is returned)."""

    def get_permissions(self):
        return [capability(Cap.START_JOBS if self.request.method == "POST" else Cap.VIEW_PANEL)()]

    @extend_schema(operation_id="artifacts_verifications_list", parameters=PAGE_PARAMETERS,
                   responses=page_schema("VerificationList", VerificationSchema))
    def get(self, request, pk):
        artifact = get_object_or_404(Artifact, pk=pk)
        rows = VerificationRun.objects.filter(artifact=artifact).select_related("requested_by")
        return paginate(request, rows, verification_json, order=("-created_at", "-pk"))

    @extend_schema(operation_id="artifacts_verifications_create", request=VerificationRequestSerializer,
                   responses={202: VerificationSchema})
    def post(self, request, pk):
        artifact = Artifact.objects.select_related("system").filter(pk=pk).first()
        if artifact is None:
            return api_error(status.HTTP_404_NOT_FOUND, "No such artifact.")
        body = validated_body(request, VerificationRequestSerializer)
        try:
            run = verifications.verification_request(actor=request.user, artifact=artifact, level=body["level"],
                                                     trigger=VerificationRun.Trigger.API, request=request)
        except verifications.VerificationError as exc:
            return api_error(status.HTTP_400_BAD_REQUEST, str(exc))
        return Response(verification_json(run), status=status.HTTP_202_ACCEPTED)


AdoptionSchema = inline_serializer("Adoption", {
    "artifact": serializers.UUIDField(), "status": serializers.CharField(),
    "quarantine": serializers.JSONField(allow_null=True), "verification": VerificationSchema})


class ArtifactAdoptView(APIView):
    """Adopt a quarantined artifact found in storage (admins): 202 with its verification up to ``structure``.

    The artifact stays quarantined until that verification passes. 403 for anyone else (audited),
    409 when the artifact is not quarantined."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="artifacts_adopt", request=None,
                   responses={202: AdoptionSchema, 403: error_response(403), 409: error_response(409)})
    def post(self, request, pk):
        artifact = get_object_or_404(Artifact.objects.select_related("system"), pk=pk)
        validated_body(request, NoBody)
        try:
            run = adoption.artifact_adopt(actor=request.user, artifact=artifact, request=request)
        except adoption.AdoptionError as exc:
            return api_error(status.HTTP_409_CONFLICT, str(exc))
        return Response({"artifact": str(artifact.pk), "status": artifact.status,
                         "quarantine": {"reason": artifact.quarantine_reason} if artifact.is_quarantined else None,
                         "verification": verification_json(run)}, status=status.HTTP_202_ACCEPTED)


class VerificationView(APIView):
    """A verification run: its state and per-level results."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="verifications_retrieve", responses=VerificationSchema)
    def get(self, request, pk):
        return Response(verification_json(access_verification(request.user, pk)))


# --- restores ------------------------------------------------------------------------------------


def restore_json(run: RestoreRun) -> dict:
    """A restore run as the API shows it: ``state, progress (0-100), steps[…], rto_seconds, rpo_seconds`` and more."""
    approval = run.approval
    blocker = rollback.rollback_blocker(run) if run.swapped_at else "not swapped in"
    return {
        "id": str(run.pk), "state": run.state, "target": run.target.name, "target_id": run.target_id,
        "environment": run.target.environment, "mode": run.mode,
        "artifact": str(run.artifact_id) if run.artifact_id else None,
        "recovery_point": {"system": run.recovery_system.name, "kind": run.recovery_kind,
                           "time": _iso(run.recovery_time), "name": run.recovery_name or None,
                           "recovered": (run.results or {}).get("recovery"),
                           "replay": (run.results or {}).get("replay"),
                           "source": {"kind": "offsite" if run.recovery_location_id else "barman",
                                      "location": run.recovery_location.name if run.recovery_location_id else None,
                                      "label": run.recovery_source}} if run.is_point_in_time else None,
        "server": (run.results or {}).get("server") if run.is_whole_server else None,
        "config_artifact": str(run.config_artifact_id) if run.config_artifact_id else None,
        "drill": run.is_drill, "reason": run.reason, "requested_by": run.requested_by.get_username(),
        "created_at": run.created_at.isoformat(), "queued_at": _iso(run.queued_at), "started_at": _iso(run.started_at),
        "swapped_at": _iso(run.swapped_at), "healthy_at": _iso(run.healthy_at), "finished_at": _iso(run.finished_at),
        "progress": run.percent, "eta_seconds": run.eta_seconds, "plan": run.plan or None,
        "steps": [{k: step.get(k) for k in ("name", "state", "started_at", "finished_at", "duration_ms", "bytes",
                                            "detail")} for step in run.steps],
        "rto_seconds": run.rto_seconds, "rpo_seconds": run.rpo_seconds, "error": run.error or None,
        "worker_pool": RESTORE_RUNS.pool_for(run.pk) or None, "worker_host": run.worker_host or None,
        "waiting": runs.pool_waiting(RESTORE_RUNS, run) or None,
        "approval": {"state": approval.state, "expires_at": approval.expires_at.isoformat(),
                     "approved_by": approval.decided_by.get_username() if approval.decided_by else None,
                     "decided_at": _iso(approval.decided_at), "binding_hash": approval.binding_hash}
        if approval else None,
        "rollback": {"until": _iso(run.rollback_until), "available": blocker is None, "blocked_because": blocker,
                     "rolled_back_at": _iso(run.rolled_back_at), "seconds": run.rollback_seconds,
                     "rolled_back_by": run.rolled_back_by.get_username() if run.rolled_back_by else None},
        "checklist": [{"code": c.code, "title": c.title, "automatic": c.automatic, "status": c.status,
                       "summary": c.summary, "evidence": c.evidence, "note": c.note,
                       "ticked_by": c.ticked_by.get_username() if c.ticked_by else None}
                      for c in run.recovery_checks.all()],
    }


def _error(exc: Exception) -> Response:
    if isinstance(exc, PasswordError):
        return password_refusal(exc)
    code = status.HTTP_409_CONFLICT if isinstance(exc, runstate.RestoreConflict) else status.HTTP_400_BAD_REQUEST
    return api_error(code, str(exc))


def _state(run: RestoreRun, code=status.HTTP_200_OK) -> Response:
    run.refresh_from_db()
    return Response({"id": str(run.pk), "state": run.state, **({"rollback_seconds": run.rollback_seconds}
                                                                 if run.rolled_back_at else {})}, status=code)


@extend_schema_field({"oneOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]})
class TargetNameOrIdField(serializers.Field):
    """A target by its name (text) or its id (a JSON integer, or digits as text); nothing else."""

    default_error_messages = {"invalid": "a target's name or id"}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, str | int) or data == "":
            self.fail("invalid")
        return str(data)


class RecoveryPointSerializer(InputSerializer):
    """Exactly one of ``{"latest": true}``, ``{"time": ISO-8601 with its offset}``, ``{"name": restore point}``."""

    latest = StrictBooleanField(required=False, help_text="true: the latest WAL received")
    time = StrictCharField(required=False, help_text="ISO-8601 with its offset, e.g. 2026-12-03T17:05:00+01:00")
    name = StrictCharField(required=False, help_text="a named restore point (pg_create_restore_point)")

    def validate(self, attrs):
        given = [key for key in ("latest", "time", "name") if key in attrs]
        if len(given) != 1:
            raise ValidationError("exactly one of latest, time or name")
        try:
            if given == ["latest"]:
                if attrs["latest"] is not True:
                    raise ValidationError({"latest": ["true, or give a time or a name instead"]})
                return RecoveryPoint.latest()
            if given == ["name"]:
                return RecoveryPoint.named(attrs["name"])
            moment = datetime.fromisoformat(attrs["time"])
        except ValueError as exc:
            raise ValidationError({given[0]: [str(exc) if given == ["name"] else
                                              "an ISO-8601 date and time with its offset"]}) from None
        if moment.tzinfo is None:
            raise ValidationError({"time": ["give its offset (e.g. +00:00): a time without a zone is ambiguous"]})
        if moment > timezone.now():
            raise ValidationError({"time": ["in the future: nothing to recover yet"]})
        return RecoveryPoint.at(moment)


class RestoreRequestSerializer(InputSerializer):
    artifact = StrictUUIDField(required=False,
                               error_messages={"invalid": "No such artifact: {value} is not an artifact id."})
    system = StrictCharField(required=False, help_text="the system's name (with recovery_point)")
    recovery_point = RecoveryPointSerializer(required=False)
    offsite_location = StrictCharField(required=False, help_text="with recovery_point: recover from the off-site "
                                       "copy at this storage location (its name) instead of Barman's home")
    target = TargetNameOrIdField(help_text="name or id")
    mode = serializers.ChoiceField(RestoreRun.Mode.values)
    confirm = StrictCharField(allow_blank=True, trim_whitespace=False, help_text="the target's name, typed")
    drill = StrictBooleanField(required=False, default=False, help_text="true or false (a JSON boolean)")
    reason = StrictCharField(required=False, allow_blank=True, default="")

    def validate(self, attrs):
        if ("artifact" in attrs) == ("recovery_point" in attrs):
            field = "recovery_point" if "artifact" in attrs else "artifact"
            raise ValidationError({field: ["give exactly one of artifact or recovery_point"]})
        if "recovery_point" in attrs and attrs["mode"] not in (RestoreRun.Mode.DATABASE, RestoreRun.Mode.SERVER):
            raise ValidationError({"mode": ["a point-in-time restore is database-only or whole-server"]})
        if "artifact" in attrs and attrs["mode"] == RestoreRun.Mode.SERVER:
            raise ValidationError({"mode": ["a whole-server restore takes a recovery_point, not an artifact"]})
        if "recovery_point" in attrs and "system" not in attrs:
            raise ValidationError({"system": ["a recovery point needs the system's name"]})
        if "artifact" in attrs and "system" in attrs:
            raise ValidationError({"system": ["an artifact names its system: give system only with recovery_point"]})
        if "offsite_location" in attrs and "recovery_point" not in attrs:
            raise ValidationError({"offsite_location": ["an off-site copy recovers a recovery_point, not an artifact"]})
        return attrs


class ApproveSerializer(InputSerializer):
    password = PasswordField()
    note = StrictCharField(required=False, allow_blank=True, default="")


class RejectSerializer(InputSerializer):
    note = StrictCharField(required=False, allow_blank=True, default="")


class RollbackSerializer(InputSerializer):
    password = PasswordField()


class RecoveryCheckTickSerializer(InputSerializer):
    note = StrictCharField(help_text="What was checked.")


class RestoreListView(APIView):
    """``GET``: restore runs into the targets the caller may see (``?state=``, ``?target=``), newest first.

    ``POST`` ``{"artifact", "target", "mode", "confirm"}`` (optionally ``drill``, ``reason``): 201 ``{id, state}``;
    or, instead of ``artifact``, ``"system"`` and ``"recovery_point"``: ``{"latest": true}``, ``{"time": ISO-8601
    with offset}`` or ``{"name": "…"}`` (a point-in-time restore, database-only).
    """

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="restores_list", parameters=[
        OpenApiParameter("state", str, enum=list(RestoreRun.State.values), required=False),
        OpenApiParameter("target", {"type": "string", "minLength": 1}, required=False, description="target name"),
        *PAGE_PARAMETERS], responses=page_schema("RestoreList", RestoreSchema))
    def get(self, request):
        rows = visible_runs(request.user)
        state = request.query_params.get("state")
        if state is not None:  # an unknown state is refused, not read as "any state"
            if state not in RestoreRun.State.values:
                raise ValidationError({"state": [f"one of {', '.join(RestoreRun.State.values)}"]})
            rows = rows.filter(state=state)
        if "target" in request.query_params:
            if not request.query_params["target"]:
                raise ValidationError({"target": ["may not be empty"]})
            rows = rows.filter(target__name=request.query_params["target"])
        return paginate(request, rows.prefetch_related("recovery_checks__ticked_by"), restore_json,
                        order=("-created_at", "-pk"))

    @extend_schema(operation_id="restores_create", request=RestoreRequestSerializer,
                   responses={201: RestoreStateSchema, 409: error_response(409)})
    def post(self, request):
        require_cap(request.user, Cap.START_JOBS, action="restore.request")
        data = validated_body(request, RestoreRequestSerializer)
        artifact = system = location = None
        if "artifact" in data:
            artifact = Artifact.objects.select_related("system").filter(pk=data["artifact"]).first()
            if artifact is None:
                raise ValidationError({"artifact": ["No such artifact."]})
        else:
            system = System.objects.filter(name=data["system"]).first()
            if system is None:
                raise ValidationError({"system": ["No such system."]})
            if "offsite_location" in data:
                location = StorageLocation.objects.filter(name=data["offsite_location"]).first()
                if location is None:
                    raise ValidationError({"offsite_location": ["No such storage location."]})
        wanted = data["target"]
        target = visible_targets(request.user).filter(name=wanted).first() or (
            visible_targets(request.user).filter(pk=int(wanted)).first() if wanted.isdigit() else None)
        if target is None:
            raise ValidationError({"target": ["No such target (among those you may see)."]})
        try:
            if system is not None:
                run = requests.restore_request_point(
                    actor=request.user, system=system, point=data["recovery_point"], target=target, mode=data["mode"],
                    confirm=data["confirm"], is_drill=data["drill"], reason=data["reason"],
                    trigger=RestoreRun.Trigger.API, request=request, location=location)
                return _state(run, status.HTTP_201_CREATED)
            run = requests.restore_request(actor=request.user, artifact=artifact, target=target, mode=data["mode"],
                                       confirm=data["confirm"], is_drill=data["drill"], reason=data["reason"],
                                       trigger=RestoreRun.Trigger.API, request=request)
        except runstate.RestoreError as exc:
            return _error(exc)
        return _state(run, status.HTTP_201_CREATED)


class RestoreDetailView(APIView):
    """One restore run (404 when its target is not one the caller may see)."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="restores_retrieve", responses=RestoreSchema)
    def get(self, request, pk):
        return Response(restore_json(access_run(request.user, pk)))


class RestoreApproveView(APIView):
    """Approve a production restore ``{"password", "note"?}``: the new state, or 403/409 with a reason."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="restores_approve", request=ApproveSerializer,
                   responses={200: RestoreStateSchema, 409: error_response(409)})
    def post(self, request, pk):
        run = access_run(request.user, pk)
        body = validated_body(request, ApproveSerializer)
        try:
            requests.restore_approve(actor=request.user, run=run, password=body["password"], note=body["note"],
                                 request=request)
        except (runstate.RestoreError, PasswordError) as exc:
            return _error(exc)
        return _state(run)


class RestoreRejectView(APIView):
    """Reject (an approver) or withdraw (the requester) a restore awaiting approval ``{"note"?}``; final."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="restores_reject", request=RejectSerializer,
                   responses={200: RestoreStateSchema, 409: error_response(409)})
    def post(self, request, pk):
        run = access_run(request.user, pk)
        body = validated_body(request, RejectSerializer)
        try:
            requests.restore_reject(actor=request.user, run=run, note=body["note"], request=request)
        except runstate.RestoreError as exc:
            return _error(exc)
        return _state(run)


class RestoreRollbackView(APIView):
    """Roll a restore back within its window ``{"password"}``: the new state, or 403/409 with a reason."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="restores_rollback", request=RollbackSerializer,
                   responses={200: RestoreStateSchema, 409: error_response(409)})
    def post(self, request, pk):
        run = access_run(request.user, pk)
        body = validated_body(request, RollbackSerializer)
        try:
            rollback.restore_rollback(actor=request.user, run=run, password=body["password"], request=request)
        except (runstate.RestoreError, PasswordError) as exc:
            return _error(exc)
        return _state(run)


class RestoreCancelView(APIView):
    """Cancel a queued or running restore before its swap (its requester, or a manager): the new state, or
    403/409 with a reason (after the swap, roll back instead)."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="restores_cancel", request=None,
                   responses={200: RestoreStateSchema, 409: error_response(409)})
    def post(self, request, pk):
        run = access_run(request.user, pk)
        validated_body(request)
        try:
            cancel.restore_cancel(actor=request.user, run=run, request=request)
        except runstate.RestoreError as exc:
            return _error(exc)
        return _state(run)


class VerificationCancelView(APIView):
    """Cancel a queued or running verification (its requester, or a manager): the run, or 403/409 with a reason."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="verifications_cancel", request=None,
                   responses={200: VerificationSchema, 409: error_response(409)})
    def post(self, request, pk):
        run = access_verification(request.user, pk)
        validated_body(request)
        try:
            run = cancel.verification_cancel(actor=request.user, run=run, request=request)
        except runstate.RestoreError as exc:
            return _error(exc)
        return Response(verification_json(run))


class RecoveryCheckTickView(APIView):
    """Tick an item of a restore's post-recovery checklist with a note (operators, managers).

    Items the panel decides from evidence (passed / failed) cannot be ticked over: 409."""

    permission_classes = [capability(Cap.TICK_CHECKLISTS)]

    @extend_schema(operation_id="restores_checklist_tick", request=RecoveryCheckTickSerializer,
        responses={200: inline_serializer("RecoveryCheckAnswer", {"code": serializers.CharField(),
                                                                  "status": serializers.CharField(),
                                                                  "ticked_by": serializers.CharField()}),
                   409: error_response(409)})
    def post(self, request, pk, check_pk: int):
        run = access_run(request.user, pk)
        check = get_object_or_404(RecoveryCheck, pk=check_pk, run=run)
        body = validated_body(request, RecoveryCheckTickSerializer)
        try:
            check = recovery_checks.recovery_check_tick(actor=request.user, check=check, note=body["note"],
                                                        request=request)
        except runstate.RestoreError as exc:
            return _error(exc)
        return Response({"code": check.code, "status": check.status, "ticked_by": check.ticked_by.get_username()})


class RecoveryChecksRefreshView(APIView):
    """Check the automatic post-recovery items again (connectivity, health URLs, backups re-enabled)."""

    permission_classes = [capability(Cap.TICK_CHECKLISTS)]

    @extend_schema(operation_id="restores_checklist_refresh", request=None, responses=RestoreSchema)
    def post(self, request, pk):
        run = access_run(request.user, pk)
        validated_body(request, NoBody)
        recovery_checks.recovery_checks_refresh(run, actor=request.user, request=request)
        return Response(restore_json(access_run(request.user, pk)))


class TargetRightSerializer(InputSerializer):
    user = StrictCharField(max_length=150, help_text="username")
    right = serializers.ChoiceField(list(TARGET_RIGHTS))


TargetRightAnswer = inline_serializer("TargetRightAnswer", {
    "target": serializers.CharField(), "user": serializers.CharField(), "right": serializers.CharField(),
    "changed": serializers.BooleanField(help_text="False when the user already held (or did not hold) it."),
    "rights": serializers.ListField(child=serializers.CharField()),
    "approval": serializers.IntegerField(allow_null=True, help_text="Granting approve_restore waits for a second "
                                         "person (202): the pending approval's id.")})


class _TargetRightChange(APIView):
    """Grant or revoke one right on a target (admins; audited by the service)."""

    permission_classes = [capability(Cap.MANAGE_PANEL)]
    service = None

    def post(self, request, pk: int):
        target = get_object_or_404(Target, pk=pk)
        body = validated_body(request, TargetRightSerializer)
        user = get_user_model().objects.filter(username=body["user"]).first()
        if user is None:
            raise ValidationError({"user": ["no such user"]})
        right = body["right"]
        try:
            changed = type(self).service(actor=request.user, target=target, user=user, right=right, request=request)
        except DjangoValidationError as exc:
            raise ValidationError({"user": exc.messages}) from None
        # Granting approve_restore waits for a second person: 202 with the pending approval.
        waiting = changed if isinstance(changed, Approval) else None
        return Response({"target": target.name, "user": user.get_username(), "right": right,
                         "changed": False if waiting else changed, "rights": rights_of(user, target),
                         "approval": waiting.pk if waiting else None}, status=202 if waiting else 200)


class TargetRightGrantView(_TargetRightChange):
    """Give a user a right on a target: ``restore_to_target`` (operators, managers, admins) or
    ``approve_restore`` (managers; 202: it waits for another Manager's or Admin's approval)."""

    service = targets.target_right_grant

    @extend_schema(operation_id="targets_rights_grant", request=TargetRightSerializer,
                   responses={200: TargetRightAnswer, 202: TargetRightAnswer})
    def post(self, request, pk: int):
        return super().post(request, pk)


class TargetRightRevokeView(_TargetRightChange):
    """Take a right on a target away from a user."""

    service = targets.target_right_revoke

    @extend_schema(operation_id="targets_rights_revoke", request=TargetRightSerializer, responses=TargetRightAnswer)
    def post(self, request, pk: int):
        return super().post(request, pk)


urlpatterns = [
    path("targets", TargetListView.as_view(), name="target-list"),
    path("targets/<int:pk>", TargetDetailView.as_view(), name="target-detail"),
    path("targets/<int:pk>/rights/grant", TargetRightGrantView.as_view(), name="target-right-grant"),
    path("targets/<int:pk>/rights/revoke", TargetRightRevokeView.as_view(), name="target-right-revoke"),
    path("artifacts/<uuid:pk>/verifications", ArtifactVerificationView.as_view(), name="artifact-verifications"),
    path("artifacts/<uuid:pk>/adopt", ArtifactAdoptView.as_view(), name="artifact-adopt"),
    path("verifications/<uuid:pk>", VerificationView.as_view(), name="verification-detail"),
    path("verifications/<uuid:pk>/cancel", VerificationCancelView.as_view(), name="verification-cancel"),
    path("restores", RestoreListView.as_view(), name="restore-list"),
    path("restores/<uuid:pk>", RestoreDetailView.as_view(), name="restore-detail"),
    path("restores/<uuid:pk>/approve", RestoreApproveView.as_view(), name="restore-approve"),
    path("restores/<uuid:pk>/reject", RestoreRejectView.as_view(), name="restore-reject"),
    path("restores/<uuid:pk>/rollback", RestoreRollbackView.as_view(), name="restore-rollback"),
    path("restores/<uuid:pk>/cancel", RestoreCancelView.as_view(), name="restore-cancel"),
    path("restores/<uuid:pk>/checklist/refresh", RecoveryChecksRefreshView.as_view(),
         name="restore-checklist-refresh"),
    path("restores/<uuid:pk>/checklist/<int:check_pk>/tick", RecoveryCheckTickView.as_view(),
         name="restore-checklist-tick"),
]
