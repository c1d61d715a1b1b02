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
