"""The chart slots the database keeps (backups_artifactslot, compliance_healthslot): after any write — rows
created one by one or in bulk, moved, resized, marked failed, deleted, truncated — they equal the slots computed
from the rows themselves, and the charts drawn from them equal the charts drawn from every row."""

from datetime import timedelta

import pytest
from django.db import connection

from backups.models import Artifact, System
from compliance.models import HealthSnapshot
from drpanel import clock
from drpanel.charts import PALETTE
from drpanel.dashboard import (
    CHART_SLOTS,
    HEALTH_SLOT,
    SIZE_SLOT,
    WIDE_GROUP,
    downsample_scores,
    health_series,
    size_bars,
    slot_start,
)

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures"]

FINISHED_EXCLUDES = (Artifact.Status.WRITING, Artifact.Status.FAILED)

# What each kept slot must hold, computed from the rows (the same definition as the migrations', written again).
ARTIFACT_SLOTS_FROM_ROWS = """
    SELECT DISTINCT ON (slot, system_id, kind) slot, system_id, kind, count(*) OVER w, id, size, created_at, status
    FROM (SELECT *, date_bin('6 hours', created_at, '1970-01-01T00:00:00Z') AS slot FROM backups_artifact
          WHERE size IS NOT NULL AND status NOT IN ('writing', 'failed')) AS a
    WINDOW w AS (PARTITION BY slot, system_id, kind)
    ORDER BY slot, system_id, kind, size DESC, created_at, id
"""
KEPT_ARTIFACT_SLOTS = """
    SELECT slot, system_id, kind, count, artifact_id, size, created_at, status FROM backups_artifactslot
    ORDER BY slot, system_id, kind
"""
HEALTH_SLOTS_FROM_ROWS = """
    SELECT date_bin('3 hours', at, '1970-01-01T00:00:00Z') AS slot, system_id, count(*), min(score),
           (array_agg(score ORDER BY at DESC, id DESC))[1], min(at)
    FROM compliance_healthsnapshot GROUP BY 1, 2 ORDER BY 1, 2
"""
KEPT_HEALTH_SLOTS = "SELECT slot, system_id, count, lowest, last, first_at FROM compliance_healthslot ORDER BY 1, 2"


