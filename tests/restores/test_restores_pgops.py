"""Database operations of a restore, against the real PostgreSQL server and the real pg_restore."""

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from restores import pg
from restores.pg import CopyKind, SwapState
from tests.restore_support import SAMPLE_COUNTS, make_archive, new_run_id

pytest_plugins = ["tests.restore_fixtures"]
ROOT = Path(__file__).resolve().parents[2]


# --- names and versions ----------------------------------------------------------------------


def test_copy_names_carry_the_run_tag_and_fit_in_63_bytes():
    run = "3f2b8c1e-9a7d-4c55-b0e1-2d4f6a8b9c0d"
    assert pg.copy_name("shop", run, CopyKind.SIDE) == "shop__restore_3f2b8c1e9a7d"
    assert pg.copy_name("shop", run, "pre") == "shop__pre_3f2b8c1e9a7d"
    assert pg.parse_copy_name("shop__failed_3f2b8c1e9a7d").kind == CopyKind.FAILED
    assert pg.parse_copy_name("shop") is None
    assert pg.parse_copy_name("shop__restore_short") is None
    longest = "d" * 41
    assert len(pg.copy_name(longest, run, "restore")) == 63
    with pytest.raises(pg.UnsafeDatabaseName, match="too long"):
        pg.copy_name(longest + "d", run, "restore")


def test_major_versions_compare_across_the_old_and_new_numbering():
    assert pg.major_number("16.2") == 160000
    assert pg.major_number("9.6.24") == 90600
    assert pg.major_number(150020) == 150000
    assert pg.major_number(90624) == 90600
    assert pg.major_number("15.20 (Debian 15.20-0+deb12u1)") < pg.major_number("16.2")


def test_it_reads_the_archive_header(sample_archive):
    header = pg.read_archive_header(sample_archive)
    assert header.format == "custom"
    assert header.database.startswith("drt_")
    assert header.pg_dump_major >= 100000
    assert isinstance(header.created_at, datetime)


def test_it_refuses_what_is_not_a_custom_format_archive(tmp_path):
    plain = tmp_path / "plain.sql"
    plain.write_text("CREATE TABLE t (id int);\n")
    with pytest.raises(pg.ArchiveError, match="not a pg_dump custom-format archive"):
        pg.read_archive_header(plain)
    with pytest.raises(pg.ArchiveError, match="truncated"):
        pg.parse_archive_header(b"PGDMP\x01\x0e\x00\x04\x08\x01")


def test_it_chooses_a_pg_restore_at_least_as_new_as_the_archive_and_the_server(sample_archive):
    header = pg.read_archive_header(sample_archive)
    server = pg.server_version_num(os.environ["DATABASE_URL"])
    tool = pg.choose_pg_restore(archive=header, server_version=server)
    assert tool.major >= header.pg_dump_major and tool.major >= pg.major_number(server)
    for candidate in pg.pg_restore_candidates():
        chosen = pg.choose_pg_restore(server_version=candidate.major)
        assert chosen.major >= candidate.major


def test_it_says_clearly_when_no_pg_restore_is_new_enough(sample_archive):
    header = pg.read_archive_header(sample_archive)
    future = pg.ArchiveHeader(**{**vars(header), "pg_dump_version": "99.1"})
    with pytest.raises(pg.NoSuitablePgRestore) as refused:
        pg.choose_pg_restore(archive=future)
    message = str(refused.value)
    assert "at least version 99" in message and "pg_dump 99.1" in message and "PG_BIN_DIR" in message
    assert "found:" in message


def test_pg_bin_dir_comes_first_when_it_is_new_enough(settings, tmp_path):
    candidates = pg.pg_restore_candidates()
    oldest = min(candidates, key=lambda t: t.major)
    settings.PG_BIN_DIR = str(Path(oldest.path).parent)
    assert pg.pg_restore_candidates()[0].path == oldest.path
    assert pg.choose_pg_restore(server_version=oldest.major).path == oldest.path


# --- the structure check and planning ---------------------------------------------------------


