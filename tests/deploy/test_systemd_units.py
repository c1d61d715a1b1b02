"""The panel runs in production mode from exactly the commands and environment its systemd units name.

The units (deploy/systemd) are parsed, not copied: their ExecStartPre/ExecStart lines, Environment,
EnvironmentFile and WorkingDirectory are what start gunicorn, one worker and the scheduler here,
against the machine's PostgreSQL (this test run's database, as a plain runtime role, migrated as
the owner) and Redis (this run's database number). The environment file's example values are
overridden only where a path or a port must be local (database and Redis URLs, secret files, the
var directory, the bind address). ``User=`` is checked but not applied: the tests run as one user.
"""

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
import requests
from django.conf import settings

from tests.deploy.units import (
    ENV_EXAMPLE,
    INSTALL_DIR,
    INSTALL_ENV_FILE,
    INSTALL_VENV_BIN,
    SYSTEMD,
    UNITS,
    base_process_env,
    entrypoint_commands,
    expand,
    free_port,
    local_path,
    read_env_file,
    read_unit,
    unit_environment,
)
from tests.role_support import superuser_url
from tests.support import wait_for

pytestmark = [pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
# The only example values replaced: where this machine's services, files and free port are.
LOCAL_OVERRIDES = ("DATABASE_URL", "DRPANEL_MIGRATE_DATABASE_URL", "REDIS_URL", "SECRET_KEY_FILE",
                   "DRPANEL_AUDIT_SIGNING_KEY_FILE", "DRPANEL_KEYS_FILE", "DRPANEL_VAR_DIR", "DRPANEL_BIND")


def service(unit: str) -> dict[str, list[str]]:
    return read_unit(SYSTEMD / unit)["Service"]


def test_every_unit_runs_as_drpanel_from_the_install_with_the_one_environment_file():
    for unit in UNITS:
        sections = read_unit(SYSTEMD / unit)
        svc = sections["Service"]
        assert svc["User"] == ["drpanel"] and svc["Group"] == ["drpanel"], unit
        assert svc["WorkingDirectory"] == [INSTALL_DIR], unit
        assert svc["EnvironmentFile"] == [INSTALL_ENV_FILE], unit
        assert svc["NoNewPrivileges"] == ["yes"] and svc["ProtectSystem"] == ["strict"], unit
        assert len(svc["ExecStart"]) == 1 and svc["ExecStart"][0].startswith(INSTALL_VENV_BIN + "/"), unit
        assert sections["Install"]["WantedBy"] == ["multi-user.target"], unit
    assert "%i" in read_unit(SYSTEMD / "drpanel-worker@.service")["Unit"]["Description"][0]


def test_the_container_entrypoint_runs_the_units_commands():
    commands = entrypoint_commands()
    web = service("drpanel-web.service")
    assert [shlex_words(c) for c in web["ExecStartPre"]] + [shlex_words(web["ExecStart"][0])] == commands["web"]
    # The unit passes its instance name as the worker pool; the container passes a pool as its arguments.
    worker = shlex_words(service("drpanel-worker@.service")["ExecStart"][0])
    assert worker[-2:] == ["--pool", ""] and [worker[:-2]] == commands["worker"]
    assert [shlex_words(service("drpanel-cron.service")["ExecStart"][0])] == commands["cron"]


def shlex_words(command: str) -> list[str]:
    return expand(command, {})


@pytest.fixture
def unit_env(tmp_path, runtime_role):
    """The units' environment: the example file, with local paths, ports, database and Redis."""
    example = read_env_file(ENV_EXAMPLE)
    assert set(LOCAL_OVERRIDES) <= set(example), "an override names a variable the example file does not set"
    secret_key = tmp_path / "secret_key"
    secret_key.write_text(uuid.uuid4().hex * 2)
    audit_key = tmp_path / "audit-signing-key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(audit_key)], check=True)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": {"k1": base64.b64encode(b"deploy-test-master-key-32-bytes!").decode()},
                                "active": "k1"}))
    keys.chmod(0o600)
    port = free_port()
    local = {"DATABASE_URL": runtime_role.url, "DRPANEL_MIGRATE_DATABASE_URL": superuser_url(),
             "REDIS_URL": settings.REDIS_URL, "SECRET_KEY_FILE": str(secret_key),
             "DRPANEL_AUDIT_SIGNING_KEY_FILE": str(audit_key), "DRPANEL_KEYS_FILE": str(keys),
             "DRPANEL_VAR_DIR": str(tmp_path / "var"), "DRPANEL_BIND": f"127.0.0.1:{port}"}
    return {**example, **local}, port


