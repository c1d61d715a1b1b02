"""Demo of the backup catalog: a realistic ``chatbotdysa`` database, its config, two locations, real backups.

``seed(out)`` (a step of ``manage.py demo``) is idempotent:

- creates the ``chatbotdysa`` database (``DRPANEL_DEMO_DATABASE``) with users, restaurants, menu
  items, orders, order items, conversations and messages (≥ 100k rows at ``DRPANEL_DEMO_SCALE=1``,
  generated in SQL with ``generate_series``): on the demo's own PostgreSQL when it runs
  (``backups.demo_server``, started by ``manage.py serve --demo``), with continuous protection on,
  else next to the panel's own database, protected by ``pg_dump`` only;
- writes a config directory and the secrets the system needs under ``var/demo/`` (mode 0600);
  the secrets are *canaries* — random values that must never show up in the panel's database;
- creates a local primary location under ``var/`` and, when an S3 endpoint is known
  (``DRPANEL_DEMO_S3_ENDPOINT``, or the moto server ``manage.py serve --demo`` starts), an S3
  off-site location;
- queues a full and a config backup through the real jobs when the system has none yet, and under
  continuous protection starts Barman's WAL stream (``continuous_tick``) and queues the first base
  backup.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from django.conf import settings
from django.db import transaction
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backups import barman, continuous, demo_server
from backups.models import Artifact, BackupRun, StorageLocation, System
from backups.runs import backup_request
from drpanel import runtime

SYSTEM = "chatbotdysa"
BUCKET = "chatbotdysa-dr"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
  id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, full_name text NOT NULL, phone text,
  role text NOT NULL DEFAULT 'customer', created_at timestamptz NOT NULL DEFAULT now(), profile jsonb);
CREATE TABLE IF NOT EXISTS restaurants (
  id bigserial PRIMARY KEY, name text NOT NULL, city text NOT NULL, address text, opens time, closes time,
  settings jsonb, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS menu_items (
  id bigserial PRIMARY KEY, restaurant_id bigint NOT NULL REFERENCES restaurants, name text NOT NULL,
  description text, category text NOT NULL, price numeric(10, 2) NOT NULL, available boolean NOT NULL DEFAULT true);
CREATE TABLE IF NOT EXISTS orders (
  id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users,
  restaurant_id bigint NOT NULL REFERENCES restaurants,
  status text NOT NULL, total numeric(10, 2) NOT NULL, placed_at timestamptz NOT NULL, delivery jsonb);
CREATE TABLE IF NOT EXISTS order_items (
  id bigserial PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders,
  menu_item_id bigint NOT NULL REFERENCES menu_items,
  quantity int NOT NULL, unit_price numeric(10, 2) NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
  id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users, restaurant_id bigint REFERENCES restaurants,
  channel text NOT NULL, started_at timestamptz NOT NULL, resolved boolean NOT NULL DEFAULT false);
CREATE TABLE IF NOT EXISTS messages (
  id bigserial PRIMARY KEY, conversation_id bigint NOT NULL REFERENCES conversations, sender text NOT NULL,
  body text NOT NULL, sent_at timestamptz NOT NULL, meta jsonb);
"""

