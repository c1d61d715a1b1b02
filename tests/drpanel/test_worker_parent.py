"""Workers forked from the tests' worker parent (tests.worker_parent) behave as ``manage.py rqworker`` processes.

Each test runs a real job on a real worker: the job reports what its process sees (its pid and parent,
the environment, the settings, the database role) into a file the test reads.
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from drpanel import queues
from tests.support import rq_workers, wait_for
from tests.worker_parent import ForkedWorker, forked_workers_enabled

pytestmark = pytest.mark.slow

JOB = "tests.drpanel.test_worker_parent.report"


def report(path: str, variable: str, linger: float = 0) -> None:
    """The job: write what this work horse sees to ``path``, then wait ``linger`` seconds."""
    import time

    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        (role,) = cursor.fetchone()
    Path(path).write_text(json.dumps({
        "pid": os.getpid(), "ppid": os.getppid(), "variable": os.environ.get(variable),
        "clock_offset": settings.CLOCK_OFFSET_SECONDS, "role": role,
    }))
    time.sleep(linger)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def run_report(tmp_path: Path, variable: str = "DRPANEL_TEST_MARK", linger: float = 0) -> Path:
    out = tmp_path / f"report-{len(list(tmp_path.iterdir()))}.json"
    queues.enqueue(JOB, str(out), variable, linger, queue="default", timeout=120)
    wait_for(lambda: out.exists() and out.read_text(), 60, "the job to report")
    return out


def parent_pid(worker: ForkedWorker) -> int:
    return worker.parent.proc.pid


def test_a_forked_worker_runs_a_job_in_a_process_of_its_own_without_a_new_interpreter(transactional_db, redis_conn,
                                                                                       tmp_path):
    with rq_workers(["default"]) as [worker]:
        assert isinstance(worker, ForkedWorker)
        seen = json.loads(run_report(tmp_path).read_text())
        assert worker.pid not in (os.getpid(), parent_pid(worker))
        assert seen["ppid"] == worker.pid and seen["pid"] != worker.pid, "the job ran in the worker's work horse"
        # Forked, not exec'd: the worker still has its parent's command line, not manage.py's.
        assert cmdline(worker.pid) == cmdline(parent_pid(worker))
        assert worker.poll() is None
        # Stopped here rather than by rq_workers (which kills a worker still there after 15 s): on a loaded
        # machine an exiting interpreter may need longer, and what is asserted is the exit, not its speed.
        worker.terminate()
        assert worker.wait(90) == 0, "SIGTERM stops a forked worker cleanly, as it does a fresh one"


def test_a_forked_worker_sees_the_environment_it_was_given(transactional_db, redis_conn, runtime_role, tmp_path):
    assert settings.CLOCK_OFFSET_SECONDS != 600
    env = {"DRPANEL_TEST_MARK": "given", "DRPANEL_CLOCK_OFFSET_SECONDS": 600, "DATABASE_URL": runtime_role.url}
    with rq_workers(["default"], env=env) as [worker]:
        seen = json.loads(run_report(tmp_path).read_text())
        assert cmdline(worker.pid) == cmdline(parent_pid(worker)), "a panel setting alone needs no fresh start"
    assert seen["variable"] == "given"
    assert seen["clock_offset"] == 600, "the settings were read again under the worker's environment"
    assert seen["role"] == runtime_role.name != connection.settings_dict["USER"]


def test_a_changed_setting_the_parent_cannot_take_back_starts_the_worker_afresh(transactional_db, redis_conn,
                                                                                tmp_path):
    # The log format changes Django's LOGGING, which logging has already been configured from.
    with rq_workers(["default"], env={"DRPANEL_LOG_FORMAT": "json", "DRPANEL_TEST_MARK": "fresh"},
                    log_dir=tmp_path / "logs") as [worker]:
        seen = json.loads(run_report(tmp_path).read_text())
        assert cmdline(worker.pid)[1:3] == [str(settings.BASE_DIR / "manage.py"), "rqworker"]
    assert seen["variable"] == "fresh" and seen["ppid"] == worker.pid
    lines = [line for line in (tmp_path / "logs" / f"worker-{os.getpid()}-0.log").read_text().splitlines() if line]
    assert lines and all(json.loads(line) for line in lines if line.startswith("{")), lines
    assert any(line.startswith("{") for line in lines)


def test_a_forked_worker_killed_with_sigkill_is_gone_with_its_work_horse(transactional_db, redis_conn, tmp_path):
    with rq_workers(["default"]) as [worker]:
        seen = json.loads(run_report(tmp_path, linger=60).read_text())
        horse = seen["pid"]
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
        # Reaped by its parent at once: no zombie left that would still look alive.
        assert not Path(f"/proc/{worker.pid}").exists()
        wait_for(lambda: not Path(f"/proc/{horse}").exists() or
                 Path(f"/proc/{horse}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                 10, "the work horse dying with its worker")


def test_fresh_workers_start_a_new_interpreter(transactional_db, redis_conn, tmp_path, monkeypatch):
    with rq_workers(["default"], fresh=True) as [worker]:
        assert isinstance(worker, subprocess.Popen)
        assert cmdline(worker.pid)[1:3] == [str(settings.BASE_DIR / "manage.py"), "rqworker"]
        assert json.loads(run_report(tmp_path).read_text())["ppid"] == worker.pid
    monkeypatch.setenv("DRPANEL_TEST_FORKED_WORKERS", "0")
    assert not forked_workers_enabled()
    with rq_workers(["default"]) as [worker]:
        assert isinstance(worker, subprocess.Popen)
    monkeypatch.setenv("DRPANEL_TEST_FORKED_WORKERS", "yes")
    with pytest.raises(ValueError, match="DRPANEL_TEST_FORKED_WORKERS"):
        forked_workers_enabled()