class Started:
    """The processes a unit started, with their output files; stopped like systemd stops them."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self, name: str, unit: str, env: dict[str, str], *, instance: str = "") -> None:
        svc = service(unit)
        full_env = {**base_process_env(), **env, **unit_environment(svc)}
        cwd = local_path(svc["WorkingDirectory"][0], VENV_BIN)
        for n, command in enumerate(svc.get("ExecStartPre", [])):
            argv = [local_path(w, VENV_BIN) for w in expand(command, full_env, instance=instance, host="test")]
            result = subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)
            (self.log_dir / f"{name}-pre{n}.log").write_text(result.stdout + result.stderr)
            assert result.returncode == 0, f"{unit} ExecStartPre {command!r} failed:\n{result.stderr[-3000:]}"
        argv = [local_path(w, VENV_BIN) for w in expand(svc["ExecStart"][0], full_env, instance=instance,
                                                         host="test")]
        with open(self.log_dir / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT)

    def output(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def json_lines(self, name: str) -> list[dict]:
        lines = []
        for line in self.output(name).splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def started(tmp_path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    processes = Started(log_dir)
    try:
        yield processes
    finally:
        processes.stop()


def through_proxy(port: int, path: str, request_id: str = "", **kwargs) -> requests.Response:
    """A request as deploy/proxy/nginx.conf forwards it: the public host, https, the client's address."""
    headers = {"Host": "panel.example.com", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    if request_id:
        headers["X-Request-ID"] = request_id
    return requests.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=10, allow_redirects=False,
                        **kwargs)


@pytest.mark.django_db(transaction=True)
def test_web_worker_and_cron_serve_in_production_from_the_units(unit_env, started):
    env, port = unit_env
    assert env["DRPANEL_ENV"] == "production" and env["DRPANEL_LOG_FORMAT"] == "json"
    started.run("web", "drpanel-web.service", env)

    def web_answers():
        assert started.alive("web"), started.output("web")[-3000:]
        try:
            return through_proxy(port, "/health/live").status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(web_answers, timeout=90, what="gunicorn to answer /health/live")
    started.run("worker", "drpanel-worker@.service", env, instance="default")
    started.run("cron", "drpanel-cron.service", env)

    ready = through_proxy(port, "/health/ready", request_id="deploy-ready-1")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "database": "ok", "redis": "ok"}
    assert ready.headers["X-Request-ID"] == "deploy-ready-1"

    login = through_proxy(port, "/login/")
    assert login.status_code == 200
    assert 'name="password"' in login.text and 'name="username"' in login.text
    # Plain http without the proxy's header is sent to https: production mode is in force.
    assert requests.get(f"http://127.0.0.1:{port}/login/", headers={"Host": "panel.example.com"}, timeout=10,
                        allow_redirects=False).status_code == 301

    stylesheets = [part.split('"', 1)[0] for part in login.text.split('href="/static/')[1:]]
    assert stylesheets, "the login page links no static file"
    static = through_proxy(port, "/static/" + stylesheets[0])
    assert static.status_code == 200 and static.headers["Content-Type"].startswith("text/css")
    assert "max-age=315360000" in static.headers.get("Cache-Control", ""), "collectstatic's hashed names are served"
    assert (Path(env["DRPANEL_VAR_DIR"]) / "static" / "staticfiles.json").exists()

    # The worker takes a job enqueued with the same environment (as a script on the host would).
    key = f"drpanel-deploy-test:{uuid.uuid4().hex}"
    enqueue = ("from drpanel.queues import get_queue; "
               f"print(get_queue('default').enqueue('tests.deploy.deploy_jobs.logged_report', {key!r}).id)")
    svc = service("drpanel-worker@.service")
    result = subprocess.run([str(VENV_BIN / "python"), "manage.py", "shell", "-c", enqueue],
                            cwd=local_path(svc["WorkingDirectory"][0], VENV_BIN),
                            env={**base_process_env(), **env, **unit_environment(svc)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip().splitlines()[-1]
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        done = wait_for(lambda: client.lpop(key), timeout=90, what="the worker to run the job")
    finally:
        client.delete(key)
        client.close()
    assert done.decode() == job_id

    # Logs are JSON lines (gunicorn's own too): the web's carry the request id, the worker's the job id.
    web_output = [line for line in started.output("web").splitlines() if line.strip()]
    assert web_output and all(line.startswith("{") for line in web_output), web_output[:5]
    web_lines = started.json_lines("web")
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in web_lines)
    assert any(line["logger"] == "drpanel.request" and line["request_id"] == "deploy-ready-1"
               and line["message"].startswith("GET /health/ready 200") for line in web_lines), web_lines[-5:]
    wait_for(lambda: any(line.get("message") == "deploy job ran" for line in started.json_lines("worker")),
             timeout=30, what="the job's log line")
    (ran,) = [line for line in started.json_lines("worker") if line.get("message") == "deploy job ran"]
    assert ran["job_id"] == job_id and ran["level"] == "INFO"

    assert started.alive("cron"), started.output("cron")[-3000:]
    wait_for(lambda: "Starting cron scheduler" in started.output("cron"), timeout=60, what="the scheduler to start")
    for name in ("web", "worker", "cron"):
        assert started.alive(name), f"{name} exited:\n{started.output(name)[-3000:]}"
        assert "Traceback" not in started.output(name), started.output(name)[-3000:]
