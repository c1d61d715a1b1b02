"""Production refuses unsafe starts: each is a real ``manage.py`` process with ``DRPANEL_ENV=production``.

With a complete production environment (the real PostgreSQL and Redis of this test run, a secret key,
a master key, an audit signing key), ``check --deploy`` reports 0 issues. Take one piece away, or add
one unsafe piece, and the process stops with one line naming it, before anything is started or
created: no database URL or no Redis URL (nothing is auto-detected or embedded), embedded services,
no master key (none is generated), DEBUG. ``manage.py demo`` is refused, and demo users found in a
production database fail ``check --deploy``.
"""

import pytest
from django.contrib.auth.models import Group

from tests.drpanel.test_settings import manage, production_env
from tests.factories import UserFactory
from tests.support import worker_env

pytestmark = [pytest.mark.slow]


@pytest.fixture
def production(tmp_path, runtime_role):
    """The production environment against this test run's real database and Redis; ``var/`` is a fresh directory.

    The panel connects as a plain runtime role (``runtime_role``): a superuser is refused (drpanel.E002).
    """
    base = worker_env()
    var = tmp_path / "var"
    env = {**production_env(tmp_path), "DATABASE_URL": runtime_role.url, "REDIS_URL": base["REDIS_URL"],
           "DRPANEL_SERVICES": "auto", "DRPANEL_VAR_DIR": str(var)}
    env.pop("DEBUG", None)
    return env, var


@pytest.mark.django_db(transaction=True)
def test_a_complete_production_environment_passes_check_deploy_with_zero_warnings(production):
    env, var = production
    result = manage("check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert not (var / "pgdata").exists() and not (var / "keys.json").exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("change", "reason"), [
    ({"DATABASE_URL": ""}, "DATABASE_URL must be set when DRPANEL_ENV=production"),
    ({"REDIS_URL": ""}, "REDIS_URL must be set when DRPANEL_ENV=production"),
    ({"DRPANEL_SERVICES": "embedded"}, "DRPANEL_SERVICES=embedded is refused when DRPANEL_ENV=production"),
    ({"DRPANEL_KEYS": ""}, "backup master keys are required when DRPANEL_ENV=production"),
    ({"DEBUG": "1"}, "DEBUG=1 is refused when DRPANEL_ENV=production"),
    ({"SECRET_KEY_FILE": "", "SECRET_KEY": ""}, "SECRET_KEY (or SECRET_KEY_FILE) is required"),
])
def test_an_unsafe_production_start_is_refused_with_one_line_and_starts_nothing(production, change, reason):
    env, var = production
    result = manage("check", **{**env, **change})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [f"drpanel: {result.stderr.strip().removeprefix('drpanel: ')}"]
    assert reason in result.stderr
    assert not (var / "pgdata").exists() and not (var / "redis").exists(), "an embedded service was started"
    assert not list(var.glob("*key*")), "a key was generated"


@pytest.mark.django_db(transaction=True)
def test_the_demo_is_refused_and_demo_users_fail_check_deploy(production):
    env, _ = production
    result = manage("demo", **env)
    assert result.returncode != 0 and "refused when DRPANEL_ENV=production" in result.stderr
    from django.contrib.auth import get_user_model

    assert not get_user_model().objects.filter(username__in=["operator", "manager"]).exists()

    user = UserFactory(username="admin", email="admin@example.com", role="Admin")
    assert user.groups.filter(pk=Group.objects.get(name="Admin").pk).exists()
    result = manage("check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode != 0
    assert "drpanel.E001" in result.stderr + result.stdout and "admin" in result.stderr + result.stdout