def rows(sql: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def assert_kept_slots_are_the_rows():
    assert rows(KEPT_ARTIFACT_SLOTS) == rows(ARTIFACT_SLOTS_FROM_ROWS)
    assert rows(KEPT_HEALTH_SLOTS) == rows(HEALTH_SLOTS_FROM_ROWS)


def bulk_artifacts(system, kind: str, *, every: timedelta, count: int, offset=timedelta(minutes=7)) -> None:
    """``count`` artifacts ``every`` apart back from now (``offset`` before it), in one statement, sizes varied."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO backups_artifact (id, system_id, kind, format, encryption, status, source, created_at, size, "
            "sha256, plaintext_sha256, storage_key, manifest, last_verified_level, key_id, quarantine_reason) "
            "SELECT gen_random_uuid(), %s, %s, 'pg_custom', '', "
            "CASE WHEN n %% 11 = 0 THEN 'failed' WHEN n %% 13 = 0 THEN 'quarantined' ELSE 'available' END, "
            "'panel', %s - %s - n * %s, CASE WHEN n %% 17 = 0 THEN NULL ELSE 1000 + (n * 7919) %% 97 END, "
            "%s, '', %s || '/' || n, '{}', '', '', '' FROM generate_series(0, %s - 1) AS n",
            [system.pk, kind, clock.now(), offset, every, "ab" * 32, kind, count])


def bulk_snapshots(system, *, every: timedelta, count: int, offset=timedelta(minutes=4)) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO compliance_healthsnapshot (system_id, at, score, status, checks, fingerprint, trigger) "
            "SELECT %s, %s - %s - n * %s, 10 + (n * 37) %% 91, 'warning', '[]', n::text, 'test' "
            "FROM generate_series(0, %s - 1) AS n", [system.pk, clock.now(), offset, every, count])


def varied(catalog) -> list[System]:
    """Three systems: dense incrementals and scores, sparse fulls, equal sizes, unfinished and unsized rows."""
    systems = [catalog.system] + [
        System.objects.create(name=f"app-{n}", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL") for n in range(2)]
    for n, system in enumerate(systems):
        bulk_artifacts(system, "incremental", every=timedelta(minutes=13 + n), count=400)
        bulk_artifacts(system, "full", every=timedelta(hours=23), count=40)
        bulk_snapshots(system, every=timedelta(minutes=5 + 2 * n), count=CHART_SLOTS * 3)
    for age in (timedelta(hours=1), timedelta(hours=1, minutes=1)):  # equals: the earliest is the slot's
        catalog.artifact("config", age, system=systems[1])
    catalog.artifact("config", timedelta(hours=2), status="writing", system=systems[2])
    return systems


def bars_from_rows(since, now, colors) -> dict[str, list[tuple]]:
    """The size charts' bars computed in Python from every artifact: (url, count, of all systems) per kind."""
    merged = len(colors) > len(PALETTE)
    groups: dict[tuple, list[Artifact]] = {}
    for a in Artifact.objects.filter(created_at__gte=since, created_at__lte=now, size__isnull=False).exclude(
            status__in=FINISHED_EXCLUDES):
        key = (a.kind, slot_start(a.created_at, SIZE_SLOT), 0 if merged else a.system_id)
        groups.setdefault(key, []).append(a)
    bars: dict[str, list[tuple]] = {}
    for (kind, _, _), found in groups.items():
        largest = min(found, key=lambda a: (-a.size, a.created_at, str(a.id)))
        bars.setdefault(kind, []).append((largest.created_at, str(largest.id), len(found)))
    return {kind: [(f"/artifacts/{pk}/", count) for _, pk, count in sorted(found)] for kind, found in bars.items()}


def bars_drawn(since, now, colors) -> dict[str, list[tuple]]:
    drawn = size_bars(since, now, colors)
    result = {}
    for kind, bars in drawn.items():
        result[kind] = [(b["url"], int(b["label"].split("the largest of ")[1].split(",")[0].split(" ")[0])
                         if "the largest of" in b["label"] else 1) for b in bars]
    return result


def test_the_kept_slots_are_the_rows_after_every_kind_of_write(catalog):
    systems = varied(catalog)
    assert_kept_slots_are_the_rows()
    assert len(rows(KEPT_ARTIFACT_SLOTS)) > 100 and len(rows(KEPT_HEALTH_SLOTS)) > 50

    incrementals = Artifact.objects.filter(system=systems[0], kind="incremental")
    largest = max(incrementals.exclude(status__in=FINISHED_EXCLUDES).exclude(size=None), key=lambda a: a.size)
    Artifact.objects.filter(pk=largest.pk).update(status=Artifact.Status.FAILED)  # the largest of its slot fails
    Artifact.objects.filter(system=systems[1], kind="incremental", size__lt=1030).update(size=5000)  # bulk resize
    moved = incrementals.order_by("created_at")[5]
    moved.created_at -= timedelta(hours=7)  # into another slot
    moved.save(update_fields=["created_at"])
    Artifact.objects.filter(system=systems[0], status=Artifact.Status.QUARANTINED).update(
        last_verified_level="checksum")  # a change the slots ignore
    Artifact.objects.filter(system=systems[2], kind="full", created_at__lt=clock.now() - timedelta(days=20)).delete()
    assert_kept_slots_are_the_rows()

    HealthSnapshot.objects.filter(system=systems[1], score__lt=30).delete()
    HealthSnapshot.objects.filter(system=systems[0], score__gt=90).update(score=5)
    latest = HealthSnapshot.objects.filter(system=systems[2]).order_by("-at").first()
    HealthSnapshot.objects.create(system=systems[2], at=latest.at, score=66, status="critical", fingerprint="same at")
    assert_kept_slots_are_the_rows()

    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the test's transaction: deferred checks first
        cursor.execute("TRUNCATE compliance_healthsnapshot, backups_artifactcopy, backups_artifact CASCADE")
    assert rows(KEPT_ARTIFACT_SLOTS) == [] and rows(KEPT_HEALTH_SLOTS) == []


@pytest.mark.parametrize("systems_drawn", [3, len(PALETTE) + 1])
def test_the_size_charts_from_the_kept_slots_are_the_charts_from_every_row(catalog, systems_drawn):
    systems = varied(catalog)
    systems += [System.objects.create(name=f"more-{n}", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL")
                for n in range(systems_drawn - len(systems))]
    colors = {s.pk: PALETTE[n % len(PALETTE)] for n, s in enumerate(systems)}
    now = clock.now()
    # Windows on the slots' edges and between them: partial first and last slots are read from the rows.
    for since, until in ((now - timedelta(days=30), now), (now - timedelta(days=3, minutes=41), now - timedelta(
            hours=2, minutes=19)), (now - timedelta(hours=5), now - timedelta(hours=4)),
                         (slot_start(now - timedelta(days=2), SIZE_SLOT), slot_start(now, SIZE_SLOT))):
        expected = bars_from_rows(since, until, colors)
        assert sum(len(b) for b in expected.values()) > 0
        assert bars_drawn(since, until, colors) == expected, (since, until)


@pytest.mark.parametrize("systems_drawn", [3, len(PALETTE) + 1])
def test_the_health_chart_from_the_kept_slots_is_the_chart_from_every_row(catalog, systems_drawn):
    systems = varied(catalog)
    quiet = [System.objects.create(name=f"quiet-{n}", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL")
             for n in range(systems_drawn - len(systems))]
    width = HEALTH_SLOT * (WIDE_GROUP if systems_drawn > len(PALETTE) else 1)  # many lines: fewer points each
    now = clock.now()
    for since, until in ((now - timedelta(days=30), now), (now - timedelta(days=3, minutes=41), now - timedelta(
            hours=2, minutes=19)), (slot_start(now - timedelta(days=2), HEALTH_SLOT), slot_start(now, HEALTH_SLOT))):
        drawn = health_series(systems + quiet, since, until)
        assert [(s["points"], s["first_recorded"]) for s in drawn[len(systems):]] == [([], None)] * len(quiet)
        for system, series in zip(systems, drawn, strict=False):
            snapshots = system.health_snapshots.order_by("at", "pk")
            before = snapshots.filter(at__lt=since).last()
            points = ([(since, before.score)] if before else []) + list(
                snapshots.filter(at__gte=since, at__lte=until).values_list("at", "score"))
            assert len(points) > CHART_SLOTS, "dense: drawn by slot"
            assert series["points"] == downsample_scores(points, since, until, width), (system.name, since, until)
            assert series["first_recorded"] == (before.at if before else points[0][0])


def test_a_new_artifact_a_failed_one_and_a_deleted_one_reach_the_size_chart(catalog):
    now = clock.now()
    since = now - timedelta(days=30)
    catalog.artifact("full", timedelta(hours=9))
    small = catalog.artifact("full", timedelta(hours=8))
    assert slot_start(small.created_at, SIZE_SLOT) + SIZE_SLOT <= now, "a whole slot: read from the kept slots"

    def bars():
        return [(b["url"], b["label"]) for b in size_bars(since, now, {})["full"]]

    large = catalog.artifact("full", timedelta(hours=7))
    Artifact.objects.filter(pk=large.pk).update(size=9 << 20)
    assert bars()[0][0] == f"/artifacts/{large.pk}/" and "the largest of 3 in its 6-hour slot" in bars()[0][1]
    Artifact.objects.filter(pk=large.pk).update(status=Artifact.Status.FAILED)
    assert bars()[0][0] != f"/artifacts/{large.pk}/" and "the largest of 2" in bars()[0][1]
    large.copies.all().delete()
    Artifact.objects.filter(pk=large.pk).delete()
    Artifact.objects.filter(pk=small.pk).update(size=8 << 20)
    assert bars()[0][0] == f"/artifacts/{small.pk}/" and "the largest of 2" in bars()[0][1]


def test_a_new_score_and_a_deleted_one_reach_the_health_chart(catalog):
    now = clock.now()
    since = now - timedelta(days=30)
    system = catalog.system
    bulk_snapshots(system, every=timedelta(minutes=10), count=CHART_SLOTS + 10)
    dip_at = now - timedelta(hours=7, minutes=30)
    assert slot_start(dip_at, HEALTH_SLOT) + HEALTH_SLOT <= now, "a whole slot: read from the kept slots"
    assert 3 not in [score for _, score in health_series([system], since, now)[0]["points"]]
    dip = system.health_snapshots.create(at=dip_at, score=3, status="critical", checks=[], fingerprint="dip")
    assert (slot_start(dip_at, HEALTH_SLOT), 3) in health_series([system], since, now)[0]["points"]
    dip.delete()
    assert 3 not in [score for _, score in health_series([system], since, now)[0]["points"]]


@pytest.mark.django_db(transaction=True)
def test_two_writers_in_one_slot_at_once_both_reach_it():
    import threading
    import uuid

    import psycopg

    system = System.objects.create(name="busy", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL")
    settings = connection.settings_dict
    url = f"postgresql://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
    insert = ("INSERT INTO backups_artifact (id, system_id, kind, format, encryption, status, source, created_at, "
              "size, sha256, plaintext_sha256, key_id, storage_key, manifest, last_verified_level, quarantine_reason) "
              "VALUES (%s, %s, 'config', 'config_tar', '', 'available', 'panel', %s, %s, '', '', '', 'k', '{}', '', "
              "'')")
    at = slot_start(clock.now(), SIZE_SLOT) - SIZE_SLOT + timedelta(minutes=30)
    with psycopg.connect(url, password=settings["PASSWORD"] or None) as first, psycopg.connect(
            url, password=settings["PASSWORD"] or None) as second:
        first.execute(insert, (uuid.uuid4(), system.pk, at, 100))

        def write_second():
            second.execute(insert, (uuid.uuid4(), system.pk, at + timedelta(minutes=1), 200))
            second.commit()
        writer = threading.Thread(target=write_second)
        writer.start()
        writer.join(timeout=1)
        assert writer.is_alive(), "the second writer waits for the first one's slot"
        first.commit()
        writer.join(timeout=10)
    assert rows(KEPT_ARTIFACT_SLOTS) == rows(ARTIFACT_SLOTS_FROM_ROWS)
    assert [(count, size) for _, system_id, _, count, _, size, _, _ in rows(KEPT_ARTIFACT_SLOTS)
            if system_id == system.pk] == [(2, 200)]
