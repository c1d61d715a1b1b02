"""pytest plugin (``-p drpanel.testing`` in pyproject): prepares services before Django loads.

It runs before pytest-django reads the settings, so the test run and every process it
starts use the same PostgreSQL and Redis as the rest of the panel would (found or
embedded), with two isolations so parallel checkouts do not collide:
``DRPANEL_TEST_REDIS_DB`` (default 15) and ``DRPANEL_TEST_DATABASE`` (default
``test_<name>``). Audit checkpoints go to a temporary directory of the run.

Under pytest-xdist (``make test`` runs ``pytest -n N``) each worker is isolated the same way
from the others: pytest-django suffixes the test database (``…_gw0``, ``…_gw1``), this plugin
gives worker ``gwK`` the Redis database ``DRPANEL_TEST_REDIS_DB - K`` (CI's Redis has only the
default 16 databases, so counting down from 15 fits) and its own checkpoint directory. The
processes a test starts (RQ workers, ``worker_env``) inherit both through the environment.
Each run (and each pytest-xdist worker) is its own installation (``DRPANEL_INSTALLATION_ID``):
its queues and workers never meet another run's on a shared Redis database.

Compiled bytecode of the test run and of every process it starts is kept in ``var/pycache``
(``PYTHONPYCACHEPREFIX``), written even where ``PYTHONDONTWRITEBYTECODE`` is set (as on machines that keep
source trees free of ``__pycache__``): otherwise every xdist worker, RQ worker and ``manage.py`` a test starts
compiles the panel and its tests again (collecting the suite took 22 CPU-seconds a process instead of 9).
``DRPANEL_TEST_BYTECODE_CACHE=0`` leaves Python's own settings alone.

A run's temporary files (pytest's ``tmp_path``, the tests' own PostgreSQL servers, Barman's homes, dumps, scratch
copies: several gigabytes written and removed in a run) go to memory, ``/dev/shm``, when the environment names no
``TMPDIR`` and ``/dev/shm`` is a writable directory with ``TMPFS_MIN_FREE`` free; ``DRPANEL_TEST_TMPDIR`` names
another directory, or (empty) keeps the system's. On this machine's disk, creating and removing those files cost the
kernel more than writing them: an I/O-heavy part of the suite (PITR, off-site, base verification, restore runs) used
13 % less machine CPU in memory.

Unless the environment names ``DATABASE_URL`` (or sets ``DRPANEL_TEST_PANEL_SERVER=0``), the run's first process
starts the panel's PostgreSQL of its own (``tests/panel_server.py``: in the run's temporary directory, fsync off) and
exports its ``DATABASE_URL`` before anything reads it: on the machine's server, on its disk, the DB-heavy tests (the
hundreds of databases a run makes and drops, a commit after nearly every test) took about a third more machine CPU.

Python's cyclic garbage collector stays off while a test process starts and collects the suite, and what that built
(Django, the panel, the test modules, Hypothesis and schemathesis) is frozen before the first test (``gc.freeze``):
an xdist worker spent 11–13 % of its CPU in full collections that walked those objects again and again.
"""

import atexit
import contextlib
import gc
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from drpanel import installation, runtime

DEFAULT_REDIS_DB = 15


def base_redis_db() -> int:
    raw = os.environ.get("DRPANEL_TEST_REDIS_DB", str(DEFAULT_REDIS_DB))
    try:
        return int(raw)
    except ValueError:
        raise pytest.UsageError(f"drpanel: DRPANEL_TEST_REDIS_DB={raw!r} is not a Redis database number") from None


