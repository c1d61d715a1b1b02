"""The test plugin's isolation of xdist workers: one Redis database each, counting down, never below 1."""

import os
import pathlib
import subprocess
import sys
import tempfile

import psycopg
import pytest
from django.db import connection

from drpanel import testing
from tests.support import ROOT, worker_env


def test_worker_k_counts_down_from_the_base_and_a_plain_run_uses_the_base():
    assert testing.redis_db_for(15, None) == 15
    assert testing.redis_db_for(15, 0) == 15
    assert testing.redis_db_for(15, 3) == 12


def test_this_worker_uses_its_own_redis_database(settings):
    expected = testing.redis_db_for(testing.base_redis_db(), testing.worker_index())
    assert settings.REDIS_URL.rstrip("/").endswith(f"/{expected}") or f"db={expected}" in settings.REDIS_URL


def test_processes_the_tests_start_get_this_workers_databases(db, settings):
    env = worker_env()
    assert env["REDIS_URL"] == settings.REDIS_URL
    name = connection.settings_dict["NAME"]
    assert env["DATABASE_URL"].split("?")[0].rsplit("/", 1)[1] == name
    if testing.worker_index() is not None:
        assert name.endswith(f"_gw{testing.worker_index()}")


def test_a_worker_count_reaching_below_database_1_is_refused_with_the_reason():
    testing.check_worker_count(4, 4)
    with pytest.raises(pytest.UsageError, match=r"-n 5 needs Redis databases 4 down to 0, below 1"):
        testing.check_worker_count(4, 5)


@pytest.mark.slow
def test_pytest_refuses_too_many_workers_before_starting_them():
    env = {**os.environ, "DRPANEL_TEST_REDIS_DB": "2"}
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-n", "3", "--co", "-q", "tests/drpanel/test_testing.py"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "-n 3 needs Redis databases 2 down to 0, below 1" in result.stderr + result.stdout


PROBE = ("import importlib.util, sys; import drpanel.installation as m; print(sys.pycache_prefix); "
         "print(sys.dont_write_bytecode); print(importlib.util.cache_from_source(m.__file__))")


@pytest.mark.slow
def test_processes_the_tests_start_keep_their_bytecode_in_var_even_where_python_is_told_not_to_write_it(tmp_path):
    from drpanel import runtime

    if os.environ.get("DRPANEL_TEST_BYTECODE_CACHE", "1") == "0":
        pytest.skip("DRPANEL_TEST_BYTECODE_CACHE=0: this run leaves Python's bytecode settings alone")
    env = worker_env()
    assert "PYTHONDONTWRITEBYTECODE" not in os.environ and os.environ["PYTHONPYCACHEPREFIX"] == str(
        runtime.var_dir() / "pycache")
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    prefix, dont_write, cached = done.stdout.split("\n")[:3]
    assert prefix == str(runtime.var_dir() / "pycache") and dont_write == "False"
    assert cached.startswith(prefix + "/") and os.path.exists(cached), "the module's bytecode was kept under var/"


@pytest.mark.slow
def test_a_test_switch_that_is_neither_0_nor_1_is_refused_before_any_test(tmp_path):
    for name in ("DRPANEL_TEST_BYTECODE_CACHE", "DRPANEL_TEST_FORKED_WORKERS"):
        env = {**os.environ, name: "yes"}
        env.pop("PYTEST_XDIST_WORKER", None)
        result = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "tests/drpanel/test_testing.py"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0
        assert f"{name}='yes': write 1 or 0" in result.stderr + result.stdout


def test_the_run_keeps_its_temporary_files_in_memory_unless_told_otherwise(monkeypatch, tmp_path):
    monkeypatch.delenv("DRPANEL_TEST_TMPDIR", raising=False)
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(testing, "TMPFS", str(tmp_path))
    monkeypatch.setattr(testing, "TMPFS_MIN_FREE", 1)
    assert testing.temporary_directory() == str(tmp_path)
    # Too little free memory, or a TMPDIR of one's own: the system's (or that) directory.
    monkeypatch.setattr(testing, "TMPFS_MIN_FREE", 1 << 60)
    assert testing.temporary_directory() is None
    monkeypatch.setattr(testing, "TMPFS_MIN_FREE", 1)
    monkeypatch.setenv("TMPDIR", "/var/tmp")
    assert testing.temporary_directory() is None
    # DRPANEL_TEST_TMPDIR names the directory, or (empty) keeps the system's; a missing one is refused.
    monkeypatch.setenv("DRPANEL_TEST_TMPDIR", str(tmp_path))
    assert testing.temporary_directory() == str(tmp_path)
    monkeypatch.setenv("DRPANEL_TEST_TMPDIR", "")
    assert testing.temporary_directory() is None
    monkeypatch.setenv("DRPANEL_TEST_TMPDIR", str(tmp_path / "missing"))
    with pytest.raises(pytest.UsageError, match="is not a writable directory"):
        testing.temporary_directory()


