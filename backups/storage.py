"""Storage backends behind one small interface and a registry: a local directory, or S3.

A backend stores opaque objects under keys that the panel builds from internal ids
(``artifact_key``), never from names a user typed; ``check_key`` refuses anything else that
could leave the location (absolute paths, ``..``). Writes are all-or-nothing: a local write
goes to a temporary file renamed on success; an S3 write is a multipart upload completed on
success and aborted on failure. Reads stream. S3 talks to any endpoint (AWS, MinIO, moto),
with credentials from secret references or boto3's default chain; the client is created on
first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from drpanel import endpoints, secrets

MANIFEST_SUFFIX = ".manifest.json"
ARTIFACT_SUFFIX = ".drp"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9._\-/+=@ ]{1,900}$")


class StorageError(Exception):
    """A location cannot be used (unreachable, misconfigured, refused); the message names no secret."""


class ObjectMissing(StorageError):
    """The object is not at the location."""


@dataclass
class ObjectInfo:
    """One object as a location lists it."""

    key: str
    size: int
    modified: datetime | None = None


def check_key(key: str) -> str:
    """Refuse keys that are not plain relative paths inside the location."""
    parts = key.split("/")
    if not _SAFE_KEY.match(key) or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"refused storage key {key!r}: keys are relative paths built by the panel")
    return key


def artifact_key(system_id: int, artifact_id: uuid.UUID | str, suffix: str = ARTIFACT_SUFFIX) -> str:
    """Where an artifact lives in every location: only internal ids, never typed names."""
    return f"drpanel/system-{int(system_id)}/{uuid.UUID(str(artifact_id))}{suffix}"


def manifest_key(key: str) -> str:
    return key + MANIFEST_SUFFIX


class StorageBackend:
    """Base class: open_write / open_read / stat / list / delete over keys."""

    kind = ""

    def __init__(self, location):
        self.location = location

    @contextlib.contextmanager
    def open_write(self, key: str):
        """Yields a writable object; the object exists at ``key`` only if the block succeeds."""
        raise NotImplementedError
        yield  # pragma: no cover

    def open_read(self, key: str, *, start: int = 0, length: int | None = None):
        raise NotImplementedError

    def stat(self, key: str) -> ObjectInfo:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def discard_partial(self, key: str) -> None:
        """Remove what an interrupted ``open_write`` of ``key`` may have left (a process killed mid-write)."""
        raise NotImplementedError

    def check(self) -> None:
        """Reachable and writable enough to use; raises ``StorageError`` with a reason."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    # helpers shared by every backend

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as out:
            out.write(data)

    def get_bytes(self, key: str) -> bytes:
        with contextlib.closing(self.open_read(key)) as handle:
            return handle.read()

    def sha256(self, key: str) -> tuple[int, str]:
        """Re-read an object and return (size, SHA-256): the check a copy must pass."""
        digest = hashlib.sha256()
        size = 0
        with contextlib.closing(self.open_read(key)) as handle:
            while True:
                data = handle.read(1 << 20)
                if not data:
                    break
                digest.update(data)
                size += len(data)
        return size, digest.hexdigest()