def worker_index() -> int | None:
    """The number K of this xdist worker (``gwK``), or None outside xdist's workers."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name.removeprefix("gw")) if name.startswith("gw") else None


def redis_db_for(base: int, index: int | None) -> int:
    """Worker ``gwK`` counts down from the base; a run without workers uses the base itself."""
    return base - (index or 0)


def check_worker_count(base: int, workers: int) -> None:
    """Refuse, before any worker starts, a ``-n`` that would push a worker below Redis database 1."""
    lowest = redis_db_for(base, workers - 1)
    if lowest < 1:
        raise pytest.UsageError(
            f"drpanel: -n {workers} needs Redis databases {base} down to {lowest}, below 1: each xdist worker "
            f"uses DRPANEL_TEST_REDIS_DB ({base}) minus its number; run at most {base} workers or raise "
            "DRPANEL_TEST_REDIS_DB")


def switch(name: str, raw: str) -> bool:
    """A 0/1 switch of the test run (``raw``, the value of ``name``); anything else is refused, not taken as true."""
    raw = raw.strip()
    if raw not in ("0", "1"):
        raise pytest.UsageError(f"drpanel: {name}={raw!r}: write 1 or 0")
    return raw == "1"


TMPFS = "/dev/shm"  # noqa: S108 - the run makes its own folders in it, private, with mkdtemp
# A full run holds up to 1.8 GB there at once (Barman's homes, the servers' copies): 8 GiB free, or the disk.
TMPFS_MIN_FREE = 8 << 30


def temporary_directory() -> str | None:
    """Where the run's temporary files go: ``DRPANEL_TEST_TMPDIR`` if set (empty: the system's), else ``/dev/shm``
    when no ``TMPDIR`` is set and it is a writable directory with ``TMPFS_MIN_FREE`` free; None: the system's."""
    chosen = os.environ.get("DRPANEL_TEST_TMPDIR")
    if chosen is not None:
        chosen = chosen.strip()
        if chosen and not (os.path.isdir(chosen) and os.access(chosen, os.W_OK | os.X_OK)):
            raise pytest.UsageError(f"drpanel: DRPANEL_TEST_TMPDIR={chosen!r} is not a writable directory")
        return chosen or None
    if os.environ.get("TMPDIR") or not (os.path.isdir(TMPFS) and os.access(TMPFS, os.W_OK | os.X_OK)):
        return None
    return TMPFS if shutil.disk_usage(TMPFS).free >= TMPFS_MIN_FREE else None


def use_temporary_directory(path: str) -> None:
    """This process and every process it starts make their temporary files under ``path``."""
    os.environ["TMPDIR"] = path
    tempfile.tempdir = None  # tempfile keeps the directory it found first: find it again


def use_bytecode_cache() -> None:
    """This process's later imports, and every process it starts, keep their bytecode in ``var/pycache``."""
    prefix = str(runtime.var_dir() / "pycache")
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False


# At import, before pytest loads the plugins that packages declare (schemathesis, hypothesis, xdist…): pytest rewrites
# their modules' asserts and keeps the result only where bytecode may be written, so a run whose environment sets
# PYTHONDONTWRITEBYTECODE parsed and compiled them again in its first process (its start: 3.3–4.0 CPU-s, now 2.0).
if os.environ.get("DRPANEL_TEST_BYTECODE_CACHE", "1").strip() == "1":
    use_bytecode_cache()
# At import too, before pytest or a fixture asks tempfile for its directory (pytest's base temporary directory).
with contextlib.suppress(pytest.UsageError):  # refused in pytest_load_initial_conftests, where pytest reports it
    if temporary := temporary_directory():
        use_temporary_directory(temporary)
