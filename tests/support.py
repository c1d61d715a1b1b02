"""Test helpers: real RQ worker processes, and asserting who a view refuses."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

from compliance.models import AuditEvent
from drpanel import queues as panel_queues
from drpanel import runtime
from tests.worker_parent import forked_workers_enabled, worker_parent

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("operator", "manager", "auditor", "admin", "outsider")


def worker_env(**extra) -> dict:
    """The environment a child process needs to share this test run's database and Redis."""
    env = dict(os.environ)
    env["DATABASE_URL"] = runtime.with_database_name(os.environ["DATABASE_URL"], connection.settings_dict["NAME"])
    env["REDIS_URL"] = settings.REDIS_URL
    env["DRPANEL_SERVICES"] = "external"
    env.update({k: str(v) for k, v in extra.items()})
    return env


@contextlib.contextmanager
def rq_workers(queues=None, *, count: int = 1, log_dir: Path | None = None, env: dict | None = None,
               fresh: bool = False):
    """Run ``count`` real ``manage.py rqworker`` processes for the duration of the block.

    The test must use ``transactional_db`` (workers are other processes: they only see
    committed rows). Yields the processes (``Popen`` or ``ForkedWorker``: pid, poll, wait, kill);
    the workers' output is in ``log_dir``. By default each worker is forked from this test
    process's worker parent (``tests.worker_parent``: Django already imported); ``fresh=True``
    (or ``DRPANEL_TEST_FORKED_WORKERS=0``) starts a new interpreter, as production does.
    """
    queues = panel_queues.queue_names(queues)
    log_dir = log_dir or Path(settings.VAR_DIR) / "test-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    fresh = fresh or not forked_workers_enabled()
    procs = []
    try:
        for n in range(count):
            log_path = log_dir / f"worker-{os.getpid()}-{n}.log"
            if fresh:
                with open(log_path, "wb") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, str(ROOT / "manage.py"), "rqworker", *queues],
                        env=worker_env(**(env or {})), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                    ))
            else:
                parent = worker_parent(worker_env(), Path(settings.VAR_DIR) / "test-logs")
                procs.append(parent.spawn(["rqworker", *queues], env=worker_env(**(env or {})), log_path=log_path))
        wait_for_workers(count)
        yield procs
    finally:
        stop_processes(procs, timeout=15)


def stop_processes(procs, timeout: float) -> None:
    """SIGTERM each process still running, then wait; kill one that outlives ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_workers(count: int, timeout: float = 30.0) -> None:
    """Wait until ``count`` workers of this test run's installation are registered in Redis."""
    conn = panel_queues.get_connection()
    deadline = time.monotonic() + timeout
    while len(panel_queues.our_workers(conn)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} RQ worker(s) did not register within {timeout:.0f} s")
        time.sleep(0.1)


def assert_only_roles(clients: dict, method: str, url: str, allowed: set[str], data=None) -> None:
    """Every persona not in ``allowed`` gets 403 and an ``access.denied`` event; the others do not."""
    for role in ROLES:
        client = clients[role]
        before = AuditEvent.objects.filter(action="access.denied").count()
        response = getattr(client, method.lower())(url, data or {})
        denials = AuditEvent.objects.filter(action="access.denied").count() - before
        if role in allowed:
            assert response.status_code != 403, f"{role} was refused {method} {url}"
            assert denials == 0, f"{role} allowed, yet a denial was audited"
        else:
            assert response.status_code == 403, f"{role} got {response.status_code} for {method} {url}, not 403"
            assert denials == 1, f"{role}'s refusal of {method} {url} was not audited"


def journey_screenshot(page, role: str) -> Path:
    """The last sight of a role's browser journey, in ``test-artifacts/journeys/<role>.png`` (git-ignored)."""
    folder = ROOT / "test-artifacts" / "journeys"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{role}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path


def wait_for(predicate, timeout: float = 60.0, what: str = "the condition", interval: float = 0.2):
    """Poll ``predicate`` until it returns something true (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


def wait_for_finished_run(page, selector: str, timeout: float = 30_000) -> None:
    """Wait until a restore or verification page shows ``selector`` (its run's final state), then for
    the reload the page does by itself 300 ms later (``static/js/restores.js``): a navigation started
    before that reload is cut short by it (``net::ERR_ABORTED``), the more so on a busy machine."""
    page.wait_for_selector(selector, timeout=timeout)
    page.wait_for_selector("[data-reload-when-done]", state="detached", timeout=timeout)


def restore_awaiting_approval(*, artifact, target, requested_by):
    """A database-only restore into ``target`` waiting for its four-eyes approval, as ``restore_request`` leaves it."""
    from drpanel.approvals import approval_request
    from restores import runstate
    from restores.models import RestoreRun

    run = RestoreRun.objects.create(artifact=artifact, target=target, mode="database-only",
                                    state="awaiting_approval", requested_by=requested_by)
    approval = approval_request(actor=requested_by, kind=runstate.PRODUCTION_APPROVAL, subject=run,
                                params=runstate.run_binding_params(run))
    RestoreRun.objects.filter(pk=run.pk).update(approval=approval)
    run.refresh_from_db()
    return run
