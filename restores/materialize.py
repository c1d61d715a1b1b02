"""Materialising an artifact: one trusted plaintext from one stored copy, for verifications and restores alike.

1. **Pick a copy** (``copies_to_try``): the primary copy when it is known to be intact, then
   every off-site copy whose last-seen SHA-256 matches the artifact's. Copies known to be
   missing or mismatched are never read.
2. **Stream and hash** the stored bytes and compare their SHA-256 and size with
   ``Artifact.sha256``/``size``.
3. **Authenticate and decrypt** into a temporary file (0600) beside nothing else: DR Panel
   artifacts chunk by chunk (AES-256-GCM, every chunk authenticated), the old guide's
   ``openssl enc`` artifacts with their passphrase from the keyring, unencrypted ones copied
   as they are; gzip'd SQL is then decompressed. The plaintext's SHA-256 is compared with
   the artifact's when it is known.

A corrupted, truncated, wrong-key or mismatched copy raises ``MaterializeError`` (naming
the copy and the reason) and leaves no file behind, before anything touches a target.
``materialize`` (restores) then tries the next copy and records why the first was refused;
verifications read one copy (``materialize_copy``), so that a damaged primary copy is
reported, not hidden.

``plaintext_stream`` yields the plaintext of one copy as it is authenticated, for the
streaming ``pg_restore -j1`` fallback; it raises (so the consumer stops) as soon as a chunk
fails, and at the end when the stored SHA-256 differs.
"""

import contextlib
import gzip
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from backups import formats
from backups.keys import LEGACY_PREFIX, get_keyring
from backups.models import Artifact, ArtifactCopy, StorageLocation
from backups.storage import StorageError

Progress = Callable[[int], None] | None
TEMP_PREFIX = "drpanel-run-"


class MaterializeError(Exception):
    """No trustworthy plaintext could be made from this artifact; the message says which copy and why."""

    def __init__(self, message: str, *, attempts: list[str] | None = None):
        super().__init__(message)
        self.attempts = attempts or []


class ChecksumMismatch(MaterializeError):
    """The stored bytes of a copy do not hash to the artifact's recorded SHA-256 (or size)."""


@dataclass
class Materialized:
    """A plaintext file made from one copy, with what was measured on the way."""

    path: Path
    copy: ArtifactCopy
    content: str
    stored_size: int
    stored_sha256: str
    plaintext_size: int
    plaintext_sha256: str | None
    duration_s: float
    attempts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"location": self.copy.location.name, "content": self.content, "stored_size": self.stored_size,
                "stored_sha256": self.stored_sha256, "plaintext_size": self.plaintext_size,
                "plaintext_sha256": self.plaintext_sha256, "duration_s": round(self.duration_s, 3),
                "refused_copies": self.attempts}


def content_of(artifact: Artifact) -> str:
    """What the plaintext is: ``pg_custom``, ``pg_plain`` (gzip undone), ``config_tar``, ``pg_directory_tar``."""
    return {
        Artifact.Format.PG_CUSTOM: "pg_custom", Artifact.Format.PG_PLAIN: "pg_plain",
        Artifact.Format.PG_PLAIN_GZIP: "pg_plain", Artifact.Format.CONFIG_TAR: "config_tar",
        Artifact.Format.PG_DIRECTORY_TAR: "pg_directory_tar",
    }.get(artifact.format, "unknown")


def copies_to_try(artifact: Artifact) -> list[ArtifactCopy]:
    """The copies worth reading, best first: intact primary, then off-site copies whose SHA-256 matched."""
    copies = list(artifact.copies.select_related("location").filter(location__enabled=True))
    primary = [c for c in copies if c.location.role == StorageLocation.Role.PRIMARY
               and c.status == ArtifactCopy.Status.OK]
    offsite = [c for c in copies if c.location.role == StorageLocation.Role.OFFSITE
               and c.status == ArtifactCopy.Status.OK and artifact.sha256 and c.sha256_seen == artifact.sha256]
    return primary + sorted(offsite, key=lambda c: c.location.name)


def pick_copy(artifact: Artifact) -> ArtifactCopy:
    """The copy a verification reads (the first of ``copies_to_try``)."""
    candidates = copies_to_try(artifact)
    if not candidates:
        raise MaterializeError(_no_copy_message(artifact))
    return candidates[0]


def _no_copy_message(artifact: Artifact) -> str:
    seen = [f"{c.location.name}: {c.get_status_display()}" for c in artifact.copies.select_related("location")]
    return ("no intact copy of this artifact to read (the primary must be ok, an off-site copy must have a "
            f"matching SHA-256); copies: {', '.join(seen) or 'none'}")


def legacy_passphrase(artifact: Artifact) -> str:
    key_id = artifact.key_id or ""
    if not key_id.startswith(LEGACY_PREFIX):
        raise MaterializeError("this legacy artifact names no passphrase (its key id is not legacy:<id>)")
    passphrase = get_keyring().legacy_passphrases.get(key_id[len(LEGACY_PREFIX):])
    if not passphrase:
        raise MaterializeError(f"the keyring holds no legacy passphrase {key_id!r} (DRPANEL_LEGACY_PASSPHRASES)")
    return passphrase


