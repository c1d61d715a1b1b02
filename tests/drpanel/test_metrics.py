"""``GET /metrics``: Prometheus text (0.0.4) computed from the rows, for allowed callers only.

The output is parsed strictly (every line is a HELP, a TYPE or a sample of the family announced just
before; label values unescaped by the format's rules), and by prometheus_client's own parser too.
"""

import re
import secrets
from datetime import timedelta
from ipaddress import ip_network

import pytest
from rq import Queue

from backups.models import Artifact, System
from compliance.models import Alert, AuditEvent
from drpanel import clock, queues
from drpanel.services import api_token_create
from restores.models import RestoreRun, Target, VerificationRun
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)\}})? (-?[0-9.e+-]+|NaN|[+-]Inf)$")
HELP = re.compile(rf"^# HELP ({NAME}) (.*)$")
TYPE = re.compile(rf"^# TYPE ({NAME}) (gauge|counter|untyped)$")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse(text: str) -> dict[str, list[tuple[dict, float]]]:
    """``{family: [(labels, value)]}``; any line out of the format fails the test."""
    assert text.endswith("\n"), "the exposition ends with a line feed"
    families: dict[str, list] = {}
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        if m := HELP.match(line):
            assert m.group(1) not in families, f"line {number}: {m.group(1)} announced twice"
            current = m.group(1)
            families[current] = []
        elif m := TYPE.match(line):
            assert m.group(1) == current, f"line {number}: TYPE of another family"
        elif m := SAMPLE.match(line):
            assert m.group(1) == current, f"line {number}: a sample outside its family"
            labels = {k: _unescape(v) for k, v in re.findall(LABEL, m.group(2) or "")}
            families[current].append((labels, float(m.group(m.lastindex))))
        else:
            pytest.fail(f"line {number} is not Prometheus text: {line!r}")
    return families


def value(families, name, **labels):
    found = [v for lab, v in families.get(name, []) if lab == labels]
    assert len(found) == 1, f"{name}{labels}: {families.get(name)}"
    return found[0]


