"""Settings are strict: a bad value stops start-up with one line; production passes check --deploy."""

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def manage(*args, **env):
    full_env = {**os.environ, **env}
    full_env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # set for Playwright in this process only
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=full_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("DEBUG", "maybe", "DEBUG='maybe' is not a boolean"),
    ("DRPANEL_ENV", "staging", "DRPANEL_ENV='staging' is not one of: development, production"),
    ("DATABASE_URL", "mysql://x/y", "DATABASE_URL must start with postgresql://"),
    ("DRPANEL_SESSION_IDLE_MINUTES", "soon", "DRPANEL_SESSION_IDLE_MINUTES='soon' is not an integer"),
    ("DRPANEL_SERVICES", "cloud", "DRPANEL_SERVICES='cloud' is not one of"),
])
def test_an_invalid_value_stops_start_up_with_one_line(name, value, reason):
    result = manage("check", **{name: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert reason in lines[0]
    assert "Traceback" not in result.stderr


def _server_url(user: str, database: str, *, port: int | None = None) -> str:
    """This run's PostgreSQL server (DATABASE_URL) with another role, database or port."""
    from drpanel import runtime

    url = runtime.with_database_name(os.environ["DATABASE_URL"], database)
    scheme, _, rest = url.partition("://")
    host = rest.split("@", 1)[-1].split("/", 1)[0]
    if port is not None:
        host = f"{host.rsplit(':', 1)[0]}:{port}"
    return f"{scheme}://{user}@{host}/{database}"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(("command", "url", "reason"), [
    ("migrate", lambda: _server_url("postgres", "drpanel_no_such_database"),
     'database "drpanel_no_such_database" does not exist'),
    ("serve", lambda: _server_url("drpanel_no_such_role:Leaked-Pass-4417", "postgres"),
     'role "drpanel_no_such_role" does not exist'),
    ("migrate", lambda: _server_url("postgres", "postgres", port=_free_port()), "Connection refused"),
])
def test_a_database_that_cannot_be_used_stops_a_command_with_one_line(command, url, reason, redis_conn):
    from drpanel import queues

    # This installation's id is already claimed in Redis for this run's database (as by a panel that ran before):
    # the unusable database must be the error named, not a conflict over a Redis database it never got to use.
    queues.claim_installation(redis_conn)
    result = manage(command, DATABASE_URL=url(), DRPANEL_SERVICES="external")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("drpanel: the database ") and "(DATABASE_URL) cannot be used" in lines[0]
    assert reason in lines[0]
    assert "Leaked-Pass-4417" not in result.stdout + result.stderr


def test_the_traceback_is_there_when_asked_for():
    result = manage("migrate", "--traceback", DATABASE_URL=_server_url("postgres", "drpanel_no_such_database"),
                    DRPANEL_SERVICES="external")
    assert result.returncode != 0 and "Traceback" in result.stderr and "OperationalError" in result.stderr


def production_env(tmp_path) -> dict:
    """The smallest valid production environment: a secret key, a host, an audit signing key and a master key."""
    key_file = tmp_path / "key"
    key_file.write_text("p" * 20 + "roduction-secret-key-for-the-deploy-check-0123456789")
    audit_key = tmp_path / "audit-signing-key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(audit_key)], check=True)
    return {"DRPANEL_ENV": "production", "SECRET_KEY_FILE": str(key_file), "ALLOWED_HOSTS": "panel.example.com",
            "DRPANEL_AUDIT_SIGNING_KEY_FILE": str(audit_key),
            "DRPANEL_KEYS": "k1:" + base64.b64encode(b"production-master-key-32-bytes!!").decode()}


def test_production_requires_a_secret_key():
    result = manage("check", DRPANEL_ENV="production", ALLOWED_HOSTS="panel.example.com", SECRET_KEY="")
    assert result.returncode == 2
    assert "SECRET_KEY (or SECRET_KEY_FILE) is required" in result.stderr


def test_the_secret_key_can_come_from_a_file(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("k" * 64)
    result = manage("shell", "-c", "from django.conf import settings; print(settings.SECRET_KEY == 'k' * 64)",
                    SECRET_KEY_FILE=str(key_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("True")


@pytest.mark.django_db(transaction=True)
def test_check_deploy_reports_zero_warnings_in_production(tmp_path, runtime_role):
    # Production runs as a plain role (a superuser is drpanel.E002): tests/compliance/test_trust_audit_roles.py.
    result = manage("check", "--deploy", "--fail-level", "WARNING", **production_env(tmp_path),
                    DATABASE_URL=runtime_role.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