def _check_stored(artifact: Artifact, copy: ArtifactCopy, size: int, sha256: str) -> None:
    if not artifact.sha256:
        raise ChecksumMismatch(f"{copy.location.name}: the catalog has no SHA-256 for this artifact to compare with")
    if sha256 != artifact.sha256 or (artifact.size is not None and size != artifact.size):
        raise ChecksumMismatch(
            f"{copy.location.name}: the stored bytes do not match the catalog (SHA-256 {sha256[:16]}…, "
            f"{size} bytes; expected {artifact.sha256[:16]}…, {artifact.size} bytes)")


def _check_plaintext(artifact: Artifact, copy: ArtifactCopy, sha256: str | None) -> None:
    if artifact.plaintext_sha256 and sha256 and sha256 != artifact.plaintext_sha256:
        raise ChecksumMismatch(f"{copy.location.name}: the decrypted bytes do not match the recorded plaintext "
                               f"SHA-256 ({sha256[:16]}… instead of {artifact.plaintext_sha256[:16]}…)")


def _describe(exc: BaseException, copy: ArtifactCopy) -> str:
    if isinstance(exc, MaterializeError):
        return str(exc)
    name = type(exc).__name__
    return f"{copy.location.name}: {name}: {exc}"


def hash_copy(artifact: Artifact, copy: ArtifactCopy, *, progress: Progress = None) -> tuple[int, str]:
    """The checksum level: read every stored byte of ``copy``, compare size and SHA-256 with the catalog."""
    try:
        with contextlib.closing(copy.location.backend().open_read(copy.key)) as src:
            size, sha256 = formats.copy_stream(src, None, progress=progress)
    except StorageError as exc:
        raise MaterializeError(f"{copy.location.name}: {exc}") from None
    _check_stored(artifact, copy, size, sha256)
    return size, sha256


def authenticate_copy(artifact: Artifact, copy: ArtifactCopy, *, progress: Progress = None) -> formats.StreamResult:
    """The decrypt level: one pass that hashes the stored bytes and authenticates every chunk, keeping nothing.

    For DR Panel artifacts the stored SHA-256 and the GCM authentication run on two threads
    at once (``verify_stream(hash_plaintext=False)``: GCM already authenticates every
    plaintext byte under a key bound to this artifact). Legacy openssl artifacts are
    decrypted and their padding checked; unencrypted ones can only be hashed.
    """
    try:
        with contextlib.closing(copy.location.backend().open_read(copy.key)) as src:
            if artifact.encryption == Artifact.Encryption.DRPANEL:
                result = formats.verify_stream(src, artifact_id=artifact.id, keyring=get_keyring(), progress=progress,
                                               hash_plaintext=False)
            elif artifact.encryption == Artifact.Encryption.OPENSSL:
                result = formats.openssl_decrypt_stream(src, None, passphrase=legacy_passphrase(artifact),
                                                        progress=progress)
                _check_plaintext(artifact, copy, result.plaintext_sha256)
            else:
                size, sha256 = formats.copy_stream(src, None, progress=progress)
                result = formats.StreamResult(artifact_id=artifact.id, key_id="", chunk_size=0, chunks=0,
                                              plaintext_size=size, plaintext_sha256=sha256, stored_size=size,
                                              stored_sha256=sha256)
    except StorageError as exc:
        raise MaterializeError(f"{copy.location.name}: {exc}") from None
    except formats.ArtifactError as exc:
        raise MaterializeError(f"{copy.location.name}: {type(exc).__name__}: {exc}") from None
    _check_stored(artifact, copy, result.stored_size, result.stored_sha256)
    return result


def temp_dir() -> str:
    return settings.RESTORE_TEMP_DIR or tempfile.gettempdir()


def temp_path(run_id, suffix: str) -> Path:
    """``<temp dir>/drpanel-run-<run id>-<random>.<suffix>``: the run id lets a janitor find it."""
    handle = tempfile.NamedTemporaryFile(dir=temp_dir(), prefix=f"{TEMP_PREFIX}{run_id}-", suffix=f".{suffix}",  # noqa: SIM115
                                         delete=False)
    handle.close()
    os.chmod(handle.name, 0o600)
    return Path(handle.name)


def _decrypt_copy_to(artifact: Artifact, copy: ArtifactCopy, path: Path, progress: Progress) -> formats.StreamResult:
    with contextlib.closing(copy.location.backend().open_read(copy.key)) as src:
        if artifact.encryption == Artifact.Encryption.DRPANEL:
            return formats.decrypt_to_file(src, path, artifact_id=artifact.id, keyring=get_keyring(),
                                           progress=progress)
        if artifact.encryption == Artifact.Encryption.OPENSSL:
            return formats.openssl_decrypt_to_file(src, path, passphrase=legacy_passphrase(artifact),
                                                   progress=progress)
        with open(path, "wb") as out:
            size, sha256 = formats.copy_stream(src, out, progress=progress)
        return formats.StreamResult(artifact_id=artifact.id, key_id="", chunk_size=0, chunks=0, plaintext_size=size,
                                    plaintext_sha256=sha256, stored_size=size, stored_sha256=sha256)