def test_the_structure_check_lists_the_archive(sample_archive):
    listing = pg.list_archive(sample_archive)
    assert listing.counts["TABLE"] == 3
    assert listing.counts["TABLE DATA"] == 3
    assert listing.counts["FK CONSTRAINT"] == 1
    assert listing.counts["INDEX"] == 2
    assert set(listing.table_data) == set(SAMPLE_COUNTS)
    assert listing.toc_entries > len(listing.entries) > 0


def test_the_structure_check_reads_a_stream_without_consuming_all_of_it(sample_archive):
    data = sample_archive.read_bytes()
    handed_out = []

    def chunks():
        # The archive, then 64 MB more: pg_restore --list stops after the table of contents.
        for start in range(0, 64 * 1024 * 1024, 4096):
            handed_out.append(4096)
            yield data[start:start + 4096] if start < len(data) else b"\0" * 4096

    listing = pg.list_archive(chunks())
    assert listing.counts["TABLE DATA"] == 3
    assert sum(handed_out) < 2 * 1024 * 1024


def test_the_structure_check_refuses_a_truncated_archive(sample_archive, tmp_path):
    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(sample_archive.read_bytes()[:300])
    with pytest.raises(pg.ArchiveError, match="cannot read the archive"):
        pg.list_archive(truncated)


def test_the_plan_streams_with_one_job_only_when_the_disk_lacks_room(tmp_path):
    small = pg.plan_restore(1024, temp_dir=str(tmp_path), jobs=2, headroom_bytes=0)
    assert (small.mode, small.jobs) == ("file", 2)
    huge = pg.plan_restore(small.free_bytes + 1, temp_dir=str(tmp_path), jobs=2, headroom_bytes=0)
    assert (huge.mode, huge.jobs) == ("stream", 1)
    assert "streaming into pg_restore -j1" in huge.reason and str(tmp_path) in huge.reason


# --- restoring into the side database -----------------------------------------------------------


def test_it_restores_into_the_side_database_in_parallel_with_progress(scratch, sample_archive):
    url = scratch.create("shop", marker="live")
    run = new_run_id()
    seen = []
    result = pg.restore_to_side_database(url, run, sample_archive, jobs=2, on_progress=seen.append,
                                         progress_interval=0)
    side = pg.copy_name(scratch.name("shop"), run, "restore")
    assert result.database == side and result.mode == "file" and result.jobs == 2
    assert result.items_done == result.items_total == seen[-1].items_done
    assert seen[-1].fraction == 1.0
    assert [p.items_done for p in seen] == sorted(p.items_done for p in seen)
    for table, count in SAMPLE_COUNTS.items():
        assert scratch.scalar(side, f"SELECT count(*) FROM {table}") == count  # noqa: S608 - our own names
    assert scratch.marker(scratch.name("shop")) == "live"


def test_it_streams_into_pg_restore_with_one_job(scratch, sample_archive):
    url = scratch.create("shop", marker="live")
    run = new_run_id()
    data = sample_archive.read_bytes()
    seen = []
    chunks = (data[i:i + 8192] for i in range(0, len(data), 8192))
    result = pg.restore_to_side_database(url, run, chunks, bytes_total=len(data), on_progress=seen.append,
                                         progress_interval=0)
    assert (result.mode, result.jobs, result.bytes_read) == ("stream", 1, len(data))
    assert seen[-1].bytes_done == len(data) and seen[-1].fraction == 1.0
    assert scratch.scalar(result.database, "SELECT count(*) FROM orders") == 2000