DATA = """
INSERT INTO users (email, full_name, phone, role, created_at, profile)
SELECT 'user' || g || '@chatbotdysa.example',
       initcap(md5(g::text)::varchar(8)) || ' ' || initcap(md5((g * 7)::text)::varchar(10)),
       '+1-555-' || lpad((g % 10000)::text, 4, '0'), CASE WHEN g % 50 = 0 THEN 'staff' ELSE 'customer' END,
       now() - (g % 700) * interval '1 day',
       jsonb_build_object('lang', (ARRAY['en','es','pt'])[1 + g % 3], 'vip', g % 97 = 0)
FROM generate_series(1, 5000 * %(scale)s) g;
INSERT INTO restaurants (name, city, address, opens, closes, settings)
SELECT 'Restaurant ' || g, (ARRAY['Santiago','Lima','Bogotá','Quito','Madrid'])[1 + g % 5], g || ' Main Street',
       time '08:00' + (g % 4) * interval '1 hour', time '22:00',
       jsonb_build_object('delivery', g % 3 <> 0, 'tables', 10 + g % 30)
FROM generate_series(1, 200 * %(scale)s) g;
INSERT INTO menu_items (restaurant_id, name, description, category, price, available)
SELECT 1 + g % (200 * %(scale)s), 'Dish ' || g, repeat('Fresh and tasty. ', 1 + g % 5),
       (ARRAY['starter','main','dessert','drink'])[1 + g % 4], round((3 + (g % 40) * 0.75)::numeric, 2), g % 17 <> 0
FROM generate_series(1, 4000 * %(scale)s) g;
INSERT INTO orders (user_id, restaurant_id, status, total, placed_at, delivery)
SELECT 1 + g % (5000 * %(scale)s), 1 + (g * 7) % (200 * %(scale)s),
       (ARRAY['delivered','delivered','delivered','cancelled','pending'])[1 + g % 5],
       round((10 + (g % 90) * 1.1)::numeric, 2),
       now() - (g % 365) * interval '1 day' - (g % 1440) * interval '1 minute',
       jsonb_build_object('address', g || ' Side Street', 'minutes', 15 + g % 45)
FROM generate_series(1, 40000 * %(scale)s) g;
INSERT INTO order_items (order_id, menu_item_id, quantity, unit_price)
SELECT 1 + g % (40000 * %(scale)s), 1 + (g * 13) % (4000 * %(scale)s), 1 + g % 3,
       round((3 + (g % 40) * 0.75)::numeric, 2)
FROM generate_series(1, 80000 * %(scale)s) g;
INSERT INTO conversations (user_id, restaurant_id, channel, started_at, resolved)
SELECT 1 + g % (5000 * %(scale)s), 1 + g % (200 * %(scale)s), (ARRAY['whatsapp','web','telegram'])[1 + g % 3],
       now() - (g % 365) * interval '1 day', g % 4 <> 0
FROM generate_series(1, 10000 * %(scale)s) g;
INSERT INTO messages (conversation_id, sender, body, sent_at, meta)
SELECT 1 + g % (10000 * %(scale)s), CASE WHEN g % 2 = 0 THEN 'bot' ELSE 'customer' END,
       (ARRAY['Hola, quiero pedir', 'What is on the menu today?', 'Your order is on its way', '¿A qué hora cierran?',
              'Thanks!', 'Can I change my address?'])[1 + g % 6] || ' #' || g,
       now() - (g % 365) * interval '1 day',
       jsonb_build_object('intent', (ARRAY['order','menu','status','hours'])[1 + g % 4])
FROM generate_series(1, 60000 * %(scale)s) g;
CREATE INDEX IF NOT EXISTS orders_user ON orders (user_id);
CREATE INDEX IF NOT EXISTS messages_conversation ON messages (conversation_id);
ANALYZE;
"""


