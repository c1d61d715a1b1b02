"""The artifact format: round trips, and every kind of damage failing with its own error."""

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import uuid

import pytest

from backups import formats
from backups.formats import (
    ArtifactMismatchError,
    ChunkAuthenticationError,
    ChunkOrderError,
    GarbledHeaderError,
    MissingHeaderError,
    TruncatedArtifactError,
    UnknownKeyIdError,
    WrongKeyError,
)
from backups.keys import Keyring, read_key_config
from drpanel.env import ConfigError

CHUNK = 1024
RECORD = CHUNK + formats.TAG_SIZE
KEY_A = os.urandom(32)
KEY_B = os.urandom(32)


@pytest.fixture
def keyring():
    return Keyring.from_keys({"k1": KEY_A, "k2": KEY_B}, active="k1")


def encrypt(data: bytes, keyring, artifact_id=None, chunk_size=CHUNK, key_id=None):
    artifact_id = artifact_id or uuid.uuid4()
    out = io.BytesIO()
    result = formats.encrypt_stream(io.BytesIO(data), out, artifact_id=artifact_id, keyring=keyring,
                                    chunk_size=chunk_size, key_id=key_id)
    return artifact_id, out.getvalue(), result


def decrypt(blob: bytes, keyring, artifact_id):
    out = io.BytesIO()
    result = formats.decrypt_stream(io.BytesIO(blob), out, artifact_id=artifact_id, keyring=keyring)
    return out.getvalue(), result


def header_size(blob: bytes) -> int:
    _, raw = formats.read_header_bytes(io.BytesIO(blob))
    return len(raw)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 77])
def test_it_round_trips_every_size(keyring, size):
    data = os.urandom(size)
    artifact_id, blob, result = encrypt(data, keyring)
    plain, checked = decrypt(blob, keyring, artifact_id)
    assert plain == data
    assert result.plaintext_sha256 == checked.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert result.stored_sha256 == checked.stored_sha256 == hashlib.sha256(blob).hexdigest()
    assert result.stored_size == checked.stored_size == len(blob)
    assert checked.chunks == size // CHUNK + 1


def test_memory_stays_constant_because_chunks_have_a_fixed_size(keyring):
    data = os.urandom(3 * CHUNK + 5)
    _, blob, _ = encrypt(data, keyring)
    assert len(blob) == header_size(blob) + 4 * formats.TAG_SIZE + len(data) + formats.FOOTER.size


def test_the_header_names_the_key_and_artifact_without_any_key(keyring):
    artifact_id, blob, _ = encrypt(b"x" * 3000, keyring)
    header = formats.read_header(io.BytesIO(blob))
    assert header.artifact_id == artifact_id
    assert header.key_id == "k1"
    assert header.chunk_size == CHUNK


def test_it_refuses_a_wrong_key(keyring):
    artifact_id, blob, _ = encrypt(b"secret rows" * 500, keyring)
    impostor = Keyring.from_keys({"k1": os.urandom(32)})
    with pytest.raises(WrongKeyError, match="'k1'"):
        decrypt(blob, impostor, artifact_id)


def test_it_refuses_an_unknown_key_id(keyring):
    artifact_id, blob, _ = encrypt(b"secret rows" * 500, keyring, key_id="k2")
    with pytest.raises(UnknownKeyIdError, match="'k2'"):
        decrypt(blob, Keyring.from_keys({"k1": KEY_A}), artifact_id)


@pytest.mark.parametrize("where", ["first", "middle", "final"])
def test_it_refuses_a_flipped_bit(keyring, where):
    artifact_id, blob, _ = encrypt(os.urandom(4 * CHUNK + 100), keyring)
    start = header_size(blob)
    offset = {"first": start + 3, "middle": start + 2 * RECORD + 500, "final": len(blob) - formats.FOOTER.size - 5}
    damaged = bytearray(blob)
    damaged[offset[where]] ^= 0x01
    with pytest.raises(ChunkAuthenticationError, match="failed authentication"):
        decrypt(bytes(damaged), keyring, artifact_id)


