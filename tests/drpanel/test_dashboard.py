"""The dashboard: who may see it, its API's shape, and every figure with its evidence (or an honest empty state)."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from backups.deletion import artifact_delete_request
from backups.models import ArtifactCopy, BackupRun, System
from compliance.approval_kinds import approvals_waiting_for
from compliance.health_recompute import health_recompute
from compliance.measurements import Drill
from drpanel import clock
from drpanel.charts import health_chart, rto_chart, sizes_chart
from drpanel.dashboard import CHART_SLOTS, downsample_scores, on_call, size_bars
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures"]

PANEL_ROLES = {"operator", "manager", "auditor", "admin"}


def page(clients, who="auditor") -> str:
    response = clients[who].get(reverse("drpanel:dashboard"))
    assert response.status_code == 200
    return response.content.decode()


def links(html: str) -> set[str]:
    return set(re.findall(r'href="(/[^"]*)"', html))


# --- who sees it ---------------------------------------------------------------------------------

def test_every_panel_role_sees_the_dashboard_and_an_outsider_is_refused(clients, catalog, healthy):
    assert_only_roles(clients, "get", reverse("drpanel:dashboard"), allowed=PANEL_ROLES)
    assert_only_roles(clients, "get", "/api/v1/dashboard", allowed=PANEL_ROLES)
    assert_only_roles(clients, "get", reverse("drpanel:dashboard-jobs"), allowed=PANEL_ROLES)
    assert_only_roles(clients, "get", reverse("drpanel:health-detail", args=[catalog.system.pk]),
                      allowed=PANEL_ROLES)


def test_a_visitor_who_is_not_signed_in_is_sent_to_sign_in(client, catalog):
    assert client.get(reverse("drpanel:dashboard"))["Location"].startswith("/login/")
    assert client.get(f"/systems/{catalog.system.pk}/health")["Location"].startswith("/login/")
    assert client.get("/api/v1/dashboard").status_code in (401, 403)


def test_a_missing_system_has_no_health_page(clients):
    assert clients["auditor"].get("/systems/999999/health").status_code == 404


# --- the API --------------------------------------------------------------------------------------

def test_the_api_gives_the_worst_systems_health_with_checks_and_evidence(clients, catalog, healthy):
    other = System.objects.create(name="billing", database_ref="env:DRPANEL_SECRET_X",
                                  created_at=clock.now() - timedelta(days=9))
    data = clients["operator"].get("/api/v1/dashboard").json()["data"]
    assert set(data) >= {"backup_health", "rpo_seconds", "rto_seconds", "systems"}
    health = data["backup_health"]
    assert (health["system"], health["score"], health["status"]) == ("billing", 0, "critical")
    assert health["system_id"] == other.pk
    assert [c["code"] for c in health["checks"]] == ["full_backup", "incremental_backup", "config_backup",
                                                     "offsite_copy", "verified"]
    assert set(health["checks"][0]) == {"code", "label", "weight", "enabled", "passed", "reason", "evidence"}
    assert [(s["system"], s["score"], s["status"]) for s in data["systems"]] == [
        ("billing", 0, "critical"), ("chatbotdysa", 100, "healthy")]
    full_check = data["systems"][1]["checks"][0]
    assert full_check["passed"] and full_check["evidence"][0]["url"] == f"/artifacts/{healthy['full'].pk}/"
    assert data["rpo_seconds"] is None, "billing has no verified full: its RPO is not known"
    assert data["rto_seconds"] is None and data["rto"] is None
    assert data["systems"][1]["rpo_seconds"] == 7200


def test_the_api_measures_rpo_from_the_newest_verified_full(clients, catalog, healthy):
    catalog.artifact("full", timedelta(minutes=20))
    data = clients["auditor"].get("/api/v1/dashboard").json()["data"]
    assert data["rpo_seconds"] == 7200, "the 20-minute-old full is not verified: the 2-hour-old one is the RPO"
    assert data["rpo"]["target_seconds"] == 1800 and data["rpo"]["met"] is False
    assert data["rpo"]["evidence"]["url"] == f"/artifacts/{healthy['full'].pk}/"
    assert data["backup_health"]["score"] == 76, "while the health check fails on the unverified newest full"


def test_with_no_system_the_api_has_no_health_to_give(clients):
    data = clients["auditor"].get("/api/v1/dashboard").json()["data"]
    assert data["backup_health"] is None and data["systems"] == [] and data["rpo_seconds"] is None


# --- the page -------------------------------------------------------------------------------------

def test_the_page_shows_the_worst_score_big_and_each_check_with_its_evidence(clients, catalog, healthy):
    ArtifactCopy.objects.filter(location=catalog.offsite).update(status="missing")
    html = page(clients)
    assert re.search(r'data-testid="worst-score">76</a>', html)
    assert 'data-testid="worst-status">warning<' in html
    assert "No off-site copy of the newest full matches (offsite: missing)." in html
    found = links(html)
    assert f"/artifacts/{healthy['full'].pk}/" in found and f"/artifacts/{healthy['config'].pk}/" in found
    assert f"/systems/{catalog.system.pk}/health" in found
    for url in found:
        assert clients["auditor"].get(url).status_code in (200, 302), url


def test_an_unverified_catalog_has_no_rpo_and_no_rto_yet(clients, catalog):
    catalog.artifact("full", timedelta(hours=2))
    html = page(clients)
    assert 'data-testid="rpo-empty"' in html and "no recovery point is proven" in html
    assert "No restore has been timed yet" in html
    assert 'data-testid="rto-chart"' in html


def test_a_verified_full_gives_an_rpo_against_the_30_minute_target(clients, catalog, healthy):
    html = page(clients)
    assert re.search(r'data-testid="rpo-figure">2 h</a>', html)
    assert "target 30 min" in html and "over target" in html


def test_with_no_system_the_page_says_so(clients):
    html = page(clients, "admin")
    assert "No systems are catalogued yet" in html and 'href="/systems/new"' in html


def test_the_charts_are_inline_svg_without_style_and_link_to_their_evidence(clients, catalog, healthy):
    health_recompute(catalog.system)
    html = page(clients)
    assert html.count("<svg") >= 3 and "style=" not in html
    chart = html[html.index('data-testid="size-charts"'):html.index('data-testid="rto-chart"')]
    assert re.search(f'<a href="/artifacts/{healthy["full"].pk}/" aria-label="[^"<>]+"><rect', chart)
    assert re.search(f'<a href="/systems/{catalog.system.pk}/health" aria-label="[^"<>]+"><polyline', html)
    assert "no history before 25 Nov 12:00 UTC" in html


def test_running_jobs_show_their_progress_and_the_fragment_stops_polling_when_none_run(clients, catalog):
    run = BackupRun.objects.create(system=catalog.system, kind="full", state="running", percent=42)
    html = page(clients)
    assert 'data-poll="/dashboard/jobs"' in html
    assert f'href="/backups/runs/{run.pk}/"' in html and 'value="42"' in html
    BackupRun.objects.filter(pk=run.pk).update(state="succeeded", percent=100)
    fragment = clients["auditor"].get(reverse("drpanel:dashboard-jobs")).content.decode()
    assert "data-poll-done" in fragment and "No job is running." in fragment


def test_approvals_wait_for_those_who_may_decide_them(clients, catalog, healthy, operator, manager, auditor):
    approval = artifact_delete_request(actor=operator, artifact=healthy["config"], reason="test artifact")
    assert [a["approval"].pk for a in approvals_waiting_for(manager)] == [approval.pk]
    assert approvals_waiting_for(operator) == [], "never one's own request"
    assert approvals_waiting_for(auditor) == []
    html = page(clients, "manager")
    assert f'href="/artifacts/{healthy["config"].pk}/">Delete artifact #{approval.pk}</a>' in html
    assert "Nothing is waiting for your decision." in page(clients, "auditor")


def test_on_call_is_the_first_active_l1_and_the_chain_behind(clients, roster):
    found = on_call()
    assert found["first"] == roster["l1"]
    assert [(level["level"], level["response_minutes"]) for level in found["chain"]] == [
        ("L1", 5), ("L2", 15), ("L3", 30), ("Emergency", 2)]
    html = page(clients)
    assert "Lena One" in html and "Leo Two" in html and "Vendor Co" not in html


def test_todays_checklists_are_summarised_once_opened(clients, panel_clock):
    assert "Daily: not opened yet" in page(clients)
    clients["operator"].get(reverse("compliance:checklist-today"))
    html = page(clients)
    assert 'href="/checklists/daily/2026-11-25/">Daily 2026-11-25</a>: 0 of 6 complete' in html


def test_the_health_page_lists_the_recorded_history(clients, catalog, healthy):
    health_recompute(catalog.system, trigger="test run")
    ArtifactCopy.objects.filter(location=catalog.offsite).update(status="missing")
    clock.advance(timedelta(minutes=5))
    health_recompute(catalog.system, trigger="copy checked")
    html = clients["auditor"].get(reverse("drpanel:health-detail", args=[catalog.system.pk])).content.decode()
    assert 'data-testid="score">76<' in html
    assert "2 recorded" in html and "copy checked" in html and "test run" in html
    assert "Newest full copied off-site, checksum matching: No off-site copy" in html


# --- charts on their own ---------------------------------------------------------------------------

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_the_rto_chart_draws_each_drill_against_the_target():
    drills = [Drill(NOW - timedelta(days=9), 600, "drill 1", "/restores/1/"),
              Drill(NOW - timedelta(days=2), 1200, "drill 2", "/restores/2/")]
    svg = str(rto_chart(drills, 900))
    assert svg.count("<rect") == 2 and 'fill="#1e7a46"' in svg and 'fill="#b3261e"' in svg
    assert '<a href="/restores/2/" aria-label="drill 2: RTO 20 min (over the target)"><rect' in svg
    assert "target 15 min" in svg and "RTO 20 min (over the target)" in svg


def test_chart_links_are_named_and_not_hidden_inside_an_image_and_a_table_repeats_them():
    drills = [Drill(NOW - timedelta(days=9), 600, "drill 1", "/restores/1/"),
              Drill(NOW - timedelta(days=2), 1200, "drill 2", "/restores/2/")]
    html = str(rto_chart(drills, 900))
    svg, table = html[:html.index("</svg>")], html[html.index("</svg>"):]
    # An image's children are presentational: its links would be out of reach of a screen reader.
    assert 'role="img"' not in svg and 'role="group"' in svg and 'aria-labelledby="rto-chart-title"' in svg
    assert re.findall(r'<a href="(/restores/\d/)" aria-label="[^"]+">', svg) == ["/restores/1/", "/restores/2/"]
    rows = re.findall(r"<tr><td><a href=\"(/restores/\d/)\">(drill \d)</a></td><td>[^<]+</td><td>([^<]+)</td>"
                      r"<td>(within|over)</td></tr>", table)
    assert rows == [("/restores/1/", "drill 1", "10 min", "within"), ("/restores/2/", "drill 2", "20 min", "over")]

    bars = [{"at": NOW - timedelta(hours=n), "value": 1000 * n, "color": "#000", "url": f"/artifacts/{n}/",
             "label": f"full {n}"} for n in (1, 2, 3)]
    html = str(sizes_chart(bars, NOW - timedelta(days=30), NOW, title="full backup sizes"))
    svg, table = html[:html.index("</svg>")], html[html.index("</svg>"):]
    assert len(re.findall(r'<a href="/artifacts/\d/" aria-label="full \d"><rect', svg)) == 3
    assert re.findall(r'<td><a href="/artifacts/(\d)/">full \d</a></td>', table) == ["1", "2", "3"]


def test_chart_texts_are_escaped():
    series = [{"name": "<script>", "color": "#000", "url": "/x?a=1&b=2", "points": [(NOW, 50)],
               "first_recorded": NOW}]
    svg = str(health_chart(series, NOW - timedelta(days=30), NOW))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "/x?a=1&amp;b=2" in svg
    assert "/x?a=1&b" not in svg, "the table's links are escaped too"
    bars = [{"at": NOW, "value": 10, "color": "#000", "url": "/a", "label": 'x" onload="y'}]
    sizes = str(sizes_chart(bars, NOW - timedelta(days=30), NOW, title="t"))
    assert 'x" onload' not in sizes and "x&quot; onload" in sizes


def test_a_health_chart_without_any_score_says_so():
    series = [{"name": "s", "color": "#000", "url": "/", "points": [], "first_recorded": None}]
    assert "No score recorded yet" in str(health_chart(series, NOW - timedelta(days=30), NOW))


def test_a_dense_history_is_drawn_per_slot_without_hiding_a_dip():
    since = NOW - timedelta(days=30)
    points = [(since + timedelta(minutes=5 * n), 100 if n % 2 else 90) for n in range(8000)]
    points[4001] = (points[4001][0], 12)
    drawn = downsample_scores(points, since, NOW)
    assert len(drawn) <= 2 * CHART_SLOTS
    assert min(score for _, score in drawn) == 12, "the slot's lowest score is kept"
    assert drawn[-1][1] == points[-1][1], "and each slot ends on its last score"
    few = points[:10]
    assert downsample_scores(few, since, NOW) == few


def test_dense_backups_are_one_linked_bar_per_slot_the_largest(catalog):
    catalog.artifact("incremental", timedelta(hours=1, minutes=10))
    large = catalog.artifact("incremental", timedelta(hours=1, minutes=5))
    type(large).objects.filter(pk=large.pk).update(size=10 << 20)

    bars = size_bars(clock.now() - timedelta(days=30), clock.now(), {})["incremental"]
    assert len(bars) == 1 and bars[0]["url"] == f"/artifacts/{large.pk}/"
    assert "10.0\xa0MB" in bars[0]["label"] and "the largest of 2 in its 6-hour slot" in bars[0]["label"]


def test_a_continuously_protected_system_shows_its_rpo_in_seconds_linked_to_its_wal_stream(clients, catalog,
                                                                                         healthy):
    from backups.models import ContinuousState

    streamed = System.objects.create(name="orders-db", database_ref="env:DRPANEL_SECRET_NOWHERE_URL",
                                     continuous_enabled=True, rpo_target_minutes=5)
    ContinuousState.objects.create(system=streamed, last_wal_at=clock.now() - timedelta(seconds=7))
    html = page(clients)
    rows = re.search(r'data-testid="continuous-rpos".*?</table>', html, re.S).group(0)
    assert 'data-system="orders-db"' in rows and f'/systems/{streamed.pk}/#continuous">orders-db</a>' in rows
    assert re.search(rf'href="/systems/{streamed.pk}/#continuous" data-testid="continuous-rpo-seconds">7 s</a>',
                     rows)
    assert "<td>300 s</td>" in rows and "within target" in rows
    assert 'data-system="shop"' not in rows, "a system protected by pg_dump only is not listed"
    data = clients["auditor"].get("/api/v1/dashboard").json()["data"]
    assert next(s for s in data["systems"] if s["system"] == "orders-db")["rpo_seconds"] == 7


def test_the_worst_rpo_from_a_wal_stream_is_a_figure_in_seconds(clients, catalog):
    from backups.models import ContinuousState

    System.objects.filter(pk=catalog.system.pk).update(continuous_enabled=True, rpo_target_minutes=1)
    ContinuousState.objects.create(system=catalog.system, last_wal_at=clock.now() - timedelta(seconds=95))
    html = page(clients)
    assert re.search(rf'href="/systems/{catalog.system.pk}/#continuous" data-testid="rpo-figure">95 s</a>', html)
    assert "target 60 s" in html and "over target" in html and "last WAL received" in html