def _gunzip(path: Path) -> int:
    """Decompress ``path`` in place (through a sibling file); returns the decompressed size."""
    out = path.with_name(path.name + ".sql")
    try:
        with gzip.open(path, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, EOFError) as exc:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        raise MaterializeError(f"the gzip'd SQL does not decompress: {exc}") from None
    os.chmod(out, 0o600)
    os.replace(out, path)
    return path.stat().st_size


def materialize_copy(artifact: Artifact, copy: ArtifactCopy, *, run_id, progress: Progress = None) -> Materialized:
    """Decrypt one copy into a new temporary file and check it; no file is left when it raises.

    Raises the precise error: ``ChecksumMismatch``, a ``backups.formats.ArtifactError``
    subclass (flipped bit, truncation, wrong key…), ``StorageError`` or ``MaterializeError``.
    """
    started = time.perf_counter()
    path = temp_path(run_id, "plain")
    try:
        result = _decrypt_copy_to(artifact, copy, path, progress)
        _check_stored(artifact, copy, result.stored_size, result.stored_sha256)
        _check_plaintext(artifact, copy, result.plaintext_sha256)
        plaintext_size = result.plaintext_size
        if artifact.format == Artifact.Format.PG_PLAIN_GZIP:
            plaintext_size = _gunzip(path)
    except BaseException:
        discard(path)
        raise
    return Materialized(path=path, copy=copy, content=content_of(artifact), stored_size=result.stored_size,
                        stored_sha256=result.stored_sha256, plaintext_size=plaintext_size,
                        plaintext_sha256=result.plaintext_sha256, duration_s=time.perf_counter() - started)


def materialize(artifact: Artifact, *, run_id, progress: Progress = None,
                on_refused: Callable[[str], None] | None = None) -> Materialized:
    """Decrypt the artifact into a temporary file from the first copy that passes every check.

    Copies are tried in the order of ``copies_to_try``; a refused copy is reported to
    ``on_refused(reason)`` and the next one is tried. The caller deletes ``path`` when done
    (``discard``). Raises ``MaterializeError`` listing every copy tried and why it was
    refused; then no file is left.
    """
    candidates = copies_to_try(artifact)
    if not candidates:
        raise MaterializeError(_no_copy_message(artifact))
    attempts: list[str] = []
    for candidate in candidates:
        try:
            materialized = materialize_copy(artifact, candidate, run_id=run_id, progress=progress)
        except (MaterializeError, StorageError, formats.ArtifactError, OSError) as exc:
            attempts.append(_describe(exc, candidate))
            if on_refused is not None:
                on_refused(attempts[-1])
            continue
        materialized.attempts = attempts
        return materialized
    raise MaterializeError("refused before anything was restored: " + "; ".join(attempts), attempts=attempts)


def discard(path: Path | str | None) -> None:
    """Remove a temporary plaintext file (no error if it is already gone)."""
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def plaintext_stream(artifact: Artifact, copy: ArtifactCopy, *, progress: Progress = None,
                     depth: int = 8) -> Iterator[bytes]:
    """Yield the plaintext of ``copy`` as it is authenticated (DR Panel and unencrypted custom dumps).

    Decryption runs in a thread; the iterator raises ``MaterializeError`` as soon as a chunk
    fails or, after the last chunk, when the stored SHA-256 differs from the catalog's, so a
    consumer (``pg_restore`` on a pipe) is stopped and its work discarded.
    """
    if artifact.encryption == Artifact.Encryption.OPENSSL or artifact.format == Artifact.Format.PG_PLAIN_GZIP:
        raise MaterializeError("this artifact cannot be streamed (legacy CBC or gzip): it needs a temporary file")
    chunks: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    class _Sink:
        def write(self, data) -> int:
            while not stop.is_set():
                try:
                    chunks.put(bytes(data), timeout=0.2)
                    return len(data)
                except queue.Full:
                    continue
            raise MaterializeError("the consumer stopped reading")

    def produce() -> None:
        try:
            with contextlib.closing(copy.location.backend().open_read(copy.key)) as src:
                if artifact.encryption == Artifact.Encryption.DRPANEL:
                    result = formats.decrypt_stream(src, _Sink(), artifact_id=artifact.id, keyring=get_keyring(),
                                                    progress=progress, hash_plaintext=True)
                else:
                    size, sha256 = formats.copy_stream(src, _Sink(), progress=progress)
                    result = formats.StreamResult(artifact_id=artifact.id, key_id="", chunk_size=0, chunks=0,
                                                  plaintext_size=size, plaintext_sha256=sha256, stored_size=size,
                                                  stored_sha256=sha256)
            _check_stored(artifact, copy, result.stored_size, result.stored_sha256)
            _check_plaintext(artifact, copy, result.plaintext_sha256)
            item = done
        except BaseException as exc:  # handed to the consumer, which raises it
            item = exc
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=produce, daemon=True, name="artifact-stream")
    thread.start()
    try:
        while True:
            item = chunks.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                if isinstance(item, MaterializeError):
                    raise item
                raise MaterializeError(_describe(item, copy)) from None
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