@pytest.mark.parametrize("cut", [1, formats.FOOTER.size, formats.FOOTER.size + 40, RECORD + 300])
def test_it_refuses_a_truncated_file(keyring, cut):
    artifact_id, blob, _ = encrypt(os.urandom(4 * CHUNK + 100), keyring)
    with pytest.raises(TruncatedArtifactError, match="ends early"):
        decrypt(blob[:-cut], keyring, artifact_id)


def test_it_refuses_a_file_cut_at_a_chunk_boundary(keyring):
    artifact_id, blob, _ = encrypt(os.urandom(4 * CHUNK + 100), keyring)
    start = header_size(blob)
    with pytest.raises(TruncatedArtifactError):
        decrypt(blob[: start + 2 * RECORD], keyring, artifact_id)


def test_it_refuses_a_dropped_chunk(keyring):
    artifact_id, blob, _ = encrypt(os.urandom(5 * CHUNK + 100), keyring)
    start = header_size(blob)
    dropped = blob[: start + RECORD] + blob[start + 2 * RECORD:]
    with pytest.raises(ChunkOrderError, match="chunk 1 holds the data of chunk 2"):
        decrypt(dropped, keyring, artifact_id)


def test_it_refuses_reordered_chunks(keyring):
    artifact_id, blob, _ = encrypt(os.urandom(5 * CHUNK + 100), keyring)
    start = header_size(blob)
    records = [blob[start + i * RECORD: start + (i + 1) * RECORD] for i in range(5)]
    swapped = blob[:start] + records[0] + records[2] + records[1] + b"".join(records[3:]) + blob[start + 5 * RECORD:]
    with pytest.raises(ChunkOrderError, match="dropped or reordered"):
        decrypt(swapped, keyring, artifact_id)


def test_it_refuses_a_dropped_final_chunk(keyring):
    artifact_id, blob, _ = encrypt(os.urandom(3 * CHUNK + 100), keyring)
    start = header_size(blob)
    without_final = blob[: start + 3 * RECORD] + blob[-formats.FOOTER.size:]
    with pytest.raises(ChunkOrderError, match="final chunk is missing"):
        decrypt(without_final, keyring, artifact_id)


def test_it_refuses_a_missing_header(keyring):
    artifact_id, blob, _ = encrypt(os.urandom(2 * CHUNK), keyring)
    with pytest.raises(MissingHeaderError, match="no DR Panel header"):
        decrypt(blob[header_size(blob):], keyring, artifact_id)
    with pytest.raises(MissingHeaderError):
        decrypt(b"", keyring, artifact_id)


@pytest.mark.parametrize("offset", [9, 20, 40, 45])
def test_it_refuses_a_garbled_header(keyring, offset):
    artifact_id, blob, _ = encrypt(os.urandom(2 * CHUNK), keyring)
    damaged = bytearray(blob)
    damaged[offset] ^= 0x10
    with pytest.raises(GarbledHeaderError):
        decrypt(bytes(damaged), keyring, artifact_id)


def test_it_refuses_artifact_b_presented_as_a(keyring):
    a, _, _ = encrypt(b"a" * 3000, keyring)
    _, blob_b, _ = encrypt(b"b" * 3000, keyring)
    with pytest.raises(ArtifactMismatchError, match=str(a)):
        decrypt(blob_b, keyring, a)


def test_a_header_grafted_onto_another_body_fails(keyring):
    a, blob_a, _ = encrypt(os.urandom(3000), keyring)
    _, blob_b, _ = encrypt(os.urandom(3000), keyring)
    grafted = blob_a[: header_size(blob_a)] + blob_b[header_size(blob_b):]
    with pytest.raises(ChunkAuthenticationError):
        decrypt(grafted, keyring, a)


def test_every_error_is_an_artifact_error():
    for cls in (MissingHeaderError, GarbledHeaderError, UnknownKeyIdError, WrongKeyError, ArtifactMismatchError,
                ChunkAuthenticationError, ChunkOrderError, TruncatedArtifactError, formats.LegacyDecryptError):
        assert issubclass(cls, formats.ArtifactError)
    assert len({MissingHeaderError, GarbledHeaderError, UnknownKeyIdError, WrongKeyError, ArtifactMismatchError,
                ChunkAuthenticationError, ChunkOrderError, TruncatedArtifactError}) == 8


