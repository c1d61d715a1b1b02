"""``/api/v1/incidents`` and ``/api/v1/runbooks``: the same services, permissions and audit events as the pages.

Refusals: 403 (no right; audited by the exception handler), 409 (a second declaration, naming
the open incident; a step or incident not in a state that allows it), 400 naming the field.
Lists answer ``{"results": [...], "next": cursor|null}``.
"""


from django.contrib.auth import get_user_model
from django.urls import path
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from backups.models import System
from drpanel.api import (
    PAGE_PARAMETERS,
    InputSerializer,
    StrictBooleanField,
    StrictCharField,
    capability,
    page_schema,
    paginate,
    validated_body,
)
from drpanel.permissions import Cap, require_cap
from drpanel.schema import error_response
from restores import incident_steps, incidents, runbooks
from restores.models import Incident, RunbookTemplate, Scenario
from restores.runstate import RestoreConflict, RestoreError
from restores.selectors import visible_targets


def access_incident(pk) -> Incident:
    """An incident by id (everyone with the panel may read incidents); 404 otherwise. Waiting steps are settled."""
    incident = Incident.objects.select_related("system", "target", "runbook", "declared_by", "closed_by",
                                               "recovery_artifact").filter(pk=pk).first()
    if incident is None:
        raise NotFound()
    incident_steps.incident_steps_sync(incident)
    incident.refresh_from_db()
    return incident


class NotFound(Exception):
    pass


def _error(exc: Exception) -> Response:
    if isinstance(exc, NotFound):
        return Response({"detail": "No such incident.", "errors": {}}, status=status.HTTP_404_NOT_FOUND)
    errors = {k: [v] for k, v in getattr(exc, "errors", {}).items()}
    body = {"detail": str(exc), "errors": errors}
    if isinstance(exc, RestoreConflict):
        open_one = getattr(exc, "open_incident", None)
        if open_one is not None:
            body["open_incident"] = {"id": str(open_one.pk), "url": f"/incidents/{open_one.pk}/",
                                     "api": f"/api/v1/incidents/{open_one.pk}"}
            body["errors"] = {"system": [f"an incident is open: {open_one.pk}"]}
        return Response(body, status=status.HTTP_409_CONFLICT)
    return Response(body, status=status.HTTP_400_BAD_REQUEST)


class DeclareSerializer(InputSerializer):
    system = StrictCharField(help_text="The system's name.")
    scenario = serializers.ChoiceField(choices=Scenario.choices)
    severity = serializers.ChoiceField(choices=Incident.Severity.choices)
    target = StrictCharField(help_text="The target recovered into (its name).")
    drill = StrictBooleanField(required=False, default=False)
    summary = StrictCharField(required=False, allow_blank=True, max_length=500, default="")
    noticed_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    noticed_reason = StrictCharField(required=False, allow_blank=True, max_length=500, default="")


IncidentSchema = inline_serializer("Incident", {
    "id": serializers.UUIDField(), "system": serializers.CharField(), "scenario": serializers.CharField(),
    "state": serializers.CharField(), "drill": serializers.BooleanField(),
    "elapsed_seconds": serializers.FloatField(), "rto": serializers.JSONField(), "rpo": serializers.JSONField(),
    "steps": serializers.ListField(child=serializers.JSONField())})


class IncidentListView(APIView):
    """``GET``: incidents and drills, newest first (``?state=``, ``?system=``, ``?drill=true|false``, ``?cursor=``).

    ``POST`` ``{"system", "scenario", "severity", "target"}`` (optionally ``drill``, ``summary``,
    ``noticed_at`` with ``noticed_reason``): 201 with the incident; 409 naming the open one.
    """

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(operation_id="incidents_list", parameters=PAGE_PARAMETERS,
                   responses=page_schema("IncidentList", IncidentSchema))
    def get(self, request):
        rows = Incident.objects.select_related("system", "target", "runbook", "declared_by")
        params = request.query_params
        if params.get("state") in Incident.State.values:
            rows = rows.filter(state=params["state"])
        if params.get("system"):
            rows = rows.filter(system__name=params["system"])
        if params.get("drill") in ("true", "false"):
            rows = rows.filter(is_drill=params["drill"] == "true")
        return paginate(request, rows, incidents.incident_json, order=("-declared_at", "-id"))

    @extend_schema(operation_id="incidents_declare", request=DeclareSerializer,
                   responses={201: IncidentSchema, 409: error_response(409)})
    def post(self, request):
        require_cap(request.user, incidents.RUN_CAP, action="incident.declare")
        data = validated_body(request, DeclareSerializer)
        system = System.objects.filter(name=data["system"]).first()
        if system is None:
            raise ValidationError({"system": ["No such system."]})
        target = visible_targets(request.user).filter(name=data["target"]).first()
        if target is None:
            raise ValidationError({"target": ["No such target (among those you may see)."]})
        try:
            incident = incidents.incident_declare(
                actor=request.user, system=system, scenario=data["scenario"], severity=data["severity"],
                target=target, is_drill=data["drill"], summary=data["summary"], noticed_at=data["noticed_at"],
                noticed_reason=data["noticed_reason"], request=request)
        except RestoreError as exc:
            return _error(exc)
        return Response(incidents.incident_json(incident), status=status.HTTP_201_CREATED)


