"""``GET /metrics``: the panel's measurements in Prometheus' text exposition format (version 0.0.4).

Every value is read from the database or from Redis at scrape time; nothing is cached or invented.
A series without data is left out (no backup of a kind yet: no timestamp for it; no verified full:
no RPO), so an alert on ``absent(...)`` means what it says. Counts (runs per state, open alerts per
severity) list every state, because zero runs in a state is a measurement.

Who may scrape: a caller from ``METRICS_ALLOWED_NETWORKS`` (by the client's address,
``drpanel.client_ip``: the socket's, unless ``DRPANEL_PROXY_COUNT`` names the proxies in front), or
one with a bearer token of a user holding ``view_panel``: a *metrics* token (scrape-only, refused by
every other endpoint; the kind to give Prometheus), or, as before metrics tokens existed, an API
token, so existing scrape configurations keep working. A refusal is a 403 and an ``access.denied``
audit event; refusals of unidentified callers are audited at most once a minute per address, so
nobody can grow the audit chain at will by hammering the URL.

The format is small enough to write by hand (prometheus_client is not a dependency): ``# HELP`` and
``# TYPE`` per family, then ``name{label="value"} number`` lines, with label values escaped
(backslash, double quote, line feed) and help texts escaped (backslash, line feed).
"""

import ipaddress
import math
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Max
from django.http import HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from rest_framework import exceptions

from backups.models import Artifact, System
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.health import health_evaluate
from compliance.measurements import last_incident_measure, open_incidents, rpo_for
from compliance.models import Alert, AuditEvent
from drpanel import clock, queues
from drpanel.authentication import bearer_value, token_for
from drpanel.client_ip import client_address
from drpanel.permissions import Cap, has_cap
from restores.models import RestoreRun, VerificationRun

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Family:
    """One metric family: its name, type, help text and samples (labels, value)."""

    name: str
    help: str
    type: str = "gauge"
    samples: list[tuple[dict, float]] = field(default_factory=list)

    def add(self, value, **labels) -> None:
        self.samples.append((labels, value))