def test_a_bad_archive_leaves_the_target_untouched_and_drops_the_side_database(scratch, sample_archive, tmp_path):
    url = scratch.create("shop", marker="live")
    corrupted = tmp_path / "corrupted.dump"
    data = bytearray(sample_archive.read_bytes())
    data[len(data) // 2:] = b"\x00" * (len(data) - len(data) // 2)
    corrupted.write_bytes(bytes(data))
    with pytest.raises(pg.RestoreFailed) as failed:
        pg.restore_to_side_database(url, new_run_id(), corrupted)
    assert "pg_restore failed" in str(failed.value)
    assert failed.value.stderr_tail
    assert scratch.databases() == {scratch.name("shop")}
    assert scratch.marker(scratch.name("shop")) == "live"


def test_a_stream_that_fails_midway_stops_pg_restore_and_drops_the_side_database(scratch, sample_archive):
    url = scratch.create("shop", marker="live")
    data = sample_archive.read_bytes()

    class DecryptionFailed(Exception):
        pass

    def chunks():
        yield data[:len(data) // 2]
        raise DecryptionFailed("chunk 7 failed authentication")

    with pytest.raises(DecryptionFailed):
        pg.restore_to_side_database(url, new_run_id(), chunks())
    assert scratch.databases() == {scratch.name("shop")}
    assert scratch.marker(scratch.name("shop")) == "live"


def test_it_restores_only_into_side_databases(scratch, sample_archive):
    url = scratch.create("shop", marker="live")
    with pytest.raises(pg.UnsafeDatabaseName):
        pg.restore_archive(url, scratch.name("shop"), sample_archive)
    assert scratch.marker(scratch.name("shop")) == "live"


def test_a_side_database_of_the_same_run_is_not_silently_reused(scratch, sample_archive):
    url = scratch.create("shop")
    run = new_run_id()
    pg.create_side_database(url, run)
    with pytest.raises(pg.PgOpsError, match="already exists"):
        pg.create_side_database(url, run)


# --- the swap ------------------------------------------------------------------------------


def _prepare_swap(scratch) -> tuple[str, str, str]:
    """A live database marked "old" and a side database marked "new" for one run."""
    url = scratch.create("shop", marker="old")
    run = new_run_id()
    scratch.create_named(pg.copy_name(scratch.name("shop"), run, "restore"), marker="new")
    return url, run, scratch.name("shop")


def test_the_swap_puts_the_restored_database_live_and_keeps_the_old_one_aside(scratch):
    url, run, db = _prepare_swap(scratch)
    result = pg.swap_in(url, run)
    pre = pg.copy_name(db, run, "pre")
    assert (result.moved_in, result.moved_aside) == (pg.copy_name(db, run, "restore"), pre)
    assert scratch.databases() == {db, pre}
    assert scratch.marker(db) == "new"
    assert scratch.allows_connections(db)
    assert not scratch.allows_connections(pre), "nothing may write into the rollback copy"
    assert result.duration_s < 5


def test_the_swap_terminates_sessions_of_the_live_database(scratch):
    url, run, db = _prepare_swap(scratch)
    idle = psycopg.connect(scratch.url(db), autocommit=True)
    result = pg.swap_in(url, run)
    assert result.sessions_terminated >= 1
    with pytest.raises(psycopg.OperationalError):
        idle.execute("SELECT 1")
    idle.close()


def test_a_client_during_the_swap_sees_the_old_or_the_new_database_never_an_empty_one(scratch):
    url, run, db = _prepare_swap(scratch)
    seen: list[str] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                with psycopg.connect(scratch.url(db), connect_timeout=5) as conn:
                    seen.append(conn.execute("SELECT marker FROM info").fetchone()[0])
            except psycopg.OperationalError:
                seen.append("refused")  # connections are refused during the swap, or terminated
            except psycopg.Error as exc:
                seen.append(f"ERROR {type(exc).__name__}")

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while "old" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    pg.swap_in(url, run)
    count = len(seen)
    while seen[count:].count("new") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join()
    assert set(seen) <= {"old", "new", "refused"}, set(seen)
    assert "old" in seen and seen[-1] == "new"
    first_new = seen.index("new")
    assert "old" not in seen[first_new + 3:], "a client saw the old database after the swap"


def test_swap_back_puts_the_previous_database_live_again(scratch):
    url, run, db = _prepare_swap(scratch)
    pg.swap_in(url, run)
    result = pg.swap_back(url, run)
    failed = pg.copy_name(db, run, "failed")
    assert (result.moved_in, result.moved_aside) == (pg.copy_name(db, run, "pre"), failed)
    assert scratch.databases() == {db, failed}
    assert scratch.marker(db) == "old" and scratch.allows_connections(db)
    assert pg.drop_copy(url, run, "failed") is True
    assert scratch.databases() == {db}


def test_a_swap_that_cannot_happen_changes_nothing_and_leaves_the_target_open(scratch):
    url, run, db = _prepare_swap(scratch)
    scratch.create_named(pg.copy_name(db, run, "pre"), marker="someone else's")
    with pytest.raises(pg.SwapFailed, match="already exists"):
        pg.swap_in(url, run)
    assert scratch.marker(db) == "old" and scratch.allows_connections(db)
    with pytest.raises(pg.SwapFailed, match="does not exist"):
        pg.swap_back(scratch.url(db), new_run_id())


def test_a_first_restore_into_a_new_database_just_renames_the_side_database(scratch):
    run = new_run_id()
    db = scratch.name("fresh")
    scratch.create_named(pg.copy_name(db, run, "restore"), marker="new")
    result = pg.swap_in(scratch.url(db), run)
    assert result.moved_aside is None
    assert scratch.databases() == {db} and scratch.marker(db) == "new"


# --- clean-up and orphans -------------------------------------------------------------------


def test_only_copies_are_ever_dropped(scratch):
    url, run, db = _prepare_swap(scratch)
    scratch.create_named(scratch.name("shop__restore_notacopy"))
    for name in (db, scratch.name("shop__restore_notacopy"), "postgres", "template1"):
        with pytest.raises(pg.UnsafeDatabaseName):
            pg.drop_database_copy(url, name)
    other = scratch.create("other")
    scratch.create_named(pg.copy_name(scratch.name("other"), run, "pre"))
    with pytest.raises(pg.UnsafeDatabaseName):
        pg.drop_database_copy(url, pg.copy_name(scratch.name("other"), run, "pre"))
    assert pg.drop_database_copy(other, pg.copy_name(scratch.name("other"), run, "pre"))
    assert db in scratch.databases()


def test_orphans_are_the_copies_of_runs_not_kept(scratch):
    url = scratch.create("shop")
    db = scratch.name("shop")
    active, finished, expired = new_run_id(), new_run_id(), new_run_id()
    scratch.create_named(pg.copy_name(db, active, "restore"))
    scratch.create_named(pg.copy_name(db, finished, "restore"))
    scratch.create_named(pg.copy_name(db, expired, "pre"))
    scratch.create("shopping")  # a neighbour whose name starts the same way
    assert {c.name for c in pg.list_copies(url)} == {
        pg.copy_name(db, run, kind) for run, kind in ((active, "restore"), (finished, "restore"), (expired, "pre"))}
    orphans = pg.find_orphans(url, keep=[active])
    assert {(o.tag, o.kind) for o in orphans} == {
        (pg.run_tag(finished), CopyKind.SIDE), (pg.run_tag(expired), CopyKind.PRE)}
    for orphan in orphans:
        assert pg.drop_database_copy(url, orphan.name)
    assert scratch.databases() == {db, pg.copy_name(db, active, "restore"), scratch.name("shopping")}


# --- reconciliation --------------------------------------------------------------------------

# (databases left behind as (kind or "live", marker, accepts connections), state found, state after,
#  marker of the live database after)
CRASH_POINTS = {
    "died while restoring": ([("live", "old", True), ("restore", "new", True)],
                             SwapState.RESTORING, SwapState.CLEAN, "old"),
    "died inside the swap, before its commit": ([("live", "old", False), ("restore", "new", False)],
                                                SwapState.RESTORING, SwapState.CLEAN, "old"),
    "died after the swap": ([("live", "new", True), ("pre", "old", False)],
                            SwapState.SWAPPED, SwapState.SWAPPED, "new"),
    "died inside a rollback, before its commit": ([("live", "new", False), ("pre", "old", False)],
                                                  SwapState.SWAPPED, SwapState.SWAPPED, "new"),
    "died after a rollback": ([("live", "old", True), ("failed", "new", False)],
                              SwapState.ROLLED_BACK, SwapState.ROLLED_BACK, "old"),
    "live database renamed away by hand": ([("pre", "old", False), ("restore", "new", True)],
                                           SwapState.LIVE_MISSING, SwapState.CLEAN, "old"),
}


@pytest.mark.parametrize("crash", CRASH_POINTS, ids=list(CRASH_POINTS))
def test_each_half_done_state_is_brought_back_to_a_consistent_one(scratch, crash):
    left, found, after, live_marker = CRASH_POINTS[crash]
    run = new_run_id()
    db = scratch.name("shop")
    for kind, marker, allow in left:
        name = db if kind == "live" else pg.copy_name(db, run, kind)
        scratch.create_named(name, marker=marker, allow_connections=allow)
    assert pg.swap_state(db, run, scratch.databases()) == found
    result = pg.reconcile_swap(scratch.url(db), run)
    assert (result.found, result.state) == (found, after)
    assert pg.copy_name(db, run, "restore") not in scratch.databases()
    assert scratch.allows_connections(db) and scratch.marker(db) == live_marker
    assert pg.reconcile_swap(scratch.url(db), run).actions == [], "a second pass has nothing left to do"


def test_an_unknown_state_is_left_for_a_person(scratch):
    run = new_run_id()
    db = scratch.name("shop")
    scratch.create_named(pg.copy_name(db, run, "failed"), marker="new")
    result = pg.reconcile_swap(scratch.url(db), run)
    assert (result.found, result.actions) == (SwapState.UNKNOWN, [])
    assert scratch.databases() == {pg.copy_name(db, run, "failed")}


def _python(code: str) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "drpanel.settings"}
    return subprocess.Popen([sys.executable, "-c", "import django; django.setup()\n" + code], cwd=ROOT, env=env)


def _wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _sessions(scratch, where: str, *params) -> int:
    with scratch.admin() as conn:
        return conn.execute(f"SELECT count(*) FROM pg_stat_activity WHERE {where}",  # noqa: S608 - test's own
                            params).fetchone()[0]


@pytest.mark.slow
def test_a_worker_killed_inside_the_swap_transaction_leaves_a_state_reconcile_repairs(scratch):
    url, run, db = _prepare_swap(scratch)
    pre = pg.copy_name(db, run, "pre")
    # Another transaction takes the name the swap renames <db> to, so the swap waits inside its transaction.
    scratch.create_named(scratch.name("squatter"))
    squatter = psycopg.connect(scratch.url("postgres"))
    squatter.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(scratch.name("squatter")), sql.Identifier(pre)))
    worker = _python(f"from restores import pg; pg.swap_in({url!r}, {run!r}, timeout=60)")
    try:
        _wait_for(lambda: _sessions(scratch, "application_name = 'drpanel-restore' AND wait_event_type = 'Lock'"),
                  "the swap to wait inside its transaction")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        squatter.rollback()
        squatter.close()
    _wait_for(lambda: not _sessions(scratch, "application_name = 'drpanel-restore'"), "the dead swap's session to end")
    assert not scratch.allows_connections(db), "the crash left the target refusing connections"
    result = pg.reconcile_swap(url, run)
    assert (result.found, result.state) == (SwapState.RESTORING, SwapState.CLEAN)
    assert scratch.databases() == {db, scratch.name("squatter")}
    assert scratch.allows_connections(db) and scratch.marker(db) == "old"


