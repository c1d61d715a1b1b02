"""The dashboard and /metrics at many systems: their queries do not grow with the systems, and the health of
every system loaded at once (``compliance.health_many``) is what each system's own page computes."""

import ipaddress
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from backups.models import Artifact, ContinuousState, StorageLocation, System, WalTimeline
from compliance.health import health_evaluate
from compliance.health_many import health_facts, health_many, rpo_many
from compliance.measurements import rpo_for
from drpanel import clock
from drpanel.charts import PALETTE
from drpanel.dashboard import (
    CHART_SLOTS,
    CHECK_TABLES_UP_TO,
    HISTORY_DAYS,
    downsample_scores,
    health_series,
    size_bars,
)
from restores.models import VerificationRun

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures"]


def bulk_history(system, *, incrementals: int, snapshots: int) -> None:
    """Rows in bulk, as a busy installation holds them: an incremental every 15 minutes back from now with an
    off-site copy each, and a health snapshot every 15 minutes whose score changes every time."""
    now = clock.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO backups_artifact (id, system_id, kind, format, encryption, status, source, created_at, size, "
            "sha256, plaintext_sha256, storage_key, manifest, last_verified_level, offsite_verified_at, key_id, "
            "last_verified_at, quarantine_reason) "
            "SELECT gen_random_uuid(), %s, 'incremental', 'pg_custom', '', 'available', 'panel', "
            "%s - n * interval '15 minutes', 1000 + (n * 7919) %% 5000, %s, '', 'incremental/' || n, '{}', '', "
            "NULL, '', NULL, '' FROM generate_series(1, %s) AS n",
            [system.pk, now, "ab" * 32, incrementals])
        cursor.execute(
            "INSERT INTO compliance_healthsnapshot (system_id, at, score, status, checks, fingerprint, trigger) "
            "SELECT %s, %s - n * interval '15 minutes', CASE WHEN n %% 2 = 0 THEN 100 ELSE 70 END, "
            "CASE WHEN n %% 2 = 0 THEN 'healthy' ELSE 'warning' END, '[]', n::text, 'bench' "
            "FROM generate_series(1, %s) AS n", [system.pk, now, snapshots])


def add_systems(catalog, count: int) -> list[System]:
    """``count`` systems like the catalog's: a verified full copied off-site (with the run that verified it),
    a config backup and a dense history."""
    systems = []
    for n in range(count):
        system = System.objects.create(name=f"app-{n:02d}", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL",
                                       config_paths=["/etc/app"], incremental_enabled=True,
                                       created_at=clock.now() - timedelta(days=60))
        full = catalog.artifact("full", timedelta(hours=2 + n), verified="decrypt", system=system)
        VerificationRun.objects.create(artifact=full, level="decrypt", state="succeeded", reached_level="decrypt",
                                       finished_at=full.last_verified_at)
        catalog.artifact("config", timedelta(hours=1), system=system)
        bulk_history(system, incrementals=300, snapshots=CHART_SLOTS + 60)
        systems.append(system)
    return systems


def streamed(catalog) -> System:
    """A continuously protected system with a WAL gap on its second timeline."""
    system = System.objects.create(name="streamed", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL",
                                   continuous_enabled=True, rpo_target_minutes=5)
    ContinuousState.objects.create(system=system, last_wal_at=clock.now() - timedelta(seconds=40))
    for timeline, missing in ((1, ""), (2, "000000020000000000000007"), (3, "000000030000000000000001")):
        WalTimeline.objects.create(system=system, timeline=timeline, first_segment="x", last_segment="y",
                                   first_missing=missing, missing=1 if missing else 0)
    catalog.artifact("base", timedelta(hours=1), verified="manifest", system=system)
    return system


def queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return len(captured.captured_queries)


@pytest.fixture
def metrics_open(settings):
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]


def test_the_dashboard_and_metrics_make_as_many_queries_for_twenty_systems_as_for_one(clients, catalog, healthy,
                                                                                      metrics_open):
    streamed(catalog)
    add_systems(catalog, 1)
    dashboard = reverse("drpanel:dashboard")
    pages = (dashboard, "/api/v1/dashboard", "/metrics")
    for url in pages:  # warm: sessions, content types, permissions
        queries(clients["auditor"], url)
    with_one = {url: queries(clients["auditor"], url) for url in pages}

    add_systems_from = System.objects.count()
    for n in range(19):
        system = System.objects.create(name=f"more-{n:02d}", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL",
                                       config_paths=["/etc/app"], incremental_enabled=True)
        full = catalog.artifact("full", timedelta(hours=3), verified="decrypt", system=system)
        VerificationRun.objects.create(artifact=full, level="decrypt", state="succeeded", reached_level="decrypt",
                                       finished_at=full.last_verified_at)
        bulk_history(system, incrementals=50, snapshots=CHART_SLOTS + 10)
    assert System.objects.count() == add_systems_from + 19

    with_twenty = {url: queries(clients["auditor"], url) for url in pages}
    assert with_twenty == with_one, "a query per system crept back in"
    assert with_one[dashboard] < 50


