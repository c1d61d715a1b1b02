"""deploy/compose.yaml, the image and the proxy example: their structure, and that every variable they set is
one the panel reads (and documents, once docs/configuration.md exists)."""

import re
import shutil
import subprocess

import pytest
import yaml
from django.urls import reverse

from drpanel import pgbin
from tests.deploy.units import DEPLOY, ENV_EXAMPLE, ROOT, read_env_file

COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_ENV = DEPLOY / "compose.env.example"
PANEL_SERVICES = {"web": ["web"], "worker-1": ["worker"], "worker-2": ["worker"], "cron": ["cron"]}
CODE_DIRS = ("drpanel", "backups", "restores", "compliance", "deploy")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def code_text() -> str:
    return "\n".join(p.read_text() for d in CODE_DIRS for p in (ROOT / d).rglob("*.py"))


def variables_set() -> dict[str, str]:
    """Every variable deploy/ sets for the panel, and where."""
    found = {}
    for path in (ENV_EXAMPLE, COMPOSE_ENV):
        found.update({name: path.name for name in read_env_file(path)})
    for name in PANEL_SERVICES:
        for var in (compose()["services"][name].get("environment") or {}):
            found[var] = f"compose.yaml ({name})"
    return found


def test_compose_runs_web_two_workers_cron_postgresql_redis_and_an_s3_store():
    services = compose()["services"]
    assert set(services) == {*PANEL_SERVICES, "postgres", "redis", "minio"}
    for name, command in PANEL_SERVICES.items():
        svc = services[name]
        assert svc["command"] == command, name
        assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
        assert svc["env_file"] == "compose.env", name
        assert svc["depends_on"].get("postgres", {"condition": "service_healthy"})["condition"] == "service_healthy"
    assert services["web"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "/health/ready" in " ".join(services["web"]["healthcheck"]["test"])
    for name in ("worker-1", "worker-2", "cron"):
        assert services[name]["depends_on"] == {"web": {"condition": "service_healthy"}}, name
    assert services["minio"]["image"].startswith("minio/")
    # Ports are published on loopback only: the reverse proxy is the way in.
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_every_secret_compose_mounts_is_declared_and_the_panel_reads_them_as_files():
    doc = compose()
    declared = set(doc["secrets"])
    for name, svc in doc["services"].items():
        assert set(svc.get("secrets", [])) <= declared, name
    env = read_env_file(COMPOSE_ENV)
    for var in ("SECRET_KEY_FILE", "DRPANEL_AUDIT_SIGNING_KEY_FILE", "DRPANEL_KEYS_FILE"):
        secret = env[var].removeprefix("/run/secrets/")
        assert secret in doc["services"]["web"]["secrets"], var
    assert "SECRET_KEY" not in env and "DRPANEL_KEYS" not in env, "a secret's value is in the env file"


def test_every_variable_deploy_sets_is_one_the_panel_reads():
    text = code_text()
    unread = []
    for name, where in variables_set().items():
        base = name.removesuffix("_FILE")
        if f'"{name}"' in text or f"'{name}'" in text:
            continue
        if name.endswith("_FILE") and re.search(rf"env_secret\(\s*\"{base}\"", text):
            continue
        unread.append(f"{name} ({where})")
    assert not unread, f"set in deploy/ but read nowhere: {unread}"


def test_every_variable_deploy_sets_is_documented_in_the_configuration_guide():
    guide = ROOT / "docs" / "configuration.md"
    if not guide.exists():
        pytest.skip("docs/configuration.md does not exist yet")
    text = guide.read_text()
    missing = [f"{name} ({where})" for name, where in variables_set().items() if name not in text]
    assert not missing, f"not in docs/configuration.md: {missing}"


def test_docker_compose_validates_the_compose_file(tmp_path):
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker CLI has no compose plugin on this machine (`docker compose version` fails)")
    work = tmp_path / "deploy"
    shutil.copytree(DEPLOY, work)
    shutil.copy(COMPOSE_ENV, work / "compose.env")
    (work / "secrets").mkdir(exist_ok=True)
    for secret in compose()["secrets"].values():
        (work / secret["file"]).touch()
    result = subprocess.run([docker, "compose", "-f", str(work / "compose.yaml"), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_image_runs_as_a_user_and_installs_each_majors_client_where_the_panel_looks():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image's processes run as root"
    majors = re.search(r'^ARG PG_MAJORS="([\d ]+)"', dockerfile, re.MULTILINE)[1].split()
    assert len(majors) >= 4 and all(int(m) >= 14 for m in majors)
    assert 'postgresql-client-$v' in dockerfile and "apt.postgresql.org" in dockerfile
    # Debian's packages put each major's tools in /usr/lib/postgresql/<major>/bin, where the panel looks
    # (the image's build runs each of them once to prove it).
    assert "/usr/lib/postgresql/$v/bin/pg_dump --version" in dockerfile
    for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which the repository lacks"
    assert re.search(r'^ENTRYPOINT \[.*"/opt/drpanel/deploy/entrypoint.sh"\]', dockerfile, re.MULTILINE)


@pytest.mark.django_db
def test_the_client_is_picked_by_the_real_servers_major(settings):
    from django.db import connection

    settings.PG_BIN_DIR = None
    major = connection.cursor().connection.info.server_version // 10000
    tool = pgbin.find_tool("pg_dump", major)
    assert tool.major >= major
    installed = sorted(t.major for t in pgbin.candidates("pg_dump") if t.major >= major)
    assert tool.major == installed[0], "not the closest client at least as new as the server"
    with pytest.raises(pgbin.ToolError, match=f"install the PostgreSQL {major + 50} client"):
        pgbin.find_tool("pg_dump", major + 50)


def test_the_proxy_sets_the_headers_the_panel_trusts_and_long_timeouts_for_exports():
    conf = (DEPLOY / "proxy" / "nginx.conf").read_text()
    headers = (DEPLOY / "proxy" / "drpanel_proxy_headers.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in headers
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in headers
    assert "proxy_set_header X-Request-ID $request_id;" in headers
    env = read_env_file(ENV_EXAMPLE)
    assert env["DRPANEL_PROXY_COUNT"] == "1" and env["DRPANEL_BEHIND_TLS_PROXY"] == "1"
    assert env["DRPANEL_BIND"].startswith("127.0.0.1:") and f"server {env['DRPANEL_BIND']};" in conf
    pattern = re.search(r"location ~ (\S+) \{\n(.*?)\n    \}", conf, re.DOTALL)
    streaming, block = re.compile(pattern[1]), pattern[2]
    for url in (reverse("compliance:audit-export"), "/api/v1/audit/export",
                reverse("compliance:certification-bundle", args=["2026-11"])):
        assert streaming.match(url), url
    assert "proxy_buffering off;" in block and "proxy_read_timeout 3600s;" in block