def test_decrypt_to_file_releases_nothing_from_a_damaged_artifact(keyring, tmp_path):
    artifact_id, blob, _ = encrypt(os.urandom(6 * CHUNK), keyring)
    damaged = bytearray(blob)
    damaged[-formats.FOOTER.size - 30] ^= 0x80
    target = tmp_path / "restore" / "dump.pgc"
    with pytest.raises(ChunkAuthenticationError):
        formats.decrypt_to_file(io.BytesIO(bytes(damaged)), target, artifact_id=artifact_id, keyring=keyring)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    result = formats.decrypt_to_file(io.BytesIO(blob), target, artifact_id=artifact_id, keyring=keyring)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == result.plaintext_sha256


def test_verification_authenticates_without_keeping_plaintext(keyring):
    data = os.urandom(3 * CHUNK)
    artifact_id, blob, result = encrypt(data, keyring)
    checked = formats.verify_stream(io.BytesIO(blob), artifact_id=artifact_id, keyring=keyring)
    assert checked.plaintext_sha256 == result.plaintext_sha256
    assert checked.stored_sha256 == hashlib.sha256(blob).hexdigest()


def test_a_rotation_rewraps_the_data_key_without_touching_the_chunks(keyring):
    data = os.urandom(4 * CHUNK + 9)
    artifact_id, blob, before = encrypt(data, keyring, key_id="k1")
    out = io.BytesIO()
    header, after = formats.rewrap_stream(io.BytesIO(blob), out, artifact_id=artifact_id, keyring=keyring,
                                          to_key_id="k2")
    rewrapped = out.getvalue()
    assert header.key_id == "k2"
    assert rewrapped[header_size(rewrapped):] == blob[header_size(blob):]
    assert rewrapped[: formats.FIXED.size] == blob[: formats.FIXED.size]
    assert after.stored_sha256 == hashlib.sha256(rewrapped).hexdigest() != before.stored_sha256
    only_k2 = Keyring.from_keys({"k2": KEY_B})
    plain, _ = decrypt(rewrapped, only_k2, artifact_id)
    assert plain == data
    with pytest.raises(UnknownKeyIdError):
        decrypt(blob, only_k2, artifact_id)


def test_kms_wraps_and_unwraps_data_keys(s3_endpoint):
    import boto3

    kms = boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1")
    key = kms.create_key(Description="drpanel test")["KeyMetadata"]["KeyId"]
    config = read_key_config({"DRPANEL_KMS_KEY_ID": key, "DRPANEL_KMS_ENDPOINT_URL": s3_endpoint,
                              "DRPANEL_KMS_REGION": "us-east-1"})
    assert config.active_key_id == f"kms:{key}"
    ring = Keyring(config)
    data = os.urandom(3 * CHUNK + 1)
    artifact_id, blob, result = encrypt(data, ring)
    assert result.key_id == f"kms:{key}"
    assert decrypt(blob, ring, artifact_id)[0] == data
    with pytest.raises(UnknownKeyIdError, match="KMS"):
        decrypt(blob, Keyring.from_keys({"k1": KEY_A}), artifact_id)


def test_a_rotation_can_move_an_artifact_from_the_keyring_to_kms(s3_endpoint, keyring):
    import boto3

    kms = boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1")
    key = kms.create_key(Description="rotation target")["KeyMetadata"]["KeyId"]
    config = read_key_config({"DRPANEL_KEYS": f"k1:{base64.b64encode(KEY_A).decode()}",
                              "DRPANEL_KMS_KEY_ID": key, "DRPANEL_KMS_ENDPOINT_URL": s3_endpoint})
    ring = Keyring(config)
    data = os.urandom(2 * CHUNK)
    artifact_id, blob, _ = encrypt(data, ring, key_id="k1")
    out = io.BytesIO()
    formats.rewrap_stream(io.BytesIO(blob), out, artifact_id=artifact_id, keyring=ring, to_key_id=f"kms:{key}")
    assert formats.read_header(io.BytesIO(out.getvalue())).key_id == f"kms:{key}"
    assert decrypt(out.getvalue(), ring, artifact_id)[0] == data