def test_the_health_of_many_systems_at_once_is_each_systems_own(catalog, healthy):
    now = clock.now()
    add_systems(catalog, 2)
    streamed(catalog)
    quiet = System.objects.create(name="quiet", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL")
    stale = System.objects.create(name="stale", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL",
                                  config_paths=["/etc/stale"], incremental_enabled=True)
    catalog.artifact("full", timedelta(days=3), verified="checksum", offsite="checksum_mismatch", system=stale)
    catalog.artifact("full", timedelta(hours=1), status="quarantined", system=stale)
    catalog.artifact("incremental", timedelta(hours=9), system=stale)
    old = System.objects.create(name="old-verified", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL")
    catalog.artifact("full", timedelta(hours=5), verified="restore-test", verified_age=timedelta(hours=30),
                     offsite=None, system=old)
    catalog.artifact("full", timedelta(hours=50), verified="decrypt", system=old)
    systems = list(System.objects.order_by("name"))
    assert {s.name for s in systems} >= {"quiet", "stale", "old-verified", "streamed", quiet.name}

    facts = health_facts(systems, now)
    together = health_many(systems, known=facts)
    one_by_one = [health_evaluate(system, now) for system in systems]
    assert [h.as_dict() for h in together] == [h.as_dict() for h in one_by_one]
    assert together == one_by_one
    assert len({h.score for h in together}) > 2, "the systems differ, so the comparison means something"
    rpos = rpo_many(systems, facts)
    assert [rpos[s.pk].as_dict() for s in systems] == [rpo_for(s, now).as_dict() for s in systems]

    StorageLocation.objects.filter(role="offsite").update(enabled=False)
    assert ([h.as_dict() for h in health_many(systems, now)]
            == [health_evaluate(system, now).as_dict() for system in systems]), "no off-site location enabled"


def test_a_dense_health_history_is_drawn_from_the_databases_slots_as_from_every_row(catalog):
    system = add_systems(catalog, 1)[0]
    now = clock.now()
    since = now - timedelta(days=HISTORY_DAYS)
    rows = list(system.health_snapshots.filter(at__gte=since).order_by("at", "pk").values_list("at", "score"))
    assert len(rows) > CHART_SLOTS
    drawn = health_series([system], since, now)[0]
    assert drawn["points"] == downsample_scores(rows, since, now)
    assert drawn["first_recorded"] == rows[0][0]


def test_a_quiet_health_history_keeps_the_time_of_each_change(catalog):
    now = clock.now()
    since = now - timedelta(days=HISTORY_DAYS)
    system = catalog.system
    for age, score in ((timedelta(days=40), 70), (timedelta(days=10), 70), (timedelta(days=9, hours=23), 100),
                       (timedelta(hours=1), 40)):
        system.health_snapshots.create(at=now - age, score=score, status="warning", checks=[], fingerprint="x")
    drawn = health_series([system], since, now)[0]
    assert drawn["points"] == [(since, 70), (now - timedelta(days=9, hours=23), 100), (now - timedelta(hours=1), 40)]
    assert drawn["first_recorded"] == now - timedelta(days=40)


def test_with_more_systems_than_colours_a_size_slot_shows_the_largest_artifact_of_all_of_them(catalog):
    now = clock.now()
    systems = [System.objects.create(name=f"s{n}", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL")
               for n in range(len(PALETTE) + 1)]
    sizes = {}
    for n, system in enumerate(systems):
        artifact = catalog.artifact("full", timedelta(hours=2, minutes=n), system=system)
        Artifact.objects.filter(pk=artifact.pk).update(size=(n + 1) << 20)
        sizes[artifact.pk] = (n + 1) << 20
    largest = max(sizes, key=sizes.get)
    colors = {s.pk: PALETTE[n % len(PALETTE)] for n, s in enumerate(systems)}

    bars = size_bars(now - timedelta(days=HISTORY_DAYS), now, colors)["full"]
    assert len(bars) == 1 and bars[0]["url"] == f"/artifacts/{largest}/"
    assert f"the largest of {len(systems)}, of all systems, in its 6-hour slot" in bars[0]["label"]

    few = {s.pk: colors[s.pk] for s in systems[:len(PALETTE)]}
    per_system = size_bars(now - timedelta(days=HISTORY_DAYS), now, few)["full"]
    assert len(per_system) == len(systems), "with as many colours as systems, each system keeps its bars"
    assert {b["url"] for b in per_system} == {f"/artifacts/{pk}/" for pk in sizes}



def test_with_more_systems_than_check_tables_a_healthy_system_is_one_line_linked_to_its_checks(clients, catalog,
                                                                                             healthy):
    add_systems(catalog, CHECK_TABLES_UP_TO - 1)
    assert System.objects.count() == CHECK_TABLES_UP_TO
    html = clients["auditor"].get(reverse("drpanel:dashboard")).content.decode()
    assert all(f'data-testid="checks-{s.pk}"' in html for s in System.objects.all()), "few systems: every table"
    assert 'data-testid="healthy-systems"' not in html

    stale = System.objects.create(name="stale", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL")  # no full
    html = clients["auditor"].get(reverse("drpanel:dashboard")).content.decode()
    assert f'data-testid="checks-{stale.pk}"' in html and 'data-testid="evidence-' in html, "not healthy: its table"
    healthy_systems = System.objects.exclude(pk=stale.pk)
    for system in healthy_systems:
        assert f'data-testid="checks-{system.pk}"' not in html, system.name
        health = f"/systems/{system.pk}/health"
        assert re.search(rf'<th scope="row"><a href="{health}">{system.name}</a></th>\s*<td class="num"><a '
                         rf'href="{health}" data-testid="score-{system.pk}">(9\d|100)</a>', html), system.name
    assert f"Healthy systems ({healthy_systems.count()})" in html