class IncidentDetailView(APIView):
    """One incident: state, clock, phase, next step, steps, RTO and RPO against their targets."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(responses=IncidentSchema)
    def get(self, request, pk):
        try:
            return Response(incidents.incident_json(access_incident(pk)))
        except NotFound as exc:
            return _error(exc)


class IncidentReportView(APIView):
    """The report (timeline, deviations, RTO/RPO against targets, approvals, review); a closed incident's is the
    one signed into the audit chain (``report_sha256``)."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(responses=inline_serializer("IncidentReport", {"report": serializers.JSONField(),
                                                                   "report_sha256": serializers.CharField()}))
    def get(self, request, pk):
        try:
            incident = access_incident(pk)
        except NotFound as exc:
            return _error(exc)
        report = incident.report if incident.report_hash else incidents.incident_report(incident)
        return Response({"report": report, "report_sha256": incident.report_hash or None,
                         "signed": bool(incident.report_hash)})


class StepStartSerializer(InputSerializer):
    assignee = StrictCharField(required=False, allow_blank=True, default="", help_text="A username (default: you).")
    recovery_point = StrictCharField(
        required=False, allow_blank=True, max_length=100, default="",
        help_text='The recovery point step only: "full" (the newest verified full), "latest" (the latest WAL '
                  'received), or a moment ("10 minutes ago", "2026-12-03 03:00 Europe/Madrid", ISO 8601 with its '
                  "offset). Empty: latest under continuous protection, else the newest verified full.")


class StepCompleteSerializer(InputSerializer):
    note = StrictCharField(required=False, allow_blank=True, max_length=4000, default="")
    evidence_url = StrictCharField(required=False, allow_blank=True, max_length=500, default="")
    decision = serializers.ChoiceField(choices=["continue"], required=False, default="")


class StepSkipSerializer(InputSerializer):
    reason = StrictCharField(max_length=500)


class _StepAction(APIView):
    permission_classes = [capability(Cap.VIEW_PANEL)]
    body = StepStartSerializer

    def act(self, request, step, data):
        raise NotImplementedError

    def post(self, request, pk, position: int):
        require_cap(request.user, incidents.RUN_CAP, action=f"incident.step_{self.verb}")
        data = validated_body(request, self.body)
        try:
            incident = access_incident(pk)
            step = incident_steps.access_step(incident, position)
            self.act(request, step, data)
            incident.refresh_from_db()
        except (RestoreError, NotFound) as exc:
            return _error(exc)
        return Response(incidents.incident_json(incident))


class StepStartView(_StepAction):
    """Start step ``position`` (1-based): manual ones get the assignee and timer; automatic ones run."""

    verb = "start"

    @extend_schema(request=StepStartSerializer, responses={200: IncidentSchema, 409: error_response(409)})
    def post(self, request, pk, position: int):
        return super().post(request, pk, position)

    def act(self, request, step, data):
        assignee = None
        if data["assignee"]:
            assignee = get_user_model().objects.filter(username=data["assignee"], is_active=True).first()
            if assignee is None:
                raise incidents.IncidentError("assignee: no such active user", {"assignee": "no such active user"})
        incident_steps.incident_step_start(actor=request.user, step=step, assignee=assignee,
                                           point=data["recovery_point"], request=request)


class StepCompleteView(_StepAction):
    """Complete a manual step (note, evidence link where required) or a decision (``"decision": "continue"``)."""

    verb = "complete"
    body = StepCompleteSerializer

    @extend_schema(request=StepCompleteSerializer, responses={200: IncidentSchema, 409: error_response(409)})
    def post(self, request, pk, position: int):
        return super().post(request, pk, position)

    def act(self, request, step, data):
        incident_steps.incident_step_complete(actor=request.user, step=step, note=data["note"],
                                              evidence_url=data["evidence_url"], decision=data["decision"],
                                              request=request)


