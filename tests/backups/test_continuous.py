"""Continuous protection through Barman, against a real PostgreSQL server the tests start and a real Barman.

One protected server and one Barman home serve the whole module (Barman's state on disk — its
slot, its WAL — carries over from test to test, as it would on a worker); each test makes its
own ``System`` row naming that server. Nothing is mocked.
"""

import os
import re
import stat
import time

import pytest
from django.urls import reverse
from django.utils import timezone

from backups import barman
from backups.continuous import continuous_check, continuous_refresh, continuous_tick
from backups.models import ContinuousState, System, WalTimeline
from compliance.health import health_evaluate
from compliance.health_recompute import health_recompute
from compliance.measurements import rpo_for
from compliance.models import Alert, AuditEvent
from drpanel.models import Approval
from drpanel.services import api_token_create
from tests import continuous_support
from tests.continuous_support import (
    PASSWORD,
    URL_VARIABLE,
    ProtectedServer,
    catalog_reaches,
    kill_receiver,
    segment_of_switch,
    streams,
)
from tests.factories import PASSWORD as USER_PASSWORD
from tests.support import assert_only_roles, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

# One protected server and one Barman home for the module.
barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings

@pytest.fixture
def shop(db):
    return System.objects.create(name="shop", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)


def test_the_configuration_names_a_passfile_and_never_the_password(shop, barman_home):
    path = barman.write_server(shop)

    text = path.read_text()
    assert PASSWORD not in text
    assert "slot_name = drpanel_shop" in text and "streaming_archiver = on" in text
    assert "RECOVERY WINDOW OF 14 DAYS" in text
    passfile = barman_home / "pass" / "shop"
    assert f"passfile={passfile}" in text
    assert PASSWORD in passfile.read_text()
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600


def test_a_missing_replication_slot_is_a_clear_failing_check_item(db, server):
    fresh = System.objects.create(name="noslot", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)

    state = continuous_check(fresh)

    assert state.check_ok is False
    slot = next(i for i in state.check_items if i["name"] == "replication_slot")
    assert slot["status"] == "FAILED"
    assert "drpanel_noslot" in slot["hint"] and "doesn't exist" in slot["hint"]
    event = AuditEvent.objects.get(action="continuous.checked", object_id=str(fresh.pk))
    assert event.outcome == "failure"
    assert any(line.startswith("replication_slot:") for line in event.details["failing"])


def test_a_missing_pg_hba_replication_line_is_a_clear_failing_check_item(db, monkeypatch):
    closed = ProtectedServer(replication_hba=False)
    try:
        monkeypatch.setenv("DRPANEL_SECRET_TEST_CLOSED_URL", closed.url)
        system = System.objects.create(name="nohba", database_ref="env:DRPANEL_SECRET_TEST_CLOSED_URL",
                                       continuous_enabled=True)

        state = continuous_check(system)
    finally:
        closed.stop()

    assert state.check_ok is False
    streaming = next(i for i in state.check_items if i["name"] == "postgresql_streaming")
    assert streaming["status"] == "FAILED"
    assert "pg_hba.conf" in streaming["hint"] and "replication" in streaming["hint"]


def test_a_configured_server_streams_and_passes_every_check_item(shop, server):
    streams(server)
    catalog_reaches(shop, segment_of_switch(server))

    # Barman's own wal_archive item turns OK once its archiver has processed a segment, which happens in
    # the background after the catalog sees it (seen failing once on a loaded machine): check again until
    # every item passes, within the deadline; a server that never passes still fails here.
    checks = []

    def every_item_passes():
        checks.append(continuous_check(shop))
        return checks[-1].check_ok

    wait_for(every_item_passes, timeout=60, interval=2, what="every item of barman check passing")
    state = checks[-1]
    assert state.check_error == ""
    assert {"replication_slot", "receive_wal_running", "wal_level", "postgresql_streaming"} <= {
        i["name"] for i in state.check_items}
    assert all(i["status"] == "OK" for i in state.check_items), state.check_items
    assert server.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'drpanel_shop'")[0][0] == 1
    events = AuditEvent.objects.filter(action="continuous.checked", object_id=str(shop.pk)).order_by("seq")
    assert events.last().outcome == "success"


