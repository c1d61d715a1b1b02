"""``GET /metrics``: the panel's measurements in Prometheus' text exposition format, through prometheus_client.

A custom collector (``PanelCollector``) on its own ``CollectorRegistry`` (never the process-wide
default: no process or Python series of whichever web worker answered) reads every value from the
database or from Redis at scrape time; nothing is cached or invented. A series without data is
left out (no backup of a kind yet: no timestamp for it; no verified full: no RPO), so an alert on
``absent(...)`` means what it says. Counts (runs per state, open alerts per severity) list every
state, because zero runs in a state is a measurement. prometheus_client writes the text (escaping
label values and help texts by the format's rules).

Who may scrape: a caller from ``METRICS_ALLOWED_NETWORKS`` (by the client's address,
``drpanel.client_ip``: the socket's, unless ``DRPANEL_PROXY_COUNT`` names the proxies in front), or
one with a bearer token of a user holding ``view_panel``: a *metrics* token (scrape-only, refused by
every other endpoint; the kind to give Prometheus), or, as before metrics tokens existed, an API
token, so existing scrape configurations keep working. A refusal is a 403 and an ``access.denied``
audit event; refusals of unidentified callers are audited at most once a minute per address, so
nobody can grow the audit chain at will by hammering the URL.
"""

import ipaddress
from datetime import datetime

import redis
from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Max
from django.http import HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from rest_framework import exceptions

from backups.continuous import seconds_since
from backups.models import Artifact, System
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.health_many import health_facts, health_many, rpo_many
from compliance.measurements import open_incidents
from compliance.models import Alert, AuditEvent
from drpanel import clock, cron_heartbeat, queues
from drpanel.authentication import bearer_value, token_for
from drpanel.client_ip import client_address
from drpanel.permissions import Cap, has_cap
from restores.models import Incident, RestoreRun, VerificationRun

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Worker pools (docs/many-hosts.md): "default" (the workers that serve no pool) is always reported; a pool
# appears while it has live workers.
POOLS = (queues.NO_POOL,)


def continuous_rpo_seconds(system: System, now, last_wal_at) -> float | None:
    """RPO of continuous protection (WAL streamed): the age of the last WAL received; None without continuous
    protection or before any WAL arrived."""
    return seconds_since(last_wal_at, now) if system.continuous_enabled and last_wal_at is not None else None


# --- the measurements ------------------------------------------------------------------------

