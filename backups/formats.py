"""The artifact format: chunked AES-256-GCM (STREAM) with a per-artifact data key, and legacy readers.

Byte layout of a DR Panel artifact, version 1 (docs/administrator.md repeats it for readers without the panel;
all integers big-endian):

    fixed header, 37 bytes (the associated data of every chunk; never changes)
      magic         8   b"DRPANEL\\x1a"
      version       1   1
      algorithm     1   1 = AES-256-GCM STREAM
      chunk size    4   plaintext bytes per chunk C (every chunk but the last holds exactly C)
      artifact id  16   the artifact's UUID
      nonce prefix  7   random
    key section (re-written by a master-key rotation; authenticated by its own wrapping)
      length        2   n, then n bytes:
        key id length 1, key id (UTF-8), wrap method 1, wrapped key length 2, wrapped key
    header checksum 8   first 8 bytes of SHA-256(fixed header ‖ length ‖ key section): catches a
                        garbled header before any key is used (it is not a security measure)
    records             chunk i = AES-256-GCM(data key, nonce_i, plaintext_i, aad_i) = ciphertext ‖ 16-byte tag
                        nonce_i = nonce prefix ‖ i (4 bytes) ‖ 1 for the final chunk else 0
                        aad_i = fixed header, and for the final chunk fixed header ‖ footer
                        the final chunk holds 0 ≤ n < C plaintext bytes (an empty one if C divides the size)
    footer, 20 bytes    b"DRPEND\\x00\\x01" ‖ plaintext size (8) ‖ chunk count (4)

Wrap methods: 1 = AES-256-GCM under a keyring master key, stored as nonce (12) ‖ ciphertext ‖ tag,
with associated data b"drpanel-wrap-v1\\x00" ‖ key id ‖ b"\\x00" ‖ fixed header; 2 = AWS KMS
``Encrypt`` of the data key with encryption context {"drpanel-artifact": artifact id,
"drpanel-header": hex SHA-256 of the fixed header}.

Because chunks authenticate only the fixed header, a rotation re-wraps the data key and rewrites
the key section without touching a single chunk (the stored bytes, and their SHA-256, do change).

Failure contract: ``decrypt_stream`` writes only chunks that authenticated, in order, and raises
on the first problem; what it already wrote is a correct prefix but NOT the artifact, so a caller
must discard it. ``decrypt_to_file`` does that for you (temporary file, renamed on success only).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import queue
import struct
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

MAGIC = b"DRPANEL\x1a"
FOOTER_MAGIC = b"DRPEND\x00\x01"
VERSION = 1
ALGORITHM_AES256GCM_STREAM = 1
CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 10
MAX_CHUNK_SIZE = 1 << 26
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
FIXED = struct.Struct(">8sBBI16s7s")
FOOTER = struct.Struct(">8sQI")
CHECKSUM_SIZE = 8
WRAP_AES_GCM = 1
WRAP_KMS = 2
ENCRYPTION_DRPANEL = "drpanel-v1"
ENCRYPTION_OPENSSL = "openssl-aes-256-cbc-pbkdf2"
ENCRYPTION_NONE = "none"
OPENSSL_MAGIC = b"Salted__"
OPENSSL_PBKDF2_ITERATIONS = 10000  # `openssl enc -pbkdf2` default
# Bytes read and hashed per call when no chunking applies (legacy, plain copies).
BLOCK = 1 << 20

Progress = Callable[[int], None] | None


# --- errors ----------------------------------------------------------------------------------

class ArtifactError(Exception):
    """An artifact cannot be read or trusted; subclasses say exactly why."""


class MissingHeaderError(ArtifactError):
    """The bytes do not start with a DR Panel header (not an artifact, or the start is lost)."""


class GarbledHeaderError(ArtifactError):
    """The header is there but damaged or of an unknown version/algorithm."""


class UnknownKeyIdError(ArtifactError):
    """The header names a master key this keyring does not hold."""


class WrongKeyError(ArtifactError):
    """The named master key is present but does not unwrap this artifact's data key."""


class ArtifactMismatchError(ArtifactError):
    """The file is a valid artifact, but another one than the caller asked for."""


class ChunkAuthenticationError(ArtifactError):
    """A chunk failed authentication: its bytes were changed (a flipped bit, a bad disk)."""


class ChunkOrderError(ArtifactError):
    """An intact chunk sits at the wrong position: chunks were dropped or reordered."""