@pytest.fixture(autouse=True)
def _no_remembered_denials():
    """The once-a-minute memory of anonymous refusals lives in the cache: each test starts without it."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def scrape(client, auditor):
    _, raw = api_token_create(actor=auditor, user=auditor, name="prometheus", password=PASSWORD)

    def _scrape():
        response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert response.status_code == 200, response.content
        assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return response.content.decode()

    return _scrape


def test_an_empty_panel_exposes_only_what_it_measured(scrape):
    families = parse(scrape())
    assert "drpanel_last_successful_backup_timestamp_seconds" not in families
    assert "drpanel_rpo_seconds" not in families and "drpanel_last_rto_seconds" not in families
    assert value(families, "drpanel_restore_runs", state="succeeded") == 0
    assert value(families, "drpanel_alerts_open", severity="critical") == 0


def test_the_values_are_the_rows(scrape, operator, monkeypatch):
    now = clock.now()
    tricky = 'chat"bot\\dysa\nprod'  # a name needing every escape
    system = System.objects.create(name=tricky, database_ref="env:DRPANEL_SECRET_UNSET_DB")
    other = System.objects.create(name="crm", database_ref="env:DRPANEL_SECRET_UNSET_DB")
    old_full = Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available",
                                       size=1, sha256="a" * 64, storage_key="a", manifest={})
    Artifact.objects.filter(pk=old_full.pk).update(created_at=now - timedelta(hours=5),
                                                   last_verified_level="decrypt")
    newest = Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available",
                                     size=1, sha256="b" * 64, storage_key="b", manifest={})
    Artifact.objects.filter(pk=newest.pk).update(created_at=now - timedelta(hours=1))
    deleted = Artifact.objects.create(system=other, kind="config", format="config_tar", status="deleted",
                                      size=1, sha256="c" * 64, storage_key="c", manifest={})
    target = Target.objects.create(name="staging", environment="staging", database_ref="env:DRPANEL_SECRET_UNSET_DB",
                                   config_dir="/tmp/x")
    for state, rto, healthy in (("succeeded", 412.5, now - timedelta(hours=2)), ("succeeded", 97.25, now),
                                ("failed", None, None)):
        RestoreRun.objects.create(artifact=newest, target=target, mode="database-only", state=state,
                                  requested_by=operator, rto_seconds=rto, healthy_at=healthy)
    VerificationRun.objects.create(artifact=newest, level="restore-test", state="failed", error="sanity")
    VerificationRun.objects.create(artifact=newest, level="decrypt", state="succeeded")
    Alert.objects.create(kind="k", severity="critical", subject="s", message="", dedup_key="1")
    Alert.objects.create(kind="k", severity="critical", subject="s", message="", dedup_key="2")
    Alert.objects.create(kind="k", severity="warning", subject="s", message="", dedup_key="3", state="resolved")

    families = parse(scrape())
    newest.refresh_from_db()
    assert value(families, "drpanel_last_successful_backup_timestamp_seconds", system=tricky,
                 kind="full") == pytest.approx(newest.created_at.timestamp())
    # A deleted artifact is no backup: no series for crm's config.
    assert not [s for s in families["drpanel_last_successful_backup_timestamp_seconds"] if s[0]["system"] == "crm"]
    # RPO: the verified full is the old one, 5 h ago (the newest is not verified).
    assert value(families, "drpanel_rpo_seconds", system=tricky) == pytest.approx(5 * 3600, abs=5)
    assert [s for s in families["drpanel_rpo_seconds"] if s[0]["system"] == "crm"] == []
    assert value(families, "drpanel_last_rto_seconds") == 97.25
    assert value(families, "drpanel_restore_runs", state="succeeded") == 2
    assert value(families, "drpanel_restore_runs", state="failed") == 1
    assert value(families, "drpanel_restore_runs", state="queued") == 0
    assert value(families, "drpanel_verification_runs", state="failed") == 1
    assert value(families, "drpanel_verification_failures", level="restore-test") == 1
    assert value(families, "drpanel_alerts_open", severity="critical") == 2
    assert value(families, "drpanel_alerts_open", severity="warning") == 0
    # Health: the same score the health page computes; exactly one band set per system.
    from compliance.health import health_evaluate

    assert value(families, "drpanel_health_score", system="crm") == health_evaluate(other).score
    bands = {lab["status"]: v for lab, v in families["drpanel_health_status"] if lab["system"] == tricky}
    assert sorted(bands.values()) == [0, 0, 1] and bands[health_evaluate(system).status] == 1
    assert value(families, "drpanel_audit_head_seq") == AuditEvent.objects.order_by("-seq").first().seq
    assert deleted.pk  # referenced: the deleted artifact exists, and is not counted


def test_workers_live_counts_the_registered_workers(scrape, redis_conn):
    from rq import Worker

    families = parse(scrape())
    assert value(families, "drpanel_workers_live") == 0
    worker = Worker([queues.queue_name("default")], connection=redis_conn, name=f"metrics-test-{secrets.token_hex(4)}")
    # Another panel's worker on the same Redis database is not one of ours.
    foreign = Worker(["drp-another:default"], connection=redis_conn, name=f"metrics-foreign-{secrets.token_hex(4)}")
    worker.register_birth()
    foreign.register_birth()
    try:
        assert value(parse(scrape()), "drpanel_workers_live") == 1
    finally:
        worker.register_death()
        foreign.register_death()


def test_queue_depth_counts_this_installations_waiting_jobs(scrape, redis_conn):
    Queue(queues.queue_name("verify"), connection=redis_conn).enqueue("drpanel.jobs.ping", "x")
    Queue("drp-another:verify", connection=redis_conn).enqueue("drpanel.jobs.ping", "y")
    depths = {labels["queue"]: count for labels, count in parse(scrape())["drpanel_queue_depth"]}
    assert depths == {"default": 0, "backup": 0, "verify": 1, "restore": 0}


def test_prometheus_clients_own_parser_reads_it(scrape):
    from prometheus_client import parser

    System.objects.create(name='a "quoted" name', database_ref="env:DRPANEL_SECRET_UNSET_DB")
    text = scrape()
    families = {family.name: family for family in parser.text_string_to_metric_families(text)}
    assert {"drpanel_health_score", "drpanel_restore_runs", "drpanel_audit_head_seq", "drpanel_queue_depth",
            "drpanel_pool_workers_alive", "drpanel_cron_schedulers"} <= set(families)
    assert [s.labels for s in families["drpanel_health_score"].samples] == [{"system": 'a "quoted" name'}]
    # Both parsers read the same samples.
    strict = parse(text)
    for name, family in families.items():
        assert sorted((tuple(sorted(s.labels.items())), s.value) for s in family.samples) == sorted(
            (tuple(sorted(labels.items())), v) for labels, v in strict[name])


def test_label_values_are_escaped_by_the_formats_rules(scrape):
    System.objects.create(name='a\\b"c\nd', database_ref="env:DRPANEL_SECRET_UNSET_DB")
    assert 'drpanel_health_score{system="a\\\\b\\"c\\nd"}' in scrape()


def test_it_refuses_a_caller_without_a_token_and_audits_it(client):
    response = client.get("/metrics")
    assert response.status_code == 403
    event = AuditEvent.objects.get(action="access.denied")
    assert event.details["attempted"] == "metrics.scrape" and event.actor_username != "system"
    # A flood of anonymous scrapes is audited once a minute per address, not once per request.
    assert client.get("/metrics").status_code == 403
    assert AuditEvent.objects.filter(action="access.denied").count() == 1


def test_it_refuses_a_bad_token_and_a_user_without_a_role(client, outsider):
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer drp_not-a-token").status_code == 403
    _, raw = api_token_create(actor=outsider, user=outsider, name="x", password=PASSWORD)
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 403
    assert AuditEvent.objects.filter(action="access.denied", actor_username="outsider").count() == 1


def test_an_allowed_network_scrapes_without_a_token(client, settings):
    settings.METRICS_ALLOWED_NETWORKS = [ip_network("10.9.0.0/16")]
    assert client.get("/metrics", REMOTE_ADDR="10.9.3.7").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.8.3.7").status_code == 403
    # A forwarded header is not an address: only the socket's counts.
    assert client.get("/metrics", REMOTE_ADDR="10.8.3.7", HTTP_X_FORWARDED_FOR="10.9.3.7").status_code == 403


def test_a_malformed_network_is_refused_at_start(monkeypatch):
    from drpanel.env import ConfigError
    from drpanel.settings import _networks

    monkeypatch.setenv("DRPANEL_METRICS_ALLOWED_NETWORKS", "10.0.0.0/8,not-a-network")
    with pytest.raises(ConfigError, match="DRPANEL_METRICS_ALLOWED_NETWORKS"):
        _networks("DRPANEL_METRICS_ALLOWED_NETWORKS")


def test_no_secret_reaches_the_output(client, auditor, monkeypatch):
    password = f"canary-{secrets.token_hex(8)}"
    monkeypatch.setenv("DRPANEL_SECRET_METRICS_CANARY_DB", f"postgresql://app:{password}@127.0.0.1/app")
    system = System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_METRICS_CANARY_DB")
    Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available", size=1,
                            sha256="d" * 64, storage_key="d", manifest={})
    _, raw = api_token_create(actor=auditor, user=auditor, name="prometheus", password=PASSWORD)
    text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {raw}").content.decode()
    assert "chatbotdysa" in text
    for secret in (password, raw, raw[10:], "DRPANEL_SECRET_METRICS_CANARY_DB"):
        assert secret not in text


def test_per_system_ages_verification_and_rto(scrape, operator):
    now = clock.now()
    system = System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_UNSET_DB")
    full = Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available", size=1,
                                   sha256="e" * 64, storage_key="e", manifest={})
    Artifact.objects.filter(pk=full.pk).update(created_at=now - timedelta(hours=2))
    VerificationRun.objects.create(artifact=full, level="decrypt", state="succeeded",
                                   finished_at=now - timedelta(minutes=30))
    VerificationRun.objects.create(artifact=full, level="restore-test", state="failed", finished_at=now)
    target = Target.objects.create(name="staging", environment="staging", database_ref="env:DRPANEL_SECRET_UNSET_DB",
                                   config_dir="/tmp/x")
    RestoreRun.objects.create(artifact=full, target=target, mode="database-only", state="succeeded",
                              requested_by=operator, rto_seconds=321.5, healthy_at=now - timedelta(minutes=5))
    RestoreRun.objects.create(artifact=full, target=target, mode="database-only", state="succeeded",
                              requested_by=operator, rto_seconds=999, healthy_at=now - timedelta(days=5))
    families = parse(scrape())
    assert value(families, "drpanel_system_last_backup_age_seconds", system="chatbotdysa",
                 kind="full") == pytest.approx(2 * 3600, abs=120)
    assert value(families, "drpanel_system_last_verified_age_seconds",
                 system="chatbotdysa") == pytest.approx(30 * 60, abs=120)
    assert value(families, "drpanel_system_last_rto_seconds", system="chatbotdysa") == 321.5
    assert "drpanel_continuous_rpo_seconds" not in families, "no continuous protection yet: no invented RPO"


def test_the_pool_and_the_cron_heartbeat_are_exposed(scrape, redis_conn):
    from drpanel import cron_heartbeat

    families = parse(scrape())
    assert value(families, "drpanel_pool_workers_alive", pool="default") == 0
    assert value(families, "drpanel_cron_schedulers") == 0
    assert "drpanel_cron_heartbeat_age_seconds" not in families, "no scheduler ever beat"
    cron_heartbeat.beat(redis_conn, "host-a:101:aaaa", started_at=clock.now().timestamp())
    families = parse(scrape())
    assert value(families, "drpanel_cron_schedulers") == 1
    assert 0 <= value(families, "drpanel_cron_heartbeat_age_seconds") < 60


def test_workers_alive_are_counted_per_pool_from_their_queue_lists(scrape, redis_conn):
    from rq import Worker

    made = [Worker(queues.queue_names(pool=pool), connection=redis_conn, name=f"metrics-pool-{secrets.token_hex(4)}")
            for pool in ("b", "b", "", "a")]
    for worker in made:
        worker.register_birth()
    try:
        pools = {labels["pool"]: count for labels, count in parse(scrape())["drpanel_pool_workers_alive"]}
        assert pools == {"a": 1, "b": 2, "default": 1}
        assert value(parse(scrape()), "drpanel_workers_live") == 4
    finally:
        for worker in made:
            worker.register_death()