def demo_dir() -> Path:
    path = Path(settings.VAR_DIR) / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _private_file(path: Path, content: str) -> Path:
    """Write once (keeps canaries stable across runs), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
    os.chmod(path, 0o600)
    return path


def canary() -> str:
    return "demo-canary-" + secrets.token_hex(10)


def source_url() -> str:
    """The demo database's libpq conninfo, written to a 0600 file: on the demo's own server when it runs (its
    password is the server's), else on the panel's, carrying a canary password when that server ignores
    passwords (trust authentication, as the embedded and the test servers use), written once."""
    path = demo_dir() / "secrets" / "chatbotdysa-db-url"
    protected = demo_server.running()
    if protected is not None:
        url = protected.url(settings.DEMO_DATABASE)
        if not path.exists() or path.read_text().strip() != url:
            path.unlink(missing_ok=True)
            _private_file(path, url)
        return url
    if path.exists():
        return path.read_text().strip()
    base = runtime.with_database_name(settings.DATABASE_URL, settings.DEMO_DATABASE)
    url = base
    if not conninfo_to_dict(base).get("password"):
        candidate = make_conninfo(base, password=canary())
        with contextlib.suppress(psycopg.Error), psycopg.connect(make_conninfo(candidate, dbname="postgres"),
                                                                 connect_timeout=5):
            url = candidate
    _private_file(path, url)
    return path.read_text().strip()


def ensure_source_database(out) -> str:
    url = source_url()
    admin_url = make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [settings.DEMO_DATABASE]).fetchone():
            admin.execute(f'CREATE DATABASE "{settings.DEMO_DATABASE}"')
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        if conn.execute("SELECT count(*) FROM users").fetchone()[0] == 0:
            started = time.monotonic()
            with conn.transaction():
                conn.execute(DATA.replace("%(scale)s", str(int(settings.DEMO_SCALE))))
            rows = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in (  # noqa: S608
                "users", "restaurants", "menu_items", "orders", "order_items", "conversations", "messages"))
            out.write(f"  created the {settings.DEMO_DATABASE} database: {rows} rows in "
                      f"{time.monotonic() - started:.1f} s")
    return url


def ensure_config_dir() -> Path:
    config = demo_dir() / "chatbotdysa-config"
    (config / "nginx").mkdir(parents=True, exist_ok=True)
    _private_file(config / ".env", f"NODE_ENV=production\nPORT=8005\nJWT_SECRET={canary()}\n")
    (config / "nginx" / "chatbotdysa.conf").write_text(
        "server {\n  listen 80;\n  location /api/ { proxy_pass http://127.0.0.1:8005; }\n}\n")
    (config / "docker-compose.yml").write_text(
        "services:\n  backend:\n    image: chatbotdysa/backend:2.4\n    env_file: .env\n")
    return config


def ensure_s3(endpoint: str) -> dict:
    import boto3  # on first use: slow to load, and only the demo's S3 location needs it

    secrets_dir = demo_dir() / "secrets"
    access = _private_file(secrets_dir / "s3-access-key", "AKIA" + secrets.token_hex(8).upper())
    secret = _private_file(secrets_dir / "s3-secret-key", canary())
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=access.read_text().strip(),
                          aws_secret_access_key=secret.read_text().strip())
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
        client.create_bucket(Bucket=BUCKET)
    return {"access_key_ref": f"file:{access}", "secret_key_ref": f"file:{secret}"}


def s3_endpoint() -> str | None:
    return os.environ.get("DRPANEL_DEMO_S3_ENDPOINT") or settings.DEMO_S3_ENDPOINT


@transaction.atomic
def _catalog(url_path: Path, config: Path, endpoint: str | None, credentials: dict, *,
             continuous_on: bool) -> System:
    primary_path = demo_dir() / "backups-primary"
    primary_path.mkdir(parents=True, exist_ok=True)
    StorageLocation.objects.update_or_create(name="local-primary", defaults={
        "kind": "local", "role": "primary", "enabled": True, "path": str(primary_path)})
    if endpoint:
        StorageLocation.objects.update_or_create(name="s3-offsite", defaults={
            "kind": "s3", "role": "offsite", "enabled": True, "bucket": BUCKET, "prefix": "drpanel",
            "region": "us-east-1", "endpoint_url": endpoint, **credentials})
    system, _ = System.objects.update_or_create(name=SYSTEM, defaults={
        "description": "ChatBotDysa: restaurant ordering chatbot (demo)", "database_ref": f"file:{url_path}",
        "config_paths": [str(config)], "schedule_enabled": True})
    if continuous_on and not system.continuous_enabled:
        # Switched on here, never off: without its own server the demo's protection reports the server gone.
        System.objects.filter(pk=system.pk).update(continuous_enabled=True)
        system.refresh_from_db()
    return system


def seed(out) -> None:
    out.write("Backup catalog demo:")
    if demo_server.created() and demo_server.running() is None:
        raise demo_server.DemoServerError(
            f"the demo's database lives on its own PostgreSQL ({demo_server.root_dir()}), which is not running: "
            "start the demo with `make demo` (manage.py serve --demo)")
    ensure_source_database(out)
    config = ensure_config_dir()
    endpoint = s3_endpoint()
    credentials = ensure_s3(endpoint) if endpoint else {}
    protected = demo_server.running()
    system = _catalog(demo_dir() / "secrets" / "chatbotdysa-db-url", config, endpoint, credentials,
                      continuous_on=protected is not None)
    if not endpoint:
        out.write("  no S3 endpoint (set DRPANEL_DEMO_S3_ENDPOINT, or use `manage.py serve --demo`): "
                  "no off-site location")
    for kind in (Artifact.Kind.FULL, Artifact.Kind.CONFIG):
        if not Artifact.objects.filter(system=system, kind=kind, status=Artifact.Status.AVAILABLE).exists():
            run = backup_request(actor=None, system=system, kind=kind, trigger=BackupRun.Trigger.DEMO)
            out.write(f"  queued a {kind} backup of {system.name} (run {str(run.id)[:8]}); the workers take it")
    if protected is not None:
        _protect(system, out)
    out.write(f"  system {system.name}: database {settings.DEMO_DATABASE}, config {config}, "
              f"off-site {'s3://' + BUCKET + ' at ' + endpoint if endpoint else 'none'}")


def _protect(system: System, out) -> None:
    """Continuous protection of the demo's server: Barman's stream started now, the first base backup queued."""
    continuous.continuous_tick()
    out.write(f"  continuous protection on: Barman streams the WAL of the demo's PostgreSQL (port "
              f"{demo_server.running().port}) through slot {barman.slot_name(system)}")
    if not Artifact.objects.filter(system=system, kind=Artifact.Kind.BASE, status=Artifact.Status.AVAILABLE).exists():
        run = backup_request(actor=None, system=system, kind=Artifact.Kind.BASE, trigger=BackupRun.Trigger.DEMO)
        out.write(f"  queued the first base backup (run {str(run.id)[:8]}); the workers take it")


def stop_protected_server() -> None:
    """Stop the demo's PostgreSQL, and the Barman receiver streaming from it (``barman cron`` started it)."""
    system = System.objects.filter(name=SYSTEM).first()
    receiver = barman.receiver_pid(system) if system is not None else None
    demo_server.stop(receivers=[receiver] if receiver else [])


# --- the demo's S3 endpoint (a moto server, child of `manage.py serve --demo`) ---------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_demo_s3() -> tuple[list[str], subprocess.Popen] | None:
    """Start moto's S3 server when the demo has no S3 endpoint; returns (command, process) or None."""
    if settings.DEMO_S3_ENDPOINT:
        return None
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists():
        return None
    port = _free_port()
    command = [str(binary), "-H", "127.0.0.1", "-p", str(port)]
    log = open(demo_dir() / "moto.log", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 20
    while not runtime.port_answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            return None
        time.sleep(0.1)
    os.environ["DRPANEL_DEMO_S3_ENDPOINT"] = f"http://127.0.0.1:{port}"
    return command, process
