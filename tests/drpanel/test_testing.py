"""The test plugin's isolation of xdist workers: one Redis database each, counting down, never below 1."""

import os
import subprocess
import sys

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