def test_a_killed_receiver_is_restarted_and_the_slot_kept_every_segment(shop, server):
    streams(server)
    first_pid = wait_for(lambda: barman.receiver_pid(shop), what="the WAL receiver")
    catalog_reaches(shop, segment_of_switch(server))
    assert ContinuousState.objects.get(system=shop).streaming_pid == first_pid

    kill_receiver(first_pid)
    wait_for(lambda: barman.receiver_pid(shop) is None, what="the receiver's death")
    # Written while nothing receives: only the replication slot keeps these segments on the server.
    written_meanwhile = [segment_of_switch(server) for _ in range(3)]
    continuous_tick()

    second_pid = wait_for(lambda: barman.receiver_pid(shop), what="a new WAL receiver")
    assert second_pid != first_pid
    timeline = catalog_reaches(shop, written_meanwhile[-1])
    archived = {s.name for s in barman.segments(shop)}
    assert set(written_meanwhile) <= archived
    timeline.refresh_from_db()
    assert timeline.first_missing == ""
    state = ContinuousState.objects.get(system=shop)
    assert state.streaming_restarts == 1 and state.streaming_pid == second_pid
    event = AuditEvent.objects.get(action="continuous.streaming_restarted", object_id=str(shop.pk))
    assert event.details == {"previous_pid": first_pid, "pid": second_pid}


def test_while_barman_waits_the_server_commits_a_transaction_every_tenth_of_a_second(shop, server):
    # Barman archives a closed segment only once its receiver has started the next one, which takes new WAL: a
    # commit every tenth of a second keeps that wait short (0.17 s measured; 0.41 s with one every half second).
    first = int(server.execute("SELECT txid_current()")[0][0])
    with barman.wal_moving(shop):
        time.sleep(1.0)
    nudges = int(server.execute("SELECT txid_current()")[0][0]) - first - 1

    assert nudges >= 5, f"{nudges} commits in a second"


def test_a_wal_gap_is_detected_and_names_the_first_missing_segment(shop, server, barman_home, clients):
    streams(server)
    names = [segment_of_switch(server) for _ in range(3)]
    catalog_reaches(shop, names[-1])
    lost = names[1]
    path = next((barman_home / "shop" / "wals").glob(f"*/{lost}*"))
    aside = barman_home / f"aside-{lost}"
    path.rename(aside)
    try:
        continuous_refresh(shop)

        timeline = WalTimeline.objects.get(system=shop, timeline=1)
        assert timeline.first_missing == lost and timeline.missing == 1
        event = AuditEvent.objects.get(action="continuous.wal_gap", object_id=str(shop.pk))
        assert event.details["first_missing"] == lost
        check = next(c for c in health_evaluate(shop).checks if c.code == "incremental_backup")
        assert not check.passed and lost in check.reason
        page = shop_page(clients, shop)
        assert f"gap: {lost} missing" in page
    finally:
        aside.rename(path)
    continuous_refresh(shop)
    assert WalTimeline.objects.get(system=shop, timeline=1).first_missing == ""


def shop_page(clients, system) -> str:
    return clients["auditor"].get(reverse("backups:system-detail", args=[system.pk])).content.decode()


def test_rpo_now_is_seconds_since_the_last_wal_and_shows_everywhere(shop, server, clients, client, auditor):
    streams(server)
    catalog_reaches(shop, segment_of_switch(server))
    state = ContinuousState.objects.get(system=shop)

    rpo = rpo_for(shop)
    assert rpo.wal_received_at == state.last_wal_at
    assert 0 <= rpo.seconds <= (timezone.now() - state.last_wal_at).total_seconds() + 1
    assert rpo.target_seconds == shop.rpo_target_minutes * 60
    check = next(c for c in health_evaluate(shop).checks if c.code == "incremental_backup")
    assert check.enabled and check.passed and "RPO now" in check.reason
    dashboard = clients["auditor"].get("/api/v1/dashboard").json()["data"]
    assert dashboard["systems"][0]["rpo_seconds"] is not None
    assert dashboard["systems"][0]["rpo_seconds"] <= shop.rpo_target_minutes * 60
    _, token = api_token_create(actor=auditor, user=auditor, name="prometheus", password=USER_PASSWORD)
    before = rpo_for(shop).seconds
    metrics = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").content.decode()
    after = rpo_for(shop).seconds
    scraped = re.search(r'^drpanel_rpo_seconds\{system="shop"\} (\S+)$', metrics, re.M)
    assert scraped and before <= float(scraped[1]) <= after

    # Past the target (the receiver silent for 31 minutes): the health check fails and says why.
    ContinuousState.objects.filter(system=shop).update(last_wal_at=timezone.now() - timezone.timedelta(minutes=31))
    check = next(c for c in health_evaluate(shop).checks if c.code == "incremental_backup")
    assert not check.passed and "RPO target is 1800 s" in check.reason
    assert rpo_for(shop).met is False