# Start-up and collection allocate objects that live as long as the process: collecting meanwhile only costs.
gc.disable()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """Before the first test (after collection, in every test process): collect once, freeze, turn the collector on."""
    gc.collect()
    gc.freeze()
    gc.enable()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # Set up at import (above) when 1; refused here when neither 0 nor 1.
    switch("DRPANEL_TEST_BYTECODE_CACHE", os.environ.get("DRPANEL_TEST_BYTECODE_CACHE", "1"))
    temporary_directory()  # chosen at import; refused here when DRPANEL_TEST_TMPDIR names no writable directory
    # Read by tests.worker_parent; refused here, before any test, when it is neither 0 nor 1.
    switch("DRPANEL_TEST_FORKED_WORKERS", os.environ.get("DRPANEL_TEST_FORKED_WORKERS", "1"))
    # Playwright's sync API runs an event loop in the test thread; Django's ORM refuses to
    # run "inside" it unless told that this is fine (it is: the loop is Playwright's).
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if worker_index() is None and panel_server_wanted():  # xdist's workers inherit the controller's
        start_panel_server()
    try:
        runtime.prepare()
    except (runtime.ServiceError, runtime.ConfigError) as exc:
        raise pytest.UsageError(f"drpanel: {exc}") from None
    index = worker_index()
    # Audit checkpoints live outside the database; a test run's must not meet the demo's
    # (they pin a different chain), nor another run's, nor another xdist worker's. Workers
    # inherit the controller's directory and take a folder of it; processes the tests start
    # inherit the worker's.
    if "DRPANEL_AUDIT_CHECKPOINT_DIR" not in os.environ:
        checkpoints = tempfile.mkdtemp(prefix="drpanel-test-checkpoints-")
        atexit.register(shutil.rmtree, checkpoints, ignore_errors=True)
        os.environ["DRPANEL_AUDIT_CHECKPOINT_DIR"] = checkpoints
    if index is not None:
        own = os.path.join(os.environ["DRPANEL_AUDIT_CHECKPOINT_DIR"], f"gw{index}")
        os.makedirs(own, exist_ok=True)
        os.environ["DRPANEL_AUDIT_CHECKPOINT_DIR"] = own
    base = base_redis_db()
    redis_db = redis_db_for(base, index)
    if redis_db < 1:
        raise pytest.UsageError(f"drpanel: xdist worker gw{index} would use Redis database {redis_db} (below 1)")
    os.environ["REDIS_URL"] = runtime.with_redis_db(os.environ["REDIS_URL"], redis_db)
    if "DRPANEL_INSTALLATION_ID" not in os.environ or os.environ.get("DRPANEL_TEST_INSTALLATION_DERIVED"):
        # Derived from the checkout and its test database, per xdist worker (an xdist worker inherits the
        # controller's environment, so it derives its own again); the worker processes the tests start
        # inherit it, so they serve the same queues as the test that started them.
        test_database = os.environ.get("DRPANEL_TEST_DATABASE") or "default"
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        digest = installation.derive(f"{runtime.BASE_DIR}:{test_database}")[:8]
        os.environ["DRPANEL_INSTALLATION_ID"] = f"test-{worker}-{digest}"
        os.environ["DRPANEL_TEST_INSTALLATION_DERIVED"] = "1"
        _forget_stale_claim(os.environ["REDIS_URL"], os.environ["DRPANEL_INSTALLATION_ID"])


def panel_server_wanted() -> bool:
    """Whether the run starts the panel's PostgreSQL of its own (``tests/panel_server.py``): unless the environment
    names one in ``DATABASE_URL`` or sets ``DRPANEL_TEST_PANEL_SERVER=0``."""
    wanted = switch("DRPANEL_TEST_PANEL_SERVER", os.environ.get("DRPANEL_TEST_PANEL_SERVER", "1"))
    return wanted and not os.environ.get("DATABASE_URL")


def start_panel_server() -> None:
    """Start the run's panel server (the test suite's own module, from this checkout) and export its URL."""
    if str(runtime.BASE_DIR) not in sys.path:
        sys.path.insert(0, str(runtime.BASE_DIR))  # ``pytest`` run as a script has the checkout's tests elsewhere
    from tests import panel_server

    try:
        panel_server.start()
    except (AssertionError, OSError, subprocess.SubprocessError) as exc:
        raise pytest.UsageError(f"drpanel: the run's panel PostgreSQL did not start ({exc}); "
                                "DRPANEL_TEST_PANEL_SERVER=0 uses the machine's") from None


def _forget_stale_claim(redis_url: str, installation_id: str) -> None:
    """A run's Redis database is its own: a claim left by an earlier run (another test database name) goes."""
    import redis

    with contextlib.suppress(redis.RedisError):  # Redis down: the tests that need it say so
        redis.Redis.from_url(redis_url).hdel(installation.REGISTRY_KEY, installation_id)

def pytest_configure(config):
    # xdist has turned ``-n N`` (or ``-n auto``) into N ``popen`` gateways by now.
    if worker_index() is None and config.getoption("dist", "no") != "no":
        check_worker_count(base_redis_db(), len(config.getoption("tx", None) or []))


def template_databases() -> bool:
    """Whether test databases are copied from a template of the migrations (tests/template_db.py)."""
    return os.environ.get("DRPANEL_TEST_DB_TEMPLATE", "1") != "0"