def _redis_now() -> tuple[int, dict[str, int], cron_heartbeat.Heartbeat, dict[str, int]] | None:
    """This installation's live workers, jobs waiting per queue, the scheduler's heartbeat, and live workers per
    pool (the selector the run pages use); None without Redis."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        return (len(queues.our_workers(client)), queues.depths(client), cron_heartbeat.read(client),
                queues.workers_per_pool(client))
    except redis.RedisError:
        return None  # unknown is not zero: the series are left out
    finally:
        client.close()


def _gauge(name: str, documentation: str, labels=()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def _system_families(now) -> list[GaugeMetricFamily]:
    systems = list(System.objects.order_by("name"))
    last_backup = _gauge("drpanel_last_successful_backup_timestamp_seconds",
                         "Creation time (Unix seconds) of the newest available artifact per system and kind.",
                         ("system", "kind"))
    backup_age = _gauge("drpanel_system_last_backup_age_seconds",
                        "Age of the newest available artifact per system and kind.", ("system", "kind"))
    for row in (Artifact.objects.filter(status=Artifact.Status.AVAILABLE).values("system__name", "kind")
                .annotate(newest=Max("created_at")).order_by("system__name", "kind")):
        last_backup.add_metric([row["system__name"], row["kind"]], row["newest"].timestamp())
        backup_age.add_metric([row["system__name"], row["kind"]], (now - row["newest"]).total_seconds())

    verified_age = _gauge("drpanel_system_last_verified_age_seconds",
                          "Time since the newest verification of the system's artifacts that passed (any level).",
                          ("system",))
    for name, finished in (VerificationRun.objects.filter(state="succeeded", finished_at__isnull=False)
                           .values_list("artifact__system__name").annotate(newest=Max("finished_at"))
                           .order_by("artifact__system__name")):
        verified_age.add_metric([name], (now - finished).total_seconds())

    score = _gauge("drpanel_health_score", "Health score per system (0-100): passed weight / enabled weight.",
                   ("system",))
    band = _gauge("drpanel_health_status", "1 for the system's current health band (healthy, warning, critical).",
                  ("system", "status"))
    rpo = _gauge("drpanel_rpo_seconds", "Age of the system's newest available full verified at decrypt level or "
                                        "better; absent when none is.", ("system",))
    continuous = _gauge("drpanel_continuous_rpo_seconds", "RPO of continuous protection (age of the newest "
                                                          "archived WAL); absent without continuous protection.",
                        ("system",))
    offsite_age = _gauge("drpanel_continuous_offsite_rpo_seconds",
                         "Age of the newest point recoverable from an off-site location alone (continuous "
                         "protection); absent when the location recovers nothing.", ("system", "location"))
    offsite_newest = _gauge("drpanel_continuous_offsite_newest_point_timestamp_seconds",
                            "The newest point (Unix seconds) recoverable from an off-site location alone.",
                            ("system", "location"))
    offsite_within = _gauge("drpanel_continuous_offsite_within_target",
                            "1 when an off-site location alone recovers a point within the system's RPO target.",
                            ("system", "location"))
    facts = health_facts(systems, now)
    rpos = rpo_many(systems, facts)
    for system, health in zip(systems, health_many(systems, known=facts), strict=True):
        for row in health.offsite:
            offsite_within.add_metric([system.name, row["location"]], int(row["within_target"]))
            if row["newest_point"] is not None:
                offsite_age.add_metric([system.name, row["location"]], row["age_seconds"])
                offsite_newest.add_metric([system.name, row["location"]],
                                          datetime.fromisoformat(row["newest_point"]).timestamp())
        score.add_metric([system.name], health.score)
        for status in ("healthy", "warning", "critical"):
            band.add_metric([system.name, status], int(health.status == status))
        seconds = rpos[system.pk].seconds
        if seconds is not None:
            rpo.add_metric([system.name], seconds)
        seconds = continuous_rpo_seconds(system, now, facts.last_wal_at.get(system.pk))
        if seconds is not None:
            continuous.add_metric([system.name], seconds)

    system_rto = _gauge("drpanel_system_last_rto_seconds", "Measured RTO (request to healthy) of the system's "
                                                           "newest restore that reached healthy.", ("system",))
    seen = set()
    for name, seconds in (RestoreRun.objects.filter(rto_seconds__isnull=False, healthy_at__isnull=False)
                          .order_by("artifact__system__name", "-healthy_at")
                          .values_list("artifact__system__name", "rto_seconds")):
        if name not in seen:
            seen.add(name)
            system_rto.add_metric([name], seconds)
    return [last_backup, backup_age, verified_age, score, band, rpo, continuous, offsite_age, offsite_newest,
            offsite_within, system_rto]


def _incident_families() -> list[GaugeMetricFamily]:
    """Disaster mode: the last recovered incident's and drill's RTO and RPO per system, and the open incidents."""
    labels = ("system", "drill")
    incident_rto = _gauge("drpanel_incident_rto_seconds", "RTO (declared or noticed to recovered) of the last "
                                                          "recovered incident or drill per system.", labels)
    incident_rpo = _gauge("drpanel_incident_rpo_seconds", "RPO achieved (failure time minus recovery point) of the "
                                                          "last recovered incident or drill per system.", labels)
    incidents_open = _gauge("drpanel_incidents_open", "Incidents (not drills) not closed yet.")
    # ``last_incident_measure`` per system and kind, for every system in one query.
    last = (Incident.objects.filter(recovered_at__isnull=False).select_related("system")
            .order_by("system__name", "system_id", "is_drill", "-recovered_at")
            .distinct("system__name", "system_id", "is_drill"))
    for incident in last:
        values = [incident.system.name, str(incident.is_drill).lower()]
        incident_rto.add_metric(values, incident.rto_seconds)
        if incident.rpo_seconds is not None:
            incident_rpo.add_metric(values, incident.rpo_seconds)
    incidents_open.add_metric([], len(open_incidents()))
    return [incident_rto, incident_rpo, incidents_open]


def collect() -> list[GaugeMetricFamily]:
    """Every family, computed now (empty ones are left out by the collector)."""
    now = clock.now()
    families = [*_system_families(now), *_incident_families()]

    rto = _gauge("drpanel_last_rto_seconds", "Measured RTO (request to healthy) of the newest restore that "
                                             "reached healthy.")
    last = (RestoreRun.objects.filter(rto_seconds__isnull=False, healthy_at__isnull=False)
            .order_by("-healthy_at").values_list("rto_seconds", flat=True).first())
    if last is not None:
        rto.add_metric([], last)

    restores = _gauge("drpanel_restore_runs", "Restore runs per state.", ("state",))
    counts = dict(RestoreRun.objects.values_list("state").annotate(n=Count("pk")).order_by())
    for state in RestoreRun.State.values:
        restores.add_metric([state], counts.get(state, 0))

    verifications = _gauge("drpanel_verification_runs", "Verification runs per state.", ("state",))
    counts = dict(VerificationRun.objects.values_list("state").annotate(n=Count("pk")).order_by())
    for state in VerificationRun.State.values:
        verifications.add_metric([state], counts.get(state, 0))
    failures = _gauge("drpanel_verification_failures", "Failed verification runs per requested level.", ("level",))
    for level, n in (VerificationRun.objects.filter(state=VerificationRun.State.FAILED).values_list("level")
                     .annotate(n=Count("pk")).order_by("level")):
        failures.add_metric([level], n)

    alerts = _gauge("drpanel_alerts_open", "Open (unacknowledged) alerts per severity.", ("severity",))
    counts = dict(Alert.objects.filter(state=Alert.State.OPEN).values_list("severity").annotate(n=Count("pk"))
                  .order_by())
    for severity in Alert.Severity.values:
        alerts.add_metric([severity], counts.get(severity, 0))

    workers = _gauge("drpanel_workers_live", "This installation's RQ workers registered in Redis (absent when Redis "
                                             "does not answer).")
    pools = _gauge("drpanel_pool_workers_alive", "This installation's live RQ workers per worker pool.", ("pool",))
    depth = _gauge("drpanel_queue_depth", "Jobs waiting per queue of this installation (absent when Redis does not "
                                          "answer).", ("queue",))
    cron_age = _gauge("drpanel_cron_heartbeat_age_seconds", "Time since the cron scheduler's last heartbeat "
                                                            "(absent when none ever beat).")
    schedulers = _gauge("drpanel_cron_schedulers", "Cron schedulers beating now (1 is right; 0 missing, 2+ doubled).")
    now_redis = _redis_now()
    if now_redis is not None:
        live, waiting, heartbeat, per_pool = now_redis
        workers.add_metric([], live)
        per_pool = {pool or queues.NO_POOL: count for pool, count in per_pool.items()}
        for pool in sorted(set(POOLS) | set(per_pool)):
            pools.add_metric([pool], per_pool.get(pool, 0))
        for name, count in waiting.items():
            depth.add_metric([name], count)
        if heartbeat.age_seconds is not None:
            cron_age.add_metric([], heartbeat.age_seconds)
        schedulers.add_metric([], len(heartbeat.live))

    head = _gauge("drpanel_audit_head_seq", "Sequence number of the newest audit event.")
    seq = AuditEvent.objects.aggregate(head=Max("seq"))["head"]
    if seq is not None:
        head.add_metric([], seq)

    return [*families, rto, restores, verifications, failures, alerts, workers, pools, depth, cron_age,
            schedulers, head]


class PanelCollector:
    """prometheus_client's custom collector: every family of ``collect()`` that has a sample."""

    def collect(self):
        yield from (family for family in collect() if family.samples)


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(PanelCollector())


def render() -> str:
    """The exposition text now."""
    return generate_latest(REGISTRY).decode()


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
    return HttpResponse(render(), content_type=CONTENT_TYPE)
