"""A parent of the tests' RQ worker processes: Django and the panel imported once, each worker forked from it.

Starting ``manage.py rqworker`` costs about 0.75 CPU-seconds, nearly all of it importing Python,
Django and the panel, and the suite starts a worker in dozens of tests. This parent (one per test
process, started on first use) runs ``django.setup()`` and imports the worker's code once; for each
worker it forks a child that becomes what ``manage.py rqworker QUEUE...`` would have been: a
separate OS process running ``PanelWorker`` on the same queues, with the environment it was given,
its output in the same log file, killable like any other.

The child must not keep anything the parent read from its own environment. Settings are the only
place the panel reads the environment at import, so the child applies its environment, reads the
settings module again and compares it with the parent's: a difference in one of the panel's own
settings (all read at call time) or in ``DATABASES`` (no connection is open yet) or the e-mail
settings (read when a message is sent) is taken as is; any other difference (installed apps,
queues, a library's settings, ``PYTHON*`` variables) means the child replaces itself with a fresh
``python manage.py rqworker`` (same pid), so it is never a worker with stale settings.

The workers are the parent's children, not the test's: the parent reaps them as soon as they end and
answers the test's questions about their exit status (``ForkedWorker`` is the test's handle, used
like a ``Popen``).

Protocol, over a socket pair, one JSON object a line each way: ``{"op": "spawn", "args": [...],
"env": {...}, "log": path}`` answers ``{"pid": N}``; ``{"op": "status", "pid": N}`` answers
``{"returncode": N or null}``. The parent stops its workers and exits when the test process closes
its end.
"""

import atexit
import contextlib
import gc
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "manage.py"
SETTINGS_MODULE = "drpanel.settings"

# Django's settings that may differ between the parent and a worker: nothing has read them yet when the
# worker starts (no database connection is open; mail settings are read when a message is sent).
CALL_TIME_DJANGO_SETTINGS = frozenset({"DATABASES"})
CALL_TIME_DJANGO_PREFIXES = ("EMAIL_",)
# Settings of the libraries the panel uses: some copy them at import (django-axes, django-guardian, DRF,
# django-rq), so a worker whose value differs is started afresh.
LIBRARY_PREFIXES = ("AXES_", "GUARDIAN_", "REST_FRAMEWORK", "SPECTACULAR_", "CONTENT_SECURITY_POLICY",
                    "WHITENOISE_", "RQ", "ROOT_URLCONF")


# --- the test's side ---------------------------------------------------------------------------

def forked_workers_enabled() -> bool:
    """``DRPANEL_TEST_FORKED_WORKERS`` (default 1): 0 starts every worker with a fresh interpreter."""
    raw = os.environ.get("DRPANEL_TEST_FORKED_WORKERS", "1").strip()
    if raw not in ("0", "1"):
        raise ValueError(f"DRPANEL_TEST_FORKED_WORKERS={raw!r}: write 1 (fork workers from a parent) or 0")
    return raw == "1"


