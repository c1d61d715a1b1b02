"""Helpers of the verification and restore-run tests (fixtures are in ``tests.loop_fixtures``)."""

import hashlib
import io
import subprocess
import uuid
from pathlib import Path

from backups import formats
from backups.keys import get_keyring
from backups.models import Artifact, ArtifactCopy, StorageLocation, System
from backups.runs import backup_request, backup_run_execute
from backups.storage import artifact_key
from restores import targets

SHOP_COUNTS = {"users": 300, "orders": 2000, "info": 1}


def take_backup(system: System, kind: str = "full") -> Artifact:
    run = backup_run_execute(backup_request(actor=None, system=system, kind=kind).id)
    assert run.state == "succeeded", run.error
    return run.artifact


def make_target(scratch, monkeypatch, tmp_path, *, name: str, environment: str, system=None, health_url=None,
                sanity=True, marker="before") -> object:
    """A target whose database is ``drt_<random>_<name>`` holding ``info(marker)`` and a config directory."""
    suffix = name.replace("-", "_")
    url = scratch.create(suffix, marker=marker)
    variable = f"DRPANEL_SECRET_LOOP_{suffix.upper()}_URL"
    monkeypatch.setenv(variable, url)
    config = tmp_path / f"{name}-config"
    config.mkdir()
    (config / "app.env").write_text("FEATURE=before\n")
    return targets.target_create(
        actor=None, name=name, environment=environment, database_ref=f"env:{variable}", config_dir=str(config),
        system=system, health_check_hosts=["127.0.0.1"],
        sanity_checks=[{"name": "users exist", "query": "SELECT count(*) FROM users", "expectation": ">= 1"}]
        if sanity else [],
        health_checks=[{"url": health_url, "expected_status": 200}] if health_url else [])


def store_artifact(system: System, *, kind: str, fmt: str, plaintext: bytes, manifest: dict | None = None,
                   encryption: str = "drpanel-v1", legacy_passphrase: str | None = None) -> Artifact:
    """Catalogue an artifact made from ``plaintext`` in the primary location (encrypted like the panel does)."""
    location = StorageLocation.objects.get(role="primary")
    artifact_id = uuid.uuid4()
    key = artifact_key(system.pk, artifact_id)
    key_id = ""
    with location.backend().open_write(key) as out:
        if encryption == "drpanel-v1":
            result = formats.encrypt_stream(io.BytesIO(plaintext), out, artifact_id=artifact_id, keyring=get_keyring())
            stored, sha, key_id = result.stored_size, result.stored_sha256, result.key_id
        elif encryption == "openssl-aes-256-cbc-pbkdf2":
            data = subprocess.run(["openssl", "enc", "-aes-256-cbc", "-pbkdf2", "-salt", "-pass",
                                   f"pass:{legacy_passphrase}"], input=plaintext, capture_output=True,
                                  check=True).stdout
            out.write(data)
            stored, sha, key_id = len(data), hashlib.sha256(data).hexdigest(), "legacy:old"
        else:
            out.write(plaintext)
            stored, sha = len(plaintext), hashlib.sha256(plaintext).hexdigest()
    artifact = Artifact.objects.create(
        id=artifact_id, system=system, kind=kind, format=fmt, encryption=encryption, status="available",
        source="sync", size=stored, sha256=sha, key_id=key_id, storage_key=key, manifest=manifest or {})
    ArtifactCopy.objects.create(artifact=artifact, location=location, key=key, status="ok", size=stored,
                                sha256_seen=sha)
    return artifact


def stored_path(artifact: Artifact):
    """The file of the artifact's primary copy (tests damage it on purpose)."""
    location = StorageLocation.objects.get(role="primary")
    return Path(location.path) / artifact.storage_key



def copy_marker(scratch, name: str) -> str:
    """The marker of a pre-restore or failed copy (they refuse connections: let this one in first)."""
    from psycopg import sql

    with scratch.admin() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
    return scratch.marker(name)