class LocalBackend(StorageBackend):
    """A directory on this host (or a mount); objects are files below it."""

    kind = "local"

    @property
    def root(self) -> Path:
        return Path(self.location.path)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def open_write(self, key: str):
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".part",  # noqa: SIM115
                                                 delete=False)
        except OSError as exc:
            raise StorageError(f"cannot write in {self.root}: {exc.strerror}") from None
        try:
            with handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(handle.name, 0o600)
            os.replace(handle.name, path)
        except OSError as exc:
            # A full disk, a quota, an unmounted volume: the partial file goes, the reason stays.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(handle.name)
            raise StorageError(f"cannot write {key} in {self.root}: {exc.strerror or exc}") from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(handle.name)
            raise

    def open_read(self, key: str, *, start: int = 0, length: int | None = None):
        try:
            handle = open(self._path(key), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise ObjectMissing(f"{key} is missing from {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {key} in {self.root}: {exc.strerror}") from None
        if start:
            handle.seek(start)
        if length is not None:
            data = handle.read(length)
            handle.close()
            return io.BytesIO(data)
        return handle

    def stat(self, key: str) -> ObjectInfo:
        try:
            info = self._path(key).stat()
        except FileNotFoundError:
            raise ObjectMissing(f"{key} is missing from {self.root}") from None
        return ObjectInfo(key=key, size=info.st_size, modified=datetime.fromtimestamp(info.st_mtime, UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        root = self.root
        if not root.is_dir():
            raise StorageError(f"{root} is not a directory")
        for directory, _dirs, files in os.walk(root):
            for name in files:
                if name.startswith(".") and name.endswith(".part"):
                    continue
                path = Path(directory) / name
                key = path.relative_to(root).as_posix()
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    info = path.stat()
                    yield ObjectInfo(key=key, size=info.st_size,
                                     modified=datetime.fromtimestamp(info.st_mtime, UTC))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def discard_partial(self, key: str) -> None:
        path = self._path(key)
        for leftover in path.parent.glob(f".{path.name}.*.part"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def check(self) -> None:
        root = self.root
        if not root.is_absolute():
            raise StorageError(f"a local location needs an absolute path (got {root})")
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=root, prefix=".drpanel-check.", suffix=".part")  # noqa: SIM115
            probe.close()
        except OSError as exc:
            raise StorageError(f"cannot write in {root}: {exc.strerror}") from None

    def describe(self) -> str:
        return str(self.root)


class _S3Reader:
    """A streaming body with ``read(n)`` and ``close()``."""

    def __init__(self, body):
        self.body = body

    def read(self, n: int = -1) -> bytes:
        return self.body.read(None if n is None or n < 0 else n)

    def close(self) -> None:
        self.body.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _S3Writer:
    """Buffers parts of ``part_size`` and uploads them as a multipart upload."""

    def __init__(self, backend: S3Backend, key: str, part_size: int):
        self.backend = backend
        self.key = key
        self.part_size = part_size
        self.buffer = bytearray()
        self.upload_id = None
        self.parts: list[dict] = []

    def write(self, data) -> int:
        self.buffer += data
        while len(self.buffer) >= self.part_size:
            self._upload_part(bytes(self.buffer[: self.part_size]))
            del self.buffer[: self.part_size]
        return len(data)

    def _upload_part(self, data: bytes) -> None:
        client, bucket = self.backend.client, self.backend.bucket
        if self.upload_id is None:
            self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        answer = client.upload_part(Bucket=bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data)
        self.parts.append({"ETag": answer["ETag"], "PartNumber": number})

    def commit(self) -> None:
        client, bucket = self.backend.client, self.backend.bucket
        if self.upload_id is None:
            client.put_object(Bucket=bucket, Key=self.key, Body=bytes(self.buffer))
            return
        if self.buffer:
            self._upload_part(bytes(self.buffer))
        client.complete_multipart_upload(Bucket=bucket, Key=self.key, UploadId=self.upload_id,
                                         MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        if self.upload_id is not None:
            with contextlib.suppress(Exception):
                self.backend.client.abort_multipart_upload(Bucket=self.backend.bucket, Key=self.key,
                                                           UploadId=self.upload_id)


class S3Backend(StorageBackend):
    """A bucket + prefix on any S3-compatible endpoint (boto3)."""

    kind = "s3"
    part_size = 8 << 20

    def __init__(self, location):
        super().__init__(location)
        self._client = None

    @property
    def bucket(self) -> str:
        return self.location.bucket

    @property
    def prefix(self) -> str:
        prefix = (self.location.prefix or "").strip("/")
        return f"{prefix}/" if prefix else ""

    @property
    def client(self):
        if self._client is None:
            import boto3  # on first use: slow to load, and only S3 locations need it
            from botocore.config import Config  # loaded with boto3, on first use

            kwargs = {}
            try:
                endpoint = endpoints.check_endpoint(self.location.endpoint_url, what=f"{self.location}: endpoint URL",
                                                    resolve=True)
            except endpoints.EndpointRefused as exc:
                raise StorageError(str(exc)) from None
            if self.location.access_key_ref:
                try:
                    kwargs["aws_access_key_id"] = secrets.resolve(self.location.access_key_ref)
                    kwargs["aws_secret_access_key"] = secrets.resolve(self.location.secret_key_ref)
                except secrets.SecretReferenceError as exc:
                    raise StorageError(f"credentials of {self.location}: {exc}") from None
            self._client = endpoints.no_redirects(boto3.client(
                "s3", endpoint_url=endpoint or None, region_name=self.location.region or None,
                config=Config(retries={"max_attempts": settings.S3_ATTEMPTS, "mode": "standard"},
                              s3={"addressing_style": "path"}, connect_timeout=settings.S3_TIMEOUT_SECONDS,
                              read_timeout=settings.S3_TIMEOUT_SECONDS),
                **kwargs))
        return self._client

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _fail(self, exc, key: str = "") -> StorageError:
        from botocore.exceptions import ClientError  # loaded with boto3, on first use

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                return ObjectMissing(f"{key} is missing from s3://{self.bucket}/{self.prefix}")
            return StorageError(f"s3://{self.bucket}: {code or 'refused'}")
        return StorageError(f"s3://{self.bucket} is unreachable: {type(exc).__name__}")

    @contextlib.contextmanager
    def open_write(self, key: str):
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with boto3, on first use

        writer = _S3Writer(self, self._full(key), self.part_size)
        try:
            yield writer
            writer.commit()
        except (BotoCoreError, ClientError) as exc:
            writer.abort()
            raise self._fail(exc, key) from None
        except BaseException:
            writer.abort()
            raise

    def open_read(self, key: str, *, start: int = 0, length: int | None = None):
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with boto3, on first use

        kwargs = {}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            kwargs["Range"] = f"bytes={start}-{end}"
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._full(key), **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, key) from None
        return _S3Reader(answer["Body"])

    def stat(self, key: str) -> ObjectInfo:
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with boto3, on first use

        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, key) from None
        return ObjectInfo(key=key, size=answer["ContentLength"], modified=answer.get("LastModified"))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with boto3, on first use

        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(key=item["Key"][len(self.prefix):], size=item["Size"],
                                     modified=item.get("LastModified"))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc) from None

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with boto3, on first use

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, key) from None

    def discard_partial(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with boto3, on first use

        full = self._full(key)
        try:
            answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full)
            for upload in answer.get("Uploads", []):
                if upload["Key"] == full:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload["UploadId"])
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, key) from None

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with boto3, on first use

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc) from None

    def describe(self) -> str:
        where = f" at {self.location.endpoint_url}" if self.location.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


BACKENDS: dict[str, type[StorageBackend]] = {"local": LocalBackend, "s3": S3Backend}


def backend_for(location) -> StorageBackend:
    """The backend of a storage location (a ``StorageLocation`` or anything with its fields)."""
    try:
        cls = BACKENDS[location.kind]
    except KeyError:
        raise StorageError(f"unknown storage kind {location.kind!r}") from None
    return cls(location)
