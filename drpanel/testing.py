"""pytest plugin (``-p drpanel.testing`` in pyproject): prepares services before Django loads.

It runs before pytest-django reads the settings, so the test run and every process it
starts use the same PostgreSQL and Redis as the rest of the panel would (found or
embedded), with two isolations so parallel checkouts do not collide:
``DRPANEL_TEST_REDIS_DB`` (default 15) and ``DRPANEL_TEST_DATABASE`` (default
``test_<name>``). Audit checkpoints go to a temporary directory of the run. Each run (and
each pytest-xdist worker) is its own installation (``DRPANEL_INSTALLATION_ID``): its
queues and workers never meet another run's on a shared Redis database.
"""

import atexit
import os
import shutil
import tempfile

import pytest

from drpanel import installation, runtime


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # Playwright's sync API runs an event loop in the test thread; Django's ORM refuses to
    # run "inside" it unless told that this is fine (it is: the loop is Playwright's).
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    try:
        runtime.prepare()
    except (runtime.ServiceError, runtime.ConfigError) as exc:
        raise pytest.UsageError(f"drpanel: {exc}") from None
    # Audit checkpoints live outside the database; a test run's must not meet the demo's
    # (they pin a different chain), nor another run's. Workers the tests start inherit this.
    if "DRPANEL_AUDIT_CHECKPOINT_DIR" not in os.environ:
        checkpoints = tempfile.mkdtemp(prefix="drpanel-test-checkpoints-")
        atexit.register(shutil.rmtree, checkpoints, ignore_errors=True)
        os.environ["DRPANEL_AUDIT_CHECKPOINT_DIR"] = checkpoints
    redis_db = int(os.environ.get("DRPANEL_TEST_REDIS_DB", "15"))
    os.environ["REDIS_URL"] = runtime.with_redis_db(os.environ["REDIS_URL"], redis_db)
    if "DRPANEL_INSTALLATION_ID" not in os.environ:
        # Derived from the checkout and its test database, per xdist worker; the worker processes the
        # tests start inherit it, so they serve the same queues as the test that started them.
        test_database = os.environ.get("DRPANEL_TEST_DATABASE") or "default"
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        digest = installation.derive(f"{runtime.BASE_DIR}:{test_database}")[:8]
        os.environ["DRPANEL_INSTALLATION_ID"] = f"test-{worker}-{digest}"