@pytest.mark.slow
def test_a_worker_killed_while_pg_restore_runs_leaves_the_target_untouched(scratch, sample_archive):
    url = scratch.create("shop", marker="live")
    run = new_run_id()
    side = pg.copy_name(scratch.name("shop"), run, "restore")
    worker = _python(
        "import time\nfrom restores import pg\n"
        f"data = open({str(sample_archive)!r}, 'rb').read()\n"
        "def chunks():\n    yield data[:len(data) // 2]\n    time.sleep(120)\n"
        f"pg.restore_to_side_database({url!r}, {run!r}, chunks())\n")
    try:
        _wait_for(lambda: _sessions(scratch, "datname = %s", side), "pg_restore to be restoring")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
    # pg_restore dies with its worker rather than writing on.
    _wait_for(lambda: not _sessions(scratch, "datname = %s", side), "pg_restore to stop", timeout=10)
    assert pg.swap_state(scratch.name("shop"), run, scratch.databases()) == SwapState.RESTORING
    result = pg.reconcile_swap(url, run)
    assert result.state == SwapState.CLEAN and f"dropped {side}" in result.actions
    assert scratch.databases() == {scratch.name("shop")} and scratch.marker(scratch.name("shop")) == "live"


def test_a_fresh_archive_of_the_same_schema_restores_after_a_failure(scratch, tmp_path):
    url = scratch.create("shop", marker="live")
    archive = make_archive(tmp_path / "again.dump")
    run = new_run_id()
    bad = tmp_path / "bad.dump"
    bad.write_bytes(archive.read_bytes()[:len(archive.read_bytes()) - 100])
    with pytest.raises(pg.RestoreFailed):
        pg.restore_to_side_database(url, run, bad)
    pg.restore_to_side_database(url, run, archive)
    pg.swap_in(url, run)
    assert scratch.marker(scratch.name("shop")) == "restored"