@pytest.mark.slow
def test_this_run_and_the_processes_it_starts_share_the_chosen_temporary_directory(tmp_path):
    import tempfile

    assert str(tmp_path).startswith(tempfile.gettempdir() + os.sep)
    child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"], cwd=ROOT,
                           env=worker_env(), capture_output=True, text=True, timeout=60, check=True)
    assert child.stdout.strip() == tempfile.gettempdir()
    if "DRPANEL_TEST_TMPDIR" not in os.environ and os.environ.get("TMPDIR") is None:
        pytest.skip("the system's temporary directory: /dev/shm was not usable here")
    assert tempfile.gettempdir() == os.environ["TMPDIR"]


def test_a_test_runs_with_the_collector_on_and_what_start_up_built_frozen():
    import gc

    assert gc.isenabled()
    # Django, the panel, the test modules and their libraries: collected once and frozen before the first test.
    assert gc.get_freeze_count() > 100_000, gc.get_freeze_count()


@pytest.mark.slow
def test_a_temporary_directory_that_is_not_there_is_refused_before_any_test(tmp_path):
    env = {**os.environ, "DRPANEL_TEST_TMPDIR": str(tmp_path / "missing")}
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "tests/drpanel/test_testing.py"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "DRPANEL_TEST_TMPDIR=" in result.stderr + result.stdout and "is not a writable directory" in (
        result.stderr + result.stdout)


def test_the_run_starts_its_panel_server_unless_the_environment_names_one_or_says_0(monkeypatch):
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.delenv("DRPANEL_TEST_PANEL_SERVER", raising=False)
    assert testing.panel_server_wanted()
    monkeypatch.setenv("DRPANEL_TEST_PANEL_SERVER", "0")
    assert not testing.panel_server_wanted()
    monkeypatch.setenv("DRPANEL_TEST_PANEL_SERVER", "1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/drpanel")
    assert not testing.panel_server_wanted()
    monkeypatch.setenv("DRPANEL_TEST_PANEL_SERVER", "yes")
    with pytest.raises(pytest.UsageError, match="DRPANEL_TEST_PANEL_SERVER='yes': write 1 or 0"):
        testing.panel_server_wanted()


def test_this_run_talks_to_the_panel_server_it_started(db):
    from tests import panel_server

    owner = os.environ.get(panel_server.MARK)
    if owner is None:
        pytest.skip("this run was given its panel's server (DATABASE_URL or DRPANEL_TEST_PANEL_SERVER=0)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('fsync'), current_setting('data_directory')")
        fsync, data = cursor.fetchone()
    assert fsync == "off"
    folder = os.path.dirname(data)
    assert os.path.basename(folder).startswith("drpanel-panel-") and os.path.dirname(folder) == tempfile.gettempdir()
    # Owned by the run's first process: this one, or the xdist controller that started this worker.
    assert panel_server.owner_of(pathlib.Path(folder)) == int(owner) in (os.getpid(), os.getppid())


STARTS_ONE = """
import os, sys, psycopg, pytest
code = pytest.main(["--co", "-q", "-p", "no:cacheprovider", "tests/drpanel/test_testing.py"])
with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    print(code, os.environ["DATABASE_URL"], *conn.execute("SELECT current_setting('fsync'), "
                                                          "current_setting('data_directory')").fetchone())
"""


@pytest.mark.slow
def test_a_run_given_no_database_starts_its_own_panel_server_and_removes_it_when_it_ends():
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "PYTEST_XDIST_WORKER", "DRPANEL_TEST_PANEL_SERVER_OWNER")}
    env["DRPANEL_TEST_PANEL_SERVER"] = "1"  # whatever this run was told
    done = subprocess.run([sys.executable, "-c", STARTS_ONE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    code, url, fsync, data = done.stdout.split()[-4:]
    assert code == "0" and fsync == "off" and url != os.environ["DATABASE_URL"]
    assert not os.path.exists(os.path.dirname(data)), "its folder was removed when the run ended"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)


@pytest.mark.slow
def test_a_panel_server_left_by_a_killed_run_is_stopped_and_removed_by_the_next():
    from tests import panel_server
    from tests.pg_servers import PgServer

    ended = subprocess.Popen(["true"])  # noqa: S607 - its id, once it has ended and been waited for, names no one
    ended.wait()
    left = PgServer(panel_server.NAME).start()  # the server of a run that was killed
    (left.folder / panel_server.OWNER).write_text(str(ended.pid))
    kept = PgServer(panel_server.NAME)  # a run in progress: its owner (this process) is alive
    (kept.folder / panel_server.OWNER).write_text(str(os.getpid()))
    try:
        removed = panel_server.reap_stale()
        assert left.folder in removed and not left.folder.exists()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(left.dsn(), connect_timeout=5)
        assert kept.folder.exists() and kept.folder not in removed
    finally:
        left.stop()
        kept.stop()