class ForkedWorker:
    """The test's handle on a forked worker, used like ``subprocess.Popen`` (pid, poll, wait, kill)."""

    def __init__(self, parent: "WorkerParent", pid: int, args: list[str]):
        self.parent = parent
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.parent.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        # Like Popen: a worker known to have ended (and been reaped) is not signalled, its pid may be another's.
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class WorkerParent:
    """The parent process, seen from the test process: started with ``env``, asked to fork workers."""

    def __init__(self, env: dict, log_path: Path):
        ours, theirs = socket.socketpair()
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.worker_parent", str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        theirs.close()
        self.log_path = log_path
        self.sock = ours
        self.stream = ours.makefile("rwb")
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, **request) -> dict:
        with self.lock:
            try:
                self.stream.write(json.dumps(request).encode() + b"\n")
                self.stream.flush()
                line = self.stream.readline()
            except OSError:
                line = b""
        if not line:
            raise RuntimeError(f"the worker parent ended; its log: {self.log_path}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the worker parent refused {request['op']}: {answer['error']}")
        return answer

    def spawn(self, args: list[str], *, env: dict, log_path: Path) -> ForkedWorker:
        answer = self.call(op="spawn", args=args, env=env, log=str(log_path))
        return ForkedWorker(self, answer["pid"], [sys.executable, str(MANAGE), *args])

    def returncode(self, pid: int) -> int | None:
        return self.call(op="status", pid=pid)["returncode"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()
            self.sock.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_parent: WorkerParent | None = None
_parent_lock = threading.Lock()


def worker_parent(env: dict, log_dir: Path) -> WorkerParent:
    """This test process's parent of workers, started (with ``env``) on first use or after it ended."""
    global _parent
    with _parent_lock:
        if _parent is None or not _parent.alive():
            if _parent is None:
                atexit.register(_close_parent)
            _parent = WorkerParent(env, log_dir / f"worker-parent-{os.getpid()}.log")
        return _parent


def _close_parent() -> None:
    if _parent is not None:
        _parent.close()


# --- the parent's side -----------------------------------------------------------------------------

def settings_values() -> dict:
    from django.conf import settings

    return {name: getattr(settings, name) for name in dir(settings) if name.isupper()}


def may_differ(name: str) -> bool:
    """Whether a worker may have another value of setting ``name`` than the parent read (see the module)."""
    from django.conf import global_settings

    if name in CALL_TIME_DJANGO_SETTINGS or name.startswith(CALL_TIME_DJANGO_PREFIXES):
        return True
    return not hasattr(global_settings, name) and not name.startswith(LIBRARY_PREFIXES)


def interpreter_environment(env: dict) -> dict:
    """The variables read before any of our code runs (by Python at start-up) or that pick the settings."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON") or k == "DJANGO_SETTINGS_MODULE"}


class Parent:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.exited: dict[int, int] = {}
        self.children: set[int] = set()
        self.environment = dict(os.environ)
        self.settings: dict = {}

    def prepare(self) -> None:
        """Import what ``manage.py rqworker`` imports, and the jobs its worker would import before its first job."""
        # Start-up allocates hundreds of thousands of objects and frees almost none: collecting meanwhile only costs.
        gc.disable()
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
        import django

        django.setup()
        import django_rq.management.commands.rqworker  # noqa: F401
        from django.conf import settings
        from django.db import connections

        import drpanel.management.commands.worker  # noqa: F401
        import manage  # noqa: F401
        from drpanel.worker import freeze_start_up, preload_jobs

        preload_jobs()
        # The system checks every management command runs import the URLconf and through it every view, the
        # API and its schema (the larger half of a worker's start); the URLconf reads no setting.
        importlib.import_module(settings.ROOT_URLCONF)
        connections.close_all()
        self.settings = settings_values()
        # Frozen before any fork, as the worker itself freezes before its first job (drpanel.worker): a worker forked
        # from here walks only what it makes in its full collections (a third of a forked worker's CPU went to them).
        freeze_start_up()
        gc.enable()

    def reap(self, *_) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.exited[pid] = os.waitstatus_to_exitcode(status)

    def serve(self) -> dict | None:
        """Answer requests until the test process goes (None) or, in a forked child, the request it is to run."""
        # Reaped at once: a killed worker must not linger as a zombie that still looks alive to the tests.
        signal.signal(signal.SIGCHLD, self.reap)
        stream = self.sock.makefile("rwb")
        for line in stream:
            request = json.loads(line)
            try:
                if request["op"] == "spawn":
                    sys.stdout.flush()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        stream.close()
                        return request
                    self.children.add(pid)
                    answer = {"pid": pid}
                elif request["op"] == "status":
                    self.reap()
                    pid = request["pid"]
                    if pid not in self.exited and pid not in self.children:
                        raise KeyError(f"{pid} is not a worker of this parent")
                    answer = {"returncode": self.exited.get(pid)}
                else:
                    raise KeyError(f"unknown op {request['op']!r}")
            except Exception as exc:  # the test hears why; the parent serves on
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            stream.write(json.dumps(answer).encode() + b"\n")
            stream.flush()
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        return None

    def become_worker(self, request: dict) -> None:
        """In the forked child: become ``manage.py rqworker ARGS`` with the request's environment and log."""
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.sock.close()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.chdir(ROOT)
        env = request["env"]
        argv = [str(MANAGE), *request["args"]]
        os.environ.clear()
        os.environ.update(env)
        if interpreter_environment(env) != interpreter_environment(self.environment):
            print("worker parent: Python's own variables differ, starting afresh", file=sys.stderr, flush=True)
            start_afresh(argv, env)
        if not self.settings_apply():
            start_afresh(argv, env)
        sys.argv = argv
        import manage

        manage.main()

    def settings_apply(self) -> bool:
        """Read the settings again under this worker's environment; False when a fresh start is needed."""
        from django.conf import settings
        from django.core.cache import caches
        from django.db import connections
        from django.utils.connection import BaseConnectionHandler

        sys.modules.pop(os.environ.get("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE), None)
        from django.conf import empty

        settings._wrapped = empty
        try:
            now = settings_values()
        except Exception:  # a fresh start reports it the way manage.py does
            return False
        # Defaults a library added to the settings when the parent imported it (django-axes does): the module
        # does not set them, and that import will not run again in this process.
        for name in self.settings.keys() - now.keys():
            setattr(settings, name, self.settings[name])
        changed = {name for name in now if self.settings.get(name, empty) != now[name]}
        if refused := sorted(name for name in changed if not may_differ(name)):
            print(f"worker parent: settings {', '.join(refused)} differ from the parent's, starting afresh",
                  file=sys.stderr, flush=True)
            return False
        for handler in (connections, caches):
            handler.__dict__.pop("settings", None)
            BaseConnectionHandler.__init__(handler)
        return True


def start_afresh(argv: list[str], env: dict) -> None:
    """Replace this process (same pid, same log) with a new interpreter running ``argv``."""
    os.execve(sys.executable, [sys.executable, *argv], env)  # noqa: S606 - the worker's own command line


def main() -> None:
    parent = Parent(socket.socket(fileno=int(sys.argv[1])))
    parent.prepare()
    request = parent.serve()
    if request is not None:
        parent.become_worker(request)


if __name__ == "__main__":
    main()