class StepSkipView(_StepAction):
    """Skip a step with a reason."""

    verb = "skip"
    body = StepSkipSerializer

    @extend_schema(request=StepSkipSerializer, responses={200: IncidentSchema, 409: error_response(409)})
    def post(self, request, pk, position: int):
        return super().post(request, pk, position)

    def act(self, request, step, data):
        incident_steps.incident_step_skip(actor=request.user, step=step, reason=data["reason"], request=request)


class ReviewSerializer(InputSerializer):
    cause = StrictCharField(max_length=4000)
    remediation = StrictCharField(required=False, allow_blank=True, max_length=4000, default="")
    follow_ups = StrictCharField(required=False, allow_blank=True, max_length=4000, default="")


class CloseSerializer(InputSerializer):
    review = ReviewSerializer()


class IncidentCloseView(APIView):
    """Close (managers) with the review ``{"review": {"cause", "remediation", "follow_ups"}}``; 409 with the reason
    while required steps are open."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(request=CloseSerializer, responses={200: IncidentSchema, 409: error_response(409)})
    def post(self, request, pk):
        require_cap(request.user, incidents.CLOSE_CAP, action="incident.close")
        data = validated_body(request, CloseSerializer)
        try:
            incident = incidents.incident_close(actor=request.user, incident=access_incident(pk),
                                                review=dict(data["review"]), request=request)
        except (RestoreError, NotFound) as exc:
            return _error(exc)
        return Response(incidents.incident_json(incident))


def runbook_json(runbook: RunbookTemplate) -> dict:
    return {"scenario": runbook.scenario, "version": runbook.version, "title": runbook.title, "note": runbook.note,
            "created_by": runbook.created_by.get_username() if runbook.created_by else None,
            "created_at": runbook.created_at.isoformat(), "steps": runbook.steps}


class RunbookEditSerializer(InputSerializer):
    steps = serializers.JSONField()
    note = StrictCharField(max_length=500)
    title = StrictCharField(required=False, allow_blank=True, max_length=200, default="")


class RunbookListView(APIView):
    """The newest version of each scenario's runbook."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(parameters=PAGE_PARAMETERS, responses=page_schema("RunbookList", serializers.JSONField()))
    def get(self, request):
        return paginate(request, list(runbooks.runbooks_current()), runbook_json)


class RunbookEditView(APIView):
    """``POST`` ``{"steps": [...], "note"}``: the next version of the scenario's runbook (admins)."""

    permission_classes = [capability(Cap.VIEW_PANEL)]

    @extend_schema(request=RunbookEditSerializer, responses={201: inline_serializer("Runbook", {
        "scenario": serializers.CharField(), "version": serializers.IntegerField()}), 409: error_response(409)})
    def post(self, request, scenario: str):
        require_cap(request.user, Cap.MANAGE_PANEL, action="runbook.edit")
        data = validated_body(request, RunbookEditSerializer)
        try:
            runbook = runbooks.runbook_edit(actor=request.user, scenario=scenario, steps=data["steps"],
                                            title=data["title"], note=data["note"], request=request)
        except RestoreError as exc:
            return _error(exc)
        return Response(runbook_json(runbook), status=status.HTTP_201_CREATED)


urlpatterns = [
    path("incidents", IncidentListView.as_view(), name="incident-list"),
    path("incidents/<uuid:pk>", IncidentDetailView.as_view(), name="incident-detail"),
    path("incidents/<uuid:pk>/report", IncidentReportView.as_view(), name="incident-report"),
    path("incidents/<uuid:pk>/close", IncidentCloseView.as_view(), name="incident-close"),
    path("incidents/<uuid:pk>/steps/<int:position>/start", StepStartView.as_view(), name="incident-step-start"),
    path("incidents/<uuid:pk>/steps/<int:position>/complete", StepCompleteView.as_view(),
         name="incident-step-complete"),
    path("incidents/<uuid:pk>/steps/<int:position>/skip", StepSkipView.as_view(), name="incident-step-skip"),
    path("runbooks", RunbookListView.as_view(), name="runbook-list"),
    path("runbooks/<str:scenario>", RunbookEditView.as_view(), name="runbook-edit"),
]