class TruncatedArtifactError(ArtifactError):
    """The artifact ends early (or its end marker is missing or damaged)."""


class LegacyDecryptError(ArtifactError):
    """A legacy (openssl) artifact could not be decrypted: wrong passphrase or damaged file."""


# --- header ----------------------------------------------------------------------------------

@dataclass
class Header:
    """A parsed artifact header; ``fixed`` is the associated data every chunk is bound to."""

    artifact_id: uuid.UUID
    chunk_size: int
    nonce_prefix: bytes
    key_id: str
    wrap_method: int
    wrapped_key: bytes
    version: int = VERSION
    algorithm: int = ALGORITHM_AES256GCM_STREAM

    @property
    def fixed(self) -> bytes:
        return FIXED.pack(MAGIC, self.version, self.algorithm, self.chunk_size, self.artifact_id.bytes,
                          self.nonce_prefix)

    def key_section(self) -> bytes:
        key_id = self.key_id.encode()
        return (struct.pack(">B", len(key_id)) + key_id + struct.pack(">BH", self.wrap_method, len(self.wrapped_key))
                + self.wrapped_key)

    def to_bytes(self) -> bytes:
        section = self.key_section()
        body = self.fixed + struct.pack(">H", len(section)) + section
        return body + hashlib.sha256(body).digest()[:CHECKSUM_SIZE]

    def as_dict(self) -> dict:
        return {"version": self.version, "algorithm": "AES-256-GCM-STREAM", "chunk_size": self.chunk_size,
                "artifact_id": str(self.artifact_id), "key_id": self.key_id,
                "wrap": {WRAP_AES_GCM: "aes-256-gcm", WRAP_KMS: "aws-kms"}.get(self.wrap_method, "?"),
                "size": len(self.to_bytes())}


def wrap_aad(key_id: str, fixed: bytes) -> bytes:
    return b"drpanel-wrap-v1\x00" + key_id.encode() + b"\x00" + fixed