# --- roles, owners and grants ------------------------------------------------------------------


@pytest.fixture
def role(scratch):
    """A throw-away login role with CREATEDB (not a superuser); dropped after the test's databases."""
    name = f"{scratch.prefix}_app"
    with scratch.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        scratch.drop_all()
        with scratch.admin() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _acl(scratch, name: str) -> set:
    with scratch.admin() as conn:
        return set(conn.execute(
            "SELECT a.grantee, a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a "
            "WHERE d.datname = %s", [name]).fetchall())


def test_the_side_database_keeps_the_database_level_grants_and_limits(scratch, role):
    url = scratch.create("shop")
    db = scratch.name("shop")
    with scratch.admin() as conn:
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db), sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 7").format(sql.Identifier(db)))
    side = pg.create_side_database(url, new_run_id())
    assert _acl(scratch, side) == _acl(scratch, db) and _acl(scratch, db)
    assert scratch.scalar("postgres", f"SELECT datconnlimit FROM pg_database WHERE datname = '{side}'") == 7  # noqa: S608


def test_a_superuser_restore_keeps_the_archives_owners(scratch, role, tmp_path):
    setup = f'CREATE TABLE things (id int); ALTER TABLE things OWNER TO "{role}";'
    archive = make_archive(tmp_path / "owned.dump", setup=setup)
    url = scratch.create("shop")
    result = pg.restore_to_side_database(url, new_run_id(), archive)
    assert result.owners_kept
    assert scratch.scalar(result.database, "SELECT tableowner FROM pg_tables WHERE tablename = 'things'") == role


def test_the_whole_flow_works_for_a_role_that_is_not_a_superuser(scratch, role, sample_archive):
    from psycopg.conninfo import make_conninfo

    db = scratch.name("shop")
    with scratch.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(role)))
    url = make_conninfo(scratch.url(db), user=role)
    idle = psycopg.connect(url, autocommit=True)
    run = new_run_id()
    result = pg.restore_to_side_database(url, run, sample_archive)
    assert not result.owners_kept
    assert scratch.scalar(result.database, "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'") == role
    swap = pg.swap_in(url, run)
    assert swap.sessions_terminated == 1
    idle.close()
    assert scratch.scalar(db, "SELECT count(*) FROM orders") == 2000
    owner = scratch.scalar("postgres", f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'")  # noqa: S608
    assert owner == role
    pg.swap_back(url, run)
    assert pg.drop_copy(url, run, "failed")