# --- legacy: the old guide's openssl artifacts ------------------------------------------------

def openssl_encrypt(path, passphrase: str) -> bytes:
    return subprocess.run(["openssl", "enc", "-aes-256-cbc", "-pbkdf2", "-salt", "-in", str(path),
                           "-pass", f"pass:{passphrase}"], check=True, capture_output=True).stdout


def test_it_reads_an_artifact_made_by_the_real_openssl_command(tmp_path):
    dump = gzip.compress(b"-- PostgreSQL database dump\nCREATE TABLE users (id int);\n" * 200)
    (tmp_path / "db.sql.gz").write_bytes(dump)
    blob = openssl_encrypt(tmp_path / "db.sql.gz", "supersecret")
    assert formats.sniff(blob)[0] == formats.ENCRYPTION_OPENSSL
    assert formats.openssl_probe(blob[:4096], "supersecret") == "gzip"
    assert formats.openssl_probe(blob[:4096], "not-it") is None
    result = formats.openssl_decrypt_to_file(io.BytesIO(blob), tmp_path / "out.sql.gz", passphrase="supersecret")
    assert (tmp_path / "out.sql.gz").read_bytes() == dump
    assert result.stored_sha256 == hashlib.sha256(blob).hexdigest()


def test_a_wrong_legacy_passphrase_releases_nothing(tmp_path):
    (tmp_path / "db.sql").write_bytes(b"-- dump\n" * 1000)
    blob = openssl_encrypt(tmp_path / "db.sql", "supersecret")
    with pytest.raises(formats.ArtifactError):
        formats.openssl_decrypt_to_file(io.BytesIO(blob), tmp_path / "out.sql", passphrase="wrong")
    assert not (tmp_path / "out.sql").exists()


# --- key configuration -------------------------------------------------------------------------

def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_keys_come_from_the_environment():
    config = read_key_config({"DRPANEL_KEYS": f"old:{b64(KEY_A)},new:{b64(KEY_B)}", "DRPANEL_ACTIVE_KEY_ID": "new"})
    assert config.master_keys == {"old": KEY_A, "new": KEY_B}
    assert config.active_key_id == "new"
    assert b64(KEY_A) not in repr(config)


@pytest.mark.parametrize("env, message", [
    ({"DRPANEL_KEYS": "k1:not-base64!"}, "not valid base64"),
    ({"DRPANEL_KEYS": f"k1:{b64(b'short')}"}, "32 bytes"),
    ({"DRPANEL_KEYS": f"a:{b64(KEY_A)},b:{b64(KEY_B)}"}, "DRPANEL_ACTIVE_KEY_ID"),
    ({"DRPANEL_KEYS": f"a:{b64(KEY_A)}", "DRPANEL_ACTIVE_KEY_ID": "zz"}, "not one of"),
    ({"DRPANEL_KEYS": "nocolon"}, "id1:value1"),
])
def test_malformed_keys_stop_start_up_with_a_reason(env, message):
    with pytest.raises(ConfigError, match=message):
        read_key_config(env)


def test_a_keys_file_must_be_private(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": {"k1": b64(KEY_A)}, "legacy_passphrases": {"guide": "supersecret"}}))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        read_key_config({"DRPANEL_KEYS_FILE": str(path)})
    path.chmod(0o600)
    config = read_key_config({"DRPANEL_KEYS_FILE": str(path)})
    assert config.master_keys == {"k1": KEY_A}
    assert config.legacy_passphrases == {"guide": "supersecret"}
    assert config.active_key_id == "k1"


def test_the_documented_layout_decrypts_an_artifact_without_the_panel(keyring, tmp_path):
    import sys
    from pathlib import Path

    data = os.urandom(5 * CHUNK + 3)
    artifact_id, blob, result = encrypt(data, keyring)
    (tmp_path / "a.drp").write_bytes(blob)
    script = Path(formats.__file__).parent / "decrypt_artifact.py"
    env = {"PATH": os.environ["PATH"], "DRPANEL_KEY": base64.b64encode(KEY_A).decode()}
    done = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "a.drp"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == data
    assert result.plaintext_sha256 in done.stdout