def _read_exact(src, n: int) -> bytes:
    """Read ``n`` bytes, fewer only at the end of the stream (pipes and sockets return short reads)."""
    chunks = []
    remaining = n
    while remaining:
        data = src.read(remaining)
        if not data:
            break
        chunks.append(data)
        remaining -= len(data)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_header_bytes(src) -> tuple[Header, bytes]:
    """Parse the header at the start of ``src``; return it and its exact bytes."""
    fixed = _read_exact(src, FIXED.size)
    if len(fixed) < len(MAGIC) or fixed[: len(MAGIC)] != MAGIC:
        if fixed[: len(OPENSSL_MAGIC)] == OPENSSL_MAGIC:
            raise MissingHeaderError("this is a legacy openssl artifact, not a DR Panel one (no DR Panel header)")
        raise MissingHeaderError("no DR Panel header: the file does not start with the artifact magic")
    if len(fixed) < FIXED.size:
        raise GarbledHeaderError("the header is cut short")
    magic, version, algorithm, chunk_size, artifact_bytes, prefix = FIXED.unpack(fixed)
    length_bytes = _read_exact(src, 2)
    if len(length_bytes) < 2:
        raise GarbledHeaderError("the header is cut short")
    (section_length,) = struct.unpack(">H", length_bytes)
    section = _read_exact(src, section_length)
    checksum = _read_exact(src, CHECKSUM_SIZE)
    raw = fixed + length_bytes + section
    if len(section) < section_length or len(checksum) < CHECKSUM_SIZE:
        raise GarbledHeaderError("the header is cut short")
    if hashlib.sha256(raw).digest()[:CHECKSUM_SIZE] != checksum:
        raise GarbledHeaderError("the header checksum does not match: the header is damaged")
    if version != VERSION:
        raise GarbledHeaderError(f"unknown artifact format version {version}")
    if algorithm != ALGORITHM_AES256GCM_STREAM:
        raise GarbledHeaderError(f"unknown algorithm {algorithm}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise GarbledHeaderError(f"implausible chunk size {chunk_size}")
    try:
        key_id_length = section[0]
        key_id = section[1: 1 + key_id_length].decode()
        wrap_method, wrapped_length = struct.unpack(">BH", section[1 + key_id_length: 4 + key_id_length])
        wrapped = section[4 + key_id_length:]
    except (IndexError, struct.error, UnicodeDecodeError):
        raise GarbledHeaderError("the key section is malformed") from None
    if len(wrapped) != wrapped_length or not key_id:
        raise GarbledHeaderError("the key section is malformed")
    header = Header(artifact_id=uuid.UUID(bytes=artifact_bytes), chunk_size=chunk_size, nonce_prefix=prefix,
                    key_id=key_id, wrap_method=wrap_method, wrapped_key=wrapped, version=version,
                    algorithm=algorithm)
    return header, raw + checksum


def read_header(src) -> Header:
    """The header of an artifact (from a file object or a path), without needing any key."""
    if isinstance(src, str | Path):
        with open(src, "rb") as handle:
            return read_header_bytes(handle)[0]
    return read_header_bytes(src)[0]


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


# --- results ---------------------------------------------------------------------------------

@dataclass
class StreamResult:
    """What a pass over an artifact measured: sizes and SHA-256 of stored and plaintext bytes."""

    artifact_id: uuid.UUID
    key_id: str
    chunk_size: int
    chunks: int
    plaintext_size: int
    plaintext_sha256: str | None
    stored_size: int
    stored_sha256: str
    header: dict = field(default_factory=dict)


class _Hashing:
    """A write-through wrapper that counts and hashes what passes."""

    def __init__(self, dst, hasher=None):
        self.dst = dst
        self.hasher = hasher or hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.hasher.update(data)
        self.size += len(data)
        if self.dst is not None:
            self.dst.write(data)
        return len(data)


# --- encryption ------------------------------------------------------------------------------

def encrypt_stream(src, dst, *, artifact_id: uuid.UUID | str, keyring, key_id: str | None = None,
                   chunk_size: int = CHUNK_SIZE, progress: Progress = None) -> StreamResult:
    """Encrypt everything ``src`` yields into ``dst`` as an artifact; constant memory.

    ``progress(plaintext_bytes_so_far)`` is called after each chunk.
    """
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} is out of range")
    artifact_id = uuid.UUID(str(artifact_id))
    data_key = AESGCM.generate_key(bit_length=256)
    header = Header(artifact_id=artifact_id, chunk_size=chunk_size, nonce_prefix=os.urandom(NONCE_PREFIX_SIZE),
                    key_id="", wrap_method=0, wrapped_key=b"")
    header.key_id, header.wrap_method, header.wrapped_key = keyring.wrap(data_key, key_id=key_id,
                                                                        header=header)
    aead = AESGCM(data_key)
    out = _Hashing(dst)
    out.write(header.to_bytes())
    fixed = header.fixed
    plain_hash = hashlib.sha256()
    plaintext_size = 0
    counter = 0
    while True:
        piece = _read_exact(src, chunk_size)
        plain_hash.update(piece)
        plaintext_size += len(piece)
        if len(piece) < chunk_size:
            footer = FOOTER.pack(FOOTER_MAGIC, plaintext_size, counter + 1)
            out.write(aead.encrypt(_nonce(header.nonce_prefix, counter, True), piece, fixed + footer))
            out.write(footer)
            counter += 1
            break
        out.write(aead.encrypt(_nonce(header.nonce_prefix, counter, False), piece, fixed))
        counter += 1
        if progress:
            progress(plaintext_size)
    if progress:
        progress(plaintext_size)
    return StreamResult(artifact_id=artifact_id, key_id=header.key_id, chunk_size=chunk_size, chunks=counter,
                        plaintext_size=plaintext_size, plaintext_sha256=plain_hash.hexdigest(),
                        stored_size=out.size, stored_sha256=out.hasher.hexdigest(), header=header.as_dict())


# --- decryption ------------------------------------------------------------------------------

_END = object()


