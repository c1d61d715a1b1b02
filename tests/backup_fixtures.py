"""Fixtures for backup tests: a source database to dump, locations, a system, a keyring."""

import base64
import os
import uuid

import boto3
import psycopg
import pytest
from django.db import connection

from backups.keys import KeyConfig, Keyring
from backups.models import StorageLocation, System
from drpanel import runtime
from tests.restore_support import later_drops

SOURCE_SQL = """
CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, profile jsonb);
CREATE TABLE orders (id serial PRIMARY KEY, user_id int REFERENCES users, total numeric(10,2), note text);
INSERT INTO users (email, profile) SELECT 'user' || g || '@example.com', jsonb_build_object('n', g)
  FROM generate_series(1, 300) g;
INSERT INTO orders (user_id, total, note) SELECT 1 + g % 300, g * 1.5, repeat('x', g % 50)
  FROM generate_series(1, 2000) g;
"""


def server_url(name: str) -> str:
    return runtime.with_database_name(os.environ["DATABASE_URL"], name)


@pytest.fixture
def source_db(monkeypatch):
    """A small real database on the test server; its URL is in $DRPANEL_SECRET_TEST_SOURCE_URL."""
    name = f"{connection.settings_dict['NAME']}_src_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(server_url("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = server_url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SOURCE_SQL)
    monkeypatch.setenv("DRPANEL_SECRET_TEST_SOURCE_URL", url)
    yield url
    later_drops.drop([name])


@pytest.fixture
def test_keys(settings):
    """A fresh keyring with two master keys (k1 active)."""
    keys = {"k1": os.urandom(32), "k2": os.urandom(32)}
    settings.BACKUP_KEYS = KeyConfig(master_keys=keys, active_key_id="k1", source="test")
    return keys


def keys_env(keys: dict, active: str = "k1") -> dict:
    """The same keys as environment variables, for worker processes."""
    return {"DRPANEL_KEYS": ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in keys.items()),
            "DRPANEL_ACTIVE_KEY_ID": active}


def keyring_of(keys: dict, active="k1") -> Keyring:
    return Keyring.from_keys(keys, active=active)


@pytest.fixture
def primary(tmp_path):
    (tmp_path / "primary").mkdir()
    return StorageLocation.objects.create(name="primary", kind="local", role="primary", path=str(tmp_path / "primary"))


@pytest.fixture
def offsite(s3_endpoint):
    bucket = f"offsite-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return StorageLocation.objects.create(name="offsite", kind="s3", role="offsite", bucket=bucket, prefix="dr/",
                                          region="us-east-1", endpoint_url=s3_endpoint)


@pytest.fixture
def system(source_db, tmp_path):
    config = tmp_path / "config"
    (config / "nested").mkdir(parents=True)
    (config / "app.env").write_text("FEATURE=1\n")
    (config / "nested" / "nginx.conf").write_text("server {}\n")
    return System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL",
                                 config_paths=[str(config)])
