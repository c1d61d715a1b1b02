"""With the environment cleared, embedded PostgreSQL and Redis start, run a job, and stop."""

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from drpanel.runtime import pid_alive
from tests.deploy.units import base_process_env

ROOT = Path(__file__).resolve().parents[2]
# Its own PostgreSQL and Redis start here: one at a time with the fault campaign (tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chaos")]


@pytest.fixture
def var_dir():
    # Not pytest's tmp_path: pytest keeps /tmp/pytest-of-<user> private (0700), and as root the
    # embedded PostgreSQL runs as another user who must be able to reach its data directory.
    path = Path(tempfile.mkdtemp(prefix="drpanel-embedded-", dir="/tmp"))
    yield path / "var"
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_services_start_run_a_job_and_stop(var_dir):
    var = var_dir
    # A PATH, a HOME, a locale and the run's bytecode cache, as a service gets them (tests/deploy/units.py).
    env = {**base_process_env(), "DRPANEL_SERVICES": "embedded", "DRPANEL_VAR_DIR": str(var)}
    manage = [sys.executable, str(ROOT / "manage.py")]
    up = subprocess.Popen([*manage, "services", "up"], env=env, cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    worker = None
    try:
        output = []
        deadline = time.monotonic() + 120
        while not any("services are up" in line for line in output):
            line = up.stdout.readline()
            assert line or up.poll() is None, "".join(output)
            output.append(line)
            assert time.monotonic() < deadline, "".join(output)
        state = json.loads((var / "services.json").read_text())
        assert state["postgres"]["url"].startswith("postgresql://")
        assert state["redis"]["url"].startswith("unix://")
        postgres_pid, redis_pid = state["postgres"]["pid"], state["redis"]["pid"]

        migrate = subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, capture_output=True, text=True,
                                 timeout=180)
        assert migrate.returncode == 0, migrate.stderr
        worker = subprocess.Popen([*manage, "worker", "default"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        check = subprocess.run([*manage, "services", "check", "--timeout", "60"], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "job round-trip ok" in check.stdout
        assert "database drpanel" in check.stdout
        assert f"worker pid {worker.pid}" in check.stdout
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        up.send_signal(signal.SIGTERM)
        rest = up.communicate(timeout=60)[0]
    assert up.returncode == 0, rest
    assert "services stopped" in rest
    assert not pid_alive(postgres_pid)
    assert not pid_alive(redis_pid)
    assert not (var / "redis" / "redis.sock").exists()