class _RecordReader(threading.Thread):
    """Reads records after the header on its own thread; every stored byte is hashed on a third one.

    hashlib releases the GIL on large buffers, so the stored SHA-256 (the slowest part of a
    pass) runs on one core while reading and authenticating share the other: reading and
    hashing in the same thread would add the two up. Puts ``(index, record, is_final,
    footer)`` tuples, then ``_END``, or an exception; the hash is complete once the thread
    has been joined.
    """

    def __init__(self, src, hasher, record_size: int, depth: int = 4):
        super().__init__(daemon=True, name="artifact-reader")
        self.src = src
        self.record_size = record_size
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stored_size = 0
        self.stop = threading.Event()
        self.hashing = _HashingThread(hasher=hasher)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        self.hashing.start()
        try:
            self._run()
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)
        finally:
            self.hashing.finish()

    def _run(self) -> None:
        size = self.record_size
        # Whole records are emitted as the very objects read (no copying); only the tail (final
        # record + footer, shorter than one record + footer) is joined at the end. A block is
        # certainly a full, non-final record once at least a record and a footer follow it.
        blocks: collections.deque = collections.deque()
        after_first = 0
        index = 0
        eof = False
        while not eof and not self.stop.is_set():
            data = _read_exact(self.src, size)
            if len(data) < size:
                eof = True
            if data:
                self.hashing.queue.put(data)
                self.stored_size += len(data)
                if blocks:
                    after_first += len(data)
                blocks.append(data)
            while len(blocks) > 1 and after_first >= size + FOOTER.size:
                self._put((index, blocks.popleft(), False, None))
                after_first -= len(blocks[0])
                index += 1
        buffer = b"".join(blocks)
        if self.stop.is_set():
            return
        body = len(buffer) - FOOTER.size
        footer = bytes(buffer[body:]) if body >= 0 else b""
        if body < TAG_SIZE or footer[: len(FOOTER_MAGIC)] != FOOTER_MAGIC:
            self._put(TruncatedArtifactError(
                f"the artifact ends early: its end marker is missing after {self.stored_size} bytes "
                "(truncated file, or bytes appended)"))
            return
        full, final_length = divmod(body, size)
        if final_length < TAG_SIZE:
            full -= 1
            final_length += size
        if final_length >= size:
            # The bytes before the end marker do not end in a short final chunk.
            _, expected_size, expected_chunks = FOOTER.unpack(footer)
            self._put(ChunkOrderError(
                f"the final chunk is missing: the end marker announces {expected_chunks} chunks "
                f"and {expected_size} bytes, the file holds a different number"))
            return
        for n in range(full):
            self._put((index, bytes(buffer[n * size:(n + 1) * size]), False, None))
            index += 1
        self._put((index, bytes(buffer[full * size: full * size + final_length]), True, footer))
        self._put(_END)


class _HashingThread(threading.Thread):
    """A SHA-256 fed through a queue on its own thread, so authentication and hashing share two cores."""

    def __init__(self, depth: int = 8, hasher=None):
        super().__init__(daemon=True, name="artifact-hash")
        self.hasher = hasher or hashlib.sha256()
        self.queue: queue.Queue = queue.Queue(maxsize=depth)

    def run(self) -> None:
        while (data := self.queue.get()) is not None:
            self.hasher.update(data)

    def finish(self) -> str:
        self.queue.put(None)
        self.join()
        return self.hasher.hexdigest()


def _open_data_key(header: Header, keyring) -> AESGCM:
    return AESGCM(keyring.unwrap(header))


def _diagnose(aead: AESGCM, header: Header, record: bytes, index: int, is_final: bool, footer: bytes | None,
              search: int) -> ArtifactError:
    """Tell a changed chunk from an intact chunk at the wrong position (error path only)."""
    fixed = header.fixed
    candidates = [j for j in range(max(0, index - search), index + search + 1) if j != index]
    for j in candidates:
        for last in (False, True):
            aad = fixed + footer if last and footer else fixed
            with contextlib.suppress(InvalidTag):
                aead.decrypt(_nonce(header.nonce_prefix, j, last), record, aad)
                return ChunkOrderError(
                    f"chunk {index} holds the data of chunk {j}{' (the final one)' if last else ''}: "
                    "chunks were dropped or reordered")
    if is_final:
        with contextlib.suppress(InvalidTag):
            aead.decrypt(_nonce(header.nonce_prefix, index, False), record, fixed)
            return ChunkOrderError(f"chunk {index} is not the final chunk: the chunks after it were dropped")
    return ChunkAuthenticationError(
        f"chunk {index} failed authentication: its bytes were changed (flipped bit or damaged storage)")