def escape_label_value(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render(families: list[Family]) -> str:
    """The exposition text; a family without samples is left out entirely."""
    lines = []
    for family in families:
        if not family.samples:
            continue
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for labels, value in family.samples:
            label_text = ",".join(f'{key}="{escape_label_value(val)}"' for key, val in labels.items())
            lines.append(f"{family.name}{{{label_text}}} {format_value(value)}" if labels
                         else f"{family.name} {format_value(value)}")
    return "\n".join(lines) + "\n"


# --- the measurements ------------------------------------------------------------------------

def _queues_now() -> tuple[int, dict[str, int]] | None:
    """This installation's live workers and jobs waiting per queue; None when Redis does not answer."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        return len(queues.our_workers(client)), queues.depths(client)
    except redis.RedisError:
        return None  # unknown is not zero: the series are left out
    finally:
        client.close()


def collect() -> list[Family]:
    """Every family, computed now."""
    now = clock.now()
    systems = list(System.objects.order_by("name"))

    last_backup = Family("drpanel_last_successful_backup_timestamp_seconds",
                         "Creation time (Unix seconds) of the newest available artifact per system and kind.")
    for row in (Artifact.objects.filter(status=Artifact.Status.AVAILABLE).values("system__name", "kind")
                .annotate(newest=Max("created_at")).order_by("system__name", "kind")):
        last_backup.add(row["newest"].timestamp(), system=row["system__name"], kind=row["kind"])

    score = Family("drpanel_health_score", "Health score per system (0-100): passed weight / enabled weight.")
    band = Family("drpanel_health_status", "1 for the system's current health band (healthy, warning, critical).")
    rpo = Family("drpanel_rpo_seconds", "Age of the system's newest available full verified at decrypt level or "
                                        "better; absent when none is.")
    for system in systems:
        health = health_evaluate(system, now)
        score.add(health.score, system=system.name)
        for status in ("healthy", "warning", "critical"):
            band.add(int(health.status == status), system=system.name, status=status)
        seconds = rpo_for(system, now).seconds
        if seconds is not None:
            rpo.add(seconds, system=system.name)

    rto = Family("drpanel_last_rto_seconds", "Measured RTO (request to healthy) of the newest restore that "
                                             "reached healthy.")
    last = (RestoreRun.objects.filter(rto_seconds__isnull=False, healthy_at__isnull=False)
            .order_by("-healthy_at").values_list("rto_seconds", flat=True).first())
    if last is not None:
        rto.add(last)

    restores = Family("drpanel_restore_runs", "Restore runs per state.")
    counts = dict(RestoreRun.objects.values_list("state").annotate(n=Count("pk")).order_by())
    for state in RestoreRun.State.values:
        restores.add(counts.get(state, 0), state=state)

    verifications = Family("drpanel_verification_runs", "Verification runs per state.")
    counts = dict(VerificationRun.objects.values_list("state").annotate(n=Count("pk")).order_by())
    for state in VerificationRun.State.values:
        verifications.add(counts.get(state, 0), state=state)
    failures = Family("drpanel_verification_failures", "Failed verification runs per requested level.")
    for level, n in (VerificationRun.objects.filter(state=VerificationRun.State.FAILED).values_list("level")
                     .annotate(n=Count("pk")).order_by("level")):
        failures.add(n, level=level)

    alerts = Family("drpanel_alerts_open", "Open (unacknowledged) alerts per severity.")
    counts = dict(Alert.objects.filter(state=Alert.State.OPEN).values_list("severity").annotate(n=Count("pk"))
                  .order_by())
    for severity in Alert.Severity.values:
        alerts.add(counts.get(severity, 0), severity=severity)

    workers = Family("drpanel_workers_live", "This installation's RQ workers registered in Redis (absent when Redis "
                                             "does not answer).")
    depth = Family("drpanel_queue_depth", "Jobs waiting per queue of this installation (absent when Redis does not "
                                          "answer).")
    now_queues = _queues_now()
    if now_queues is not None:
        workers.add(now_queues[0])
        for name, count in now_queues[1].items():
            depth.add(count, queue=name)

    # Disaster mode: the last recovered incident's and drill's RTO and RPO per system, and what is open now.
    incident_rto = Family("drpanel_incident_rto_seconds", "RTO (declared or noticed to recovered) of the last "
                                                          "recovered incident or drill per system.")
    incident_rpo = Family("drpanel_incident_rpo_seconds", "RPO achieved (failure time minus recovery point) of the "
                                                          "last recovered incident or drill per system.")
    incidents_open = Family("drpanel_incidents_open", "Incidents and drills not closed yet.")
    for system in systems:
        for drill in (False, True):
            measure = last_incident_measure(drills=drill, system=system)
            if measure is None:
                continue
            labels = {"system": system.name, "drill": str(drill).lower()}
            incident_rto.add(measure.incident.rto_seconds, **labels)
            if measure.incident.rpo_seconds is not None:
                incident_rpo.add(measure.incident.rpo_seconds, **labels)
    incidents_open.add(len(open_incidents()), drill="false")

    head = Family("drpanel_audit_head_seq", "Sequence number of the newest audit event.")
    seq = AuditEvent.objects.aggregate(head=Max("seq"))["head"]
    if seq is not None:
        head.add(seq)

    return [last_backup, score, band, rpo, rto, restores, verifications, failures, alerts, workers, depth,
            incident_rto, incident_rpo, incidents_open, head]


# --- who may scrape --------------------------------------------------------------------------

def _from_allowed_network(request) -> bool:
    try:
        address = ipaddress.ip_address(client_address(request) or "")
    except ValueError:
        return False
    return any(address in network for network in settings.METRICS_ALLOWED_NETWORKS)


def _token_user(request):
    """The user of a valid bearer token of either kind, or None (no header, or an unknown, revoked
    or expired token)."""
    try:
        raw = bearer_value(request)
        return token_for(request, raw).user if raw is not None else None
    except exceptions.AuthenticationFailed:
        return None


def _deny(request, user, reason: str) -> HttpResponse:
    address = client_address(request) or ""
    if user is not None or cache.add(f"drpanel:metrics-denied:{address}", 1, timeout=60):
        audit_record(actor=user, action=AuditAction.ACCESS_DENIED, outcome="denied", request=request,
                     details={"path": "/metrics", "method": request.method, "need": str(Cap.VIEW_PANEL),
                              "attempted": "metrics.scrape", "reason": reason})
    return HttpResponse(f"403 Forbidden: {reason}\n", status=403, content_type="text/plain; charset=utf-8")


@never_cache
@require_GET
def metrics(request):
    """Prometheus scrape endpoint (module docstring: who may scrape)."""
    if not _from_allowed_network(request):
        user = _token_user(request)
        if user is None:
            return _deny(request, None, "send a bearer API token, or scrape from an allowed network")
        if not has_cap(user, Cap.VIEW_PANEL):
            return _deny(request, user, "the token's user does not hold view_panel")
    return HttpResponse(render(collect()), content_type=CONTENT_TYPE)
