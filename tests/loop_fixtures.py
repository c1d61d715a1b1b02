"""Fixtures of the verification and restore-run tests (a pytest plugin: ``pytest_plugins = ["tests.loop_fixtures"]``).

Everything real: a small shop database on the shared PostgreSQL (``drt_<random>_shop``),
backed up through the real backup job into a local primary location, targets whose
databases are ``drt_<random>_…`` (all dropped after the test by ``scratch``), a
verification server whose throw-away databases are ``drt_<random>_verify__restore_<tag>``,
and a small HTTP server for the health checks. Worker processes see the same: the
fixtures put keys and secret references in ``os.environ``, which ``worker_env`` copies.
"""

import base64
import http.server
import os
import threading

import pytest

from backups.keys import KeyConfig
from backups.models import Artifact, StorageLocation, System
from restores import targets
from tests.dump_replay import DumpReplay
from tests.loop_support import make_target, take_backup
from tests.restore_support import SAMPLE_SCHEMA


@pytest.fixture
def loop_keys(settings, monkeypatch):
    """One master key ``k1``, for this process (settings) and for worker processes (environment)."""
    keys = {"k1": os.urandom(32)}
    settings.BACKUP_KEYS = KeyConfig(master_keys=keys, active_key_id="k1", source="test")
    monkeypatch.setenv("DRPANEL_KEYS", ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in keys.items()))
    monkeypatch.setenv("DRPANEL_ACTIVE_KEY_ID", "k1")
    return keys


@pytest.fixture
def shop(scratch, monkeypatch):
    """The source database of the system ``shop`` (users 300, orders 2000, info 1)."""
    url = scratch.create("shop", setup=SAMPLE_SCHEMA)
    monkeypatch.setenv("DRPANEL_SECRET_LOOP_SHOP_URL", url)
    return url


@pytest.fixture
def verify_server(scratch, settings, monkeypatch):
    """Restore-tests go to ``drt_<random>_verify__restore_<tag>`` on the test server."""
    url = scratch.url(scratch.name("verify"))
    monkeypatch.setenv("DRPANEL_LOOP_VERIFY_URL", url)
    monkeypatch.setenv("DRPANEL_VERIFY_DATABASE", "env:DRPANEL_LOOP_VERIFY_URL")
    settings.VERIFY_DATABASE_REF = "env:DRPANEL_LOOP_VERIFY_URL"
    return url


@pytest.fixture
def temp_dir(tmp_path, settings, monkeypatch):
    """Decrypted temporary files go here (and only here)."""
    path = tmp_path / "restore-temp"
    path.mkdir()
    settings.RESTORE_TEMP_DIR = str(path)
    settings.RESTORE_TEMP_HEADROOM_MB = 0
    monkeypatch.setenv("DRPANEL_RESTORE_TEMP_DIR", str(path))
    monkeypatch.setenv("DRPANEL_RESTORE_TEMP_HEADROOM_MB", "0")
    return path


@pytest.fixture
def shop_config(tmp_path):
    config = tmp_path / "shop-config"
    (config / "nginx").mkdir(parents=True)
    (config / "app.env").write_text("FEATURE=restored\n")
    (config / "nginx" / "site.conf").write_text("server { listen 80; }\n")
    return config


@pytest.fixture
def shop_system(shop, loop_keys, verify_server, temp_dir, tmp_path, shop_config):
    """The system ``shop`` with a local primary location."""
    (tmp_path / "primary").mkdir()
    StorageLocation.objects.create(name="primary", kind="local", role="primary", path=str(tmp_path / "primary"))
    return System.objects.create(name="shop", database_ref="env:DRPANEL_SECRET_LOOP_SHOP_URL",
                                 config_paths=[str(shop_config)])


@pytest.fixture(scope="session")
def dump_replay(tmp_path_factory) -> DumpReplay:
    """This test process's kept real dumps (``tests.dump_replay``)."""
    return DumpReplay(tmp_path_factory.mktemp("dumps"))


@pytest.fixture
def full_artifact(shop_system, dump_replay) -> Artifact:
    """A real full backup of the shop, this test's own; its pg_dump output is the session's first one, replayed."""
    return dump_replay.backup(shop_system)


@pytest.fixture
def config_artifact(shop_system) -> Artifact:
    return take_backup(shop_system, "config")


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(type(self).status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    """An HTTP server on 127.0.0.1 answering 200 (``health_server.handler.status`` changes that)."""
    handler = type("Health", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_port}/health"
    server.handler = handler
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def staging(scratch, monkeypatch, tmp_path, shop_system, health_server, operator):
    target = make_target(scratch, monkeypatch, tmp_path, name="shop-staging", environment="staging", system=shop_system,
                         health_url=health_server.url)
    targets.target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")
    return target


@pytest.fixture
def production(scratch, monkeypatch, tmp_path, shop_system, health_server, operator, manager):
    target = make_target(scratch, monkeypatch, tmp_path, name="shop-production", environment="production",
                         system=shop_system, health_url=health_server.url)
    targets.target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")
    targets.target_right_grant(actor=None, target=target, user=manager, right="restore_to_target")
    targets.target_right_grant(actor=None, target=target, user=manager, right="approve_restore")
    return target