def decrypt_stream(src, dst, *, artifact_id: uuid.UUID | str | None, keyring, progress: Progress = None,
                   hash_plaintext: bool = True, reorder_search: int = 64) -> StreamResult:
    """Authenticate and decrypt an artifact from ``src`` into ``dst`` (``None``: verify only).

    Only authenticated chunks are written, in order. On any error the exception is raised and
    whatever was written must be discarded by the caller (see ``decrypt_to_file``). Pass
    ``artifact_id=None`` only when the caller has no expectation (inventory of unknown files).
    ``progress(stored_bytes_so_far)`` is called after each chunk.
    """
    stored_hash = hashlib.sha256()
    header, header_bytes = read_header_bytes(src)
    stored_hash.update(header_bytes)
    if artifact_id is not None and header.artifact_id != uuid.UUID(str(artifact_id)):
        raise ArtifactMismatchError(
            f"this file is artifact {header.artifact_id}, not the expected {artifact_id}")
    aead = _open_data_key(header, keyring)
    plain_hash = _HashingThread() if hash_plaintext else None
    if plain_hash is not None:
        plain_hash.start()
    record_size = header.chunk_size + TAG_SIZE
    reader = _RecordReader(src, stored_hash, record_size)
    reader.start()
    fixed = header.fixed
    plaintext_size = 0
    chunks = 0
    footer_values = None
    try:
        while True:
            item = reader.queue.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            index, record, is_final, footer = item
            aad = fixed + footer if is_final else fixed
            try:
                plain = aead.decrypt(_nonce(header.nonce_prefix, index, is_final), record, aad)
            except InvalidTag:
                raise _diagnose(aead, header, record, index, is_final, footer, reorder_search) from None
            if plain_hash is not None:
                plain_hash.queue.put(plain)
            if dst is not None:
                dst.write(plain)
            plaintext_size += len(plain)
            chunks += 1
            if is_final:
                footer_values = FOOTER.unpack(footer)
            if progress:
                progress(len(header_bytes) + chunks * record_size)
    finally:
        reader.stop.set()
        reader.join(timeout=5)
        plain_digest = plain_hash.finish() if plain_hash is not None else None
    _, announced_size, announced_chunks = footer_values
    if announced_size != plaintext_size or announced_chunks != chunks:
        # The final chunk authenticated the footer, so this cannot be a flipped bit.
        raise ChunkOrderError(f"the end marker announces {announced_chunks} chunks, {chunks} were read")
    return StreamResult(artifact_id=header.artifact_id, key_id=header.key_id, chunk_size=header.chunk_size,
                        chunks=chunks, plaintext_size=plaintext_size,
                        plaintext_sha256=plain_digest,
                        stored_size=len(header_bytes) + reader.stored_size, stored_sha256=stored_hash.hexdigest(),
                        header=header.as_dict())


def verify_stream(src, *, artifact_id, keyring, progress: Progress = None, hash_plaintext: bool = True) -> StreamResult:
    """Authenticate every chunk (and hash) without keeping any plaintext: the "decrypt" verification level."""
    return decrypt_stream(src, None, artifact_id=artifact_id, keyring=keyring, progress=progress,
                          hash_plaintext=hash_plaintext)


