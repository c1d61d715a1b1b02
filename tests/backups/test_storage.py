"""Storage backends: a local directory and S3 (moto's server over HTTP), one interface."""

import hashlib
import os
import uuid
from types import SimpleNamespace

import boto3
import pytest

from backups.storage import (
    LocalBackend,
    ObjectMissing,
    S3Backend,
    StorageError,
    artifact_key,
    backend_for,
    check_key,
)


def local(path):
    return backend_for(SimpleNamespace(kind="local", path=str(path)))


@pytest.fixture
def bucket(s3_endpoint):
    name = f"drpanel-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def s3(endpoint, bucket, **extra):
    fields = {"kind": "s3", "bucket": bucket, "prefix": "backups/", "region": "us-east-1", "endpoint_url": endpoint,
              "access_key_ref": "", "secret_key_ref": ""}
    fields.update(extra)
    return backend_for(SimpleNamespace(**fields))


def test_a_local_location_writes_reads_lists_and_deletes(tmp_path):
    backend = local(tmp_path)
    assert isinstance(backend, LocalBackend)
    key = artifact_key(3, uuid.uuid4())
    backend.put_bytes(key, b"payload")
    assert backend.get_bytes(key) == b"payload"
    assert backend.stat(key).size == 7
    assert [o.key for o in backend.list()] == [key]
    assert backend.sha256(key) == (7, hashlib.sha256(b"payload").hexdigest())
    assert oct((tmp_path / key).stat().st_mode & 0o777) == "0o600"
    backend.delete(key)
    with pytest.raises(ObjectMissing):
        backend.stat(key)


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    backend = local(tmp_path)
    with pytest.raises(RuntimeError), backend.open_write("drpanel/x.drp") as out:
        out.write(b"half")
        raise RuntimeError("pg_dump died")
    assert list(backend.list()) == []
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("key", ["/etc/passwd", "../escape", "a/../../b", "a//b", "", "a/./b"])
def test_keys_cannot_leave_the_location(tmp_path, key):
    with pytest.raises(StorageError, match="refused storage key"):
        check_key(key)
    with pytest.raises(StorageError):
        local(tmp_path).put_bytes(key, b"x")


def test_artifact_keys_are_built_from_internal_ids_only():
    artifact_id = uuid.uuid4()
    assert artifact_key(7, artifact_id) == f"drpanel/system-7/{artifact_id}.drp"
    with pytest.raises(ValueError):
        artifact_key(7, "../../etc")


def test_s3_streams_a_multipart_upload_and_a_download(s3_endpoint, bucket):
    backend = s3(s3_endpoint, bucket)
    assert isinstance(backend, S3Backend)
    backend.part_size = 5 << 20
    data = os.urandom((12 << 20) + 123)
    key = artifact_key(1, uuid.uuid4())
    with backend.open_write(key) as out:
        for start in range(0, len(data), 1 << 20):
            out.write(data[start: start + (1 << 20)])
        assert len(out.parts) == 2
    assert backend.stat(key).size == len(data)
    assert backend.sha256(key) == (len(data), hashlib.sha256(data).hexdigest())
    ranged = backend.open_read(key, start=10, length=5)
    assert ranged.read() == data[10:15]
    ranged.close()
    raw = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert raw.head_object(Bucket=bucket, Key=f"backups/{key}")["ContentLength"] == len(data)
    assert [o.key for o in backend.list("drpanel/")] == [key]
    backend.delete(key)
    with pytest.raises(ObjectMissing):
        backend.stat(key)


def test_a_failed_s3_upload_is_aborted(s3_endpoint, bucket):
    backend = s3(s3_endpoint, bucket)
    backend.part_size = 5 << 20
    with pytest.raises(RuntimeError), backend.open_write("drpanel/partial.drp") as out:
        out.write(os.urandom(6 << 20))
        raise RuntimeError("interrupted")
    raw = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(backend.list()) == []


def test_s3_credentials_come_from_secret_references(s3_endpoint, bucket, monkeypatch):
    monkeypatch.setenv("DRPANEL_SECRET_TEST_S3_KEY", "AKIDEXAMPLE")
    monkeypatch.setenv("DRPANEL_SECRET_TEST_S3_SECRET", "canary-s3-secret")
    backend = s3(s3_endpoint, bucket, access_key_ref="env:DRPANEL_SECRET_TEST_S3_KEY",
                 secret_key_ref="env:DRPANEL_SECRET_TEST_S3_SECRET")
    backend.put_bytes("drpanel/a.drp", b"abc")
    assert backend.client._request_signer._credentials.access_key == "AKIDEXAMPLE"
    monkeypatch.delenv("DRPANEL_SECRET_TEST_S3_SECRET")
    with pytest.raises(StorageError, match="env:DRPANEL_SECRET_TEST_S3_SECRET") as caught:
        s3(s3_endpoint, bucket, access_key_ref="env:DRPANEL_SECRET_TEST_S3_KEY",
           secret_key_ref="env:DRPANEL_SECRET_TEST_S3_SECRET").check()
    assert "canary" not in str(caught.value)


def test_an_unreachable_bucket_is_a_clear_error(s3_endpoint):
    with pytest.raises(StorageError, match="s3://no-such-bucket"):
        s3(s3_endpoint, "no-such-bucket").check()
