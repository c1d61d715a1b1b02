"""The tests' replayed pg_dump (``tests.dump_replay``) gives the same artifact a real one would, and only then."""

import subprocess

import psycopg
import pytest

from backups import formats
from backups.keys import get_keyring
from backups.models import BackupRun
from drpanel import pgbin
from tests.dump_replay import DumpReplay
from tests.loop_support import stored_path

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db]


def plaintext(artifact, tmp_path) -> bytes:
    out = tmp_path / f"{artifact.pk}.plain"
    with open(stored_path(artifact), "rb") as src:
        formats.decrypt_to_file(src, out, artifact_id=artifact.pk, keyring=get_keyring())
    return out.read_bytes()


def as_sql(artifact, tmp_path) -> str:
    """The archive as SQL text (``pg_restore -f -``): the custom format compresses its data."""
    archive = tmp_path / f"{artifact.pk}.dump"
    archive.write_bytes(plaintext(artifact, tmp_path))
    tool = pgbin.candidates("pg_restore")[0].path
    return subprocess.run([tool, "-f", "-", str(archive)], check=True, capture_output=True, text=True).stdout


def test_a_second_backup_of_the_same_source_replays_the_first_dump_into_its_own_artifact(shop_system, tmp_path):
    replay = DumpReplay(tmp_path / "dumps")
    first = replay.backup(shop_system)
    second = replay.backup(shop_system)
    assert replay.replays == 1
    assert first.pk != second.pk and stored_path(first) != stored_path(second)
    assert first.sha256 != second.sha256, "each artifact is encrypted on its own"
    assert second.plaintext_sha256 == first.plaintext_sha256
    assert plaintext(second, tmp_path) == plaintext(first, tmp_path)
    assert plaintext(first, tmp_path).startswith(b"PGDMP"), "a pg_dump custom-format archive"
    counts = {t["table"]: t["rows"] for t in second.manifest["tables"]}
    assert counts == {"users": 300, "orders": 2000, "info": 1}
    run = BackupRun.objects.get(artifact=second)
    assert run.state == "succeeded" and [s["name"] for s in run.steps][:3] == ["connect", "roles", "dump and encrypt"]


def test_a_changed_source_gets_a_real_dump_again(shop_system, shop, tmp_path):
    replay = DumpReplay(tmp_path / "dumps")
    first = replay.backup(shop_system)
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("UPDATE orders SET note = 'changed' WHERE id = 7")
    second = replay.backup(shop_system)
    assert replay.replays == 0
    assert second.plaintext_sha256 != first.plaintext_sha256
    assert "changed" in as_sql(second, tmp_path) and "changed" not in as_sql(first, tmp_path)