@contextlib.contextmanager
def _atomic_output(path: Path):
    """A temporary file next to ``path``, renamed into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False)  # noqa: SIM115
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)
        raise


def decrypt_to_file(src, path, *, artifact_id, keyring, progress: Progress = None) -> StreamResult:
    """Decrypt into ``path``; nothing appears there unless every chunk authenticated."""
    with _atomic_output(Path(path)) as out:
        return decrypt_stream(src, out, artifact_id=artifact_id, keyring=keyring, progress=progress)


def rewrap_stream(src, dst, *, artifact_id, keyring, to_key_id: str) -> tuple[Header, StreamResult]:
    """Copy an artifact with its data key re-wrapped under ``to_key_id``; chunks are copied, not re-encrypted.

    Returns the new header and the sizes/SHA-256 of the bytes written (the stored bytes change
    because the key section does).
    """
    header, _ = read_header_bytes(src)
    if header.artifact_id != uuid.UUID(str(artifact_id)):
        raise ArtifactMismatchError(f"this file is artifact {header.artifact_id}, not the expected {artifact_id}")
    data_key = keyring.unwrap(header)
    old_key_id = header.key_id
    header.key_id, header.wrap_method, header.wrapped_key = keyring.wrap(data_key, key_id=to_key_id, header=header)
    out = _Hashing(dst)
    out.write(header.to_bytes())
    while True:
        data = src.read(BLOCK)
        if not data:
            break
        out.write(data)
    return header, StreamResult(artifact_id=header.artifact_id, key_id=header.key_id, chunk_size=header.chunk_size,
                                chunks=0, plaintext_size=0, plaintext_sha256=None, stored_size=out.size,
                                stored_sha256=out.hasher.hexdigest(),
                                header={**header.as_dict(), "previous_key_id": old_key_id})


# --- plain copies and sniffing ---------------------------------------------------------------

def copy_stream(src, dst, *, progress: Progress = None) -> tuple[int, str]:
    """Copy bytes, returning (size, SHA-256); ``dst=None`` only hashes."""
    out = _Hashing(dst)
    while True:
        data = src.read(BLOCK)
        if not data:
            break
        out.write(data)
        if progress:
            progress(out.size)
    return out.size, out.hasher.hexdigest()


def sniff(first: bytes) -> tuple[str, str]:
    """(encryption, content format) of a stored object from its first bytes (≥ 512 for tar)."""
    if first.startswith(MAGIC):
        return ENCRYPTION_DRPANEL, "unknown"
    if first.startswith(OPENSSL_MAGIC):
        return ENCRYPTION_OPENSSL, "unknown"
    return ENCRYPTION_NONE, sniff_plaintext(first)


def sniff_plaintext(first: bytes) -> str:
    if first.startswith(b"PGDMP"):
        return "pg_custom"
    if first.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(first) >= 262 and first[257:262] == b"ustar":
        return "tar"
    head = first[:256]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "pg_plain" if b"--" in head or b"SET " in head or b"CREATE" in head else "text"
    return "unknown"


# --- legacy: openssl enc -aes-256-cbc -pbkdf2 -salt ------------------------------------------

def _openssl_cipher(passphrase: str, salt: bytes, iterations: int):
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=48, salt=salt, iterations=iterations)
    material = kdf.derive(passphrase.encode())
    return Cipher(algorithms.AES(material[:32]), modes.CBC(material[32:]))


def openssl_probe(first: bytes, passphrase: str, *, iterations: int = OPENSSL_PBKDF2_ITERATIONS) -> str | None:
    """The plaintext format the first bytes decrypt to with this passphrase, or None if it looks wrong."""
    if not first.startswith(OPENSSL_MAGIC) or len(first) < 32 + 16:
        return None
    body = first[16: 16 + (len(first) - 16) // 16 * 16][:1024]
    decryptor = _openssl_cipher(passphrase, first[8:16], iterations).decryptor()
    plain = decryptor.update(body)
    kind = sniff_plaintext(plain)
    return None if kind in ("unknown", "text") else kind


def openssl_decrypt_stream(src, dst, *, passphrase: str, iterations: int = OPENSSL_PBKDF2_ITERATIONS,
                           progress: Progress = None) -> StreamResult:
    """Decrypt ``openssl enc -aes-256-cbc -pbkdf2 -salt`` output. CBC is unauthenticated: the
    padding check at the end is the only integrity signal, so callers decrypt into a temporary
    file (``openssl_decrypt_to_file``) and compare checksums from the manifest when they have one.
    """
    stored = _Hashing(None)
    head = _read_exact(src, 16)
    stored.write(head)
    if len(head) < 16 or not head.startswith(OPENSSL_MAGIC):
        raise MissingHeaderError("not an openssl artifact: the 'Salted__' header is missing")
    decryptor = _openssl_cipher(passphrase, head[8:16], iterations).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    out = _Hashing(dst)
    while True:
        data = src.read(BLOCK)
        if not data:
            break
        stored.write(data)
        out.write(unpadder.update(decryptor.update(data)))
        if progress:
            progress(stored.size)
    if (stored.size - 16) % 16:
        raise TruncatedArtifactError("the legacy artifact's length is not a whole number of blocks: it was cut")
    try:
        out.write(unpadder.update(decryptor.finalize()) + unpadder.finalize())
    except ValueError:
        raise LegacyDecryptError("the legacy artifact did not decrypt: wrong passphrase or damaged file") from None
    return StreamResult(artifact_id=uuid.UUID(int=0), key_id="", chunk_size=0, chunks=0, plaintext_size=out.size,
                        plaintext_sha256=out.hasher.hexdigest(), stored_size=stored.size,
                        stored_sha256=stored.hasher.hexdigest())


def openssl_decrypt_to_file(src, path, *, passphrase: str, progress: Progress = None) -> StreamResult:
    with _atomic_output(Path(path)) as out:
        return openssl_decrypt_stream(src, out, passphrase=passphrase, progress=progress)