def test_the_system_page_says_what_to_set_on_the_server_and_lists_the_check_items(shop, server, clients):
    continuous_check(shop)

    page = shop_page(clients, shop)

    assert "ALTER ROLE postgres WITH REPLICATION;" in page
    assert "host    replication    postgres" in page
    assert "wal_level = replica" in page and "max_wal_senders" in page and "max_replication_slots" in page
    assert "drpanel_shop" in page
    for item in ContinuousState.objects.get(system=shop).check_items:
        assert item["name"] in page


def test_only_an_admin_switches_continuous_protection_and_switching_it_off_needs_a_second_person(
        db, clients, admin):
    system = System.objects.create(name="ledger", database_ref=f"env:{URL_VARIABLE}")
    edit = reverse("backups:system-edit", args=[system.pk])
    form = {"name": "ledger", "database_ref": f"env:{URL_VARIABLE}", "config_paths": "", "schedule_enabled": "on",
            "full_every_hours": 24, "incremental_every_hours": 6, "config_every_hours": 4, "keep_last": 7,
            "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6, "continuous_enabled": "on",
            "rpo_target_minutes": 30, "recovery_window_days": 14}

    assert_only_roles(clients, "post", edit, allowed={"admin"}, data=form)

    system.refresh_from_db()
    assert system.continuous_enabled
    event = AuditEvent.objects.filter(action="system.updated", object_id=str(system.pk)).latest("seq")
    assert event.details["changed"] == {"continuous_enabled": True}

    off = dict(form)
    del off["continuous_enabled"]
    clients["admin"].post(edit, off)
    system.refresh_from_db()
    assert system.continuous_enabled, "switching protection off applied without a second person"
    approval = Approval.objects.get(state="pending")
    assert "continuous_enabled off" in approval.reason


def test_asking_for_a_check_is_for_those_who_start_jobs_and_is_audited(shop, clients, redis_conn):
    url = reverse("backups:system-continuous-check", args=[shop.pk])

    assert_only_roles(clients, "post", url, allowed={"operator", "manager", "admin"})

    assert AuditEvent.objects.filter(action="continuous.check_requested", object_id=str(shop.pk)).count() == 3


def test_rpo_past_its_target_is_audited_and_alerts_and_recovers(shop, server, barman_home):
    streams(server)
    catalog_reaches(shop, segment_of_switch(server))
    pid = wait_for(lambda: barman.receiver_pid(shop), what="the WAL receiver")
    kill_receiver(pid)
    wait_for(lambda: barman.receiver_pid(shop) is None, what="the receiver's death")
    # Nothing received for 31 minutes: every file Barman holds is dated back, and so is the last arrival.
    past = (timezone.now() - timezone.timedelta(minutes=31)).timestamp()
    for path in [*(barman_home / "shop").glob("wals/*/*"), *(barman_home / "shop").glob("streaming/*")]:
        os.utime(path, (past, past))
    ContinuousState.objects.filter(system=shop).update(last_wal_at=timezone.now() - timezone.timedelta(minutes=31))
    # A first refresh before any WAL had arrived may already have crossed the target (no WAL yet is no RPO) and
    # come back: only what this refresh records counts.
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()

    continuous_refresh(shop)
    health_recompute(shop)

    over = AuditEvent.objects.get(action="continuous.rpo_over_target", object_id=str(shop.pk), id__gt=before)
    assert over.details["rpo_seconds"] > over.details["target_seconds"] == 1800
    alert = Alert.objects.get(dedup_key=f"rpo-over-target:{shop.pk}")
    assert alert.state != Alert.State.RESOLVED and alert.severity == "critical"
    assert "RPO target is 1800 s" in alert.message

    continuous_tick()  # the receiver is started again and catches up with the server
    wait_for(lambda: barman.receiver_pid(shop), what="a new WAL receiver")
    wait_for(lambda: continuous_refresh(shop) and rpo_for(shop).met, what="RPO back within its target")
    health_recompute(shop)

    assert AuditEvent.objects.filter(action="continuous.rpo_within_target", object_id=str(shop.pk),
                                     id__gt=over.id).exists()
    alert.refresh_from_db()
    assert alert.state == Alert.State.RESOLVED
