"""pg_dump custom-format archives: reading the header (pg_dump and server versions, format, compression) and the
structure check (``pg_restore --list``), from a file or a stream.
"""

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from drpanel.pgbin import major_number
from restores.pg.errors import ArchiveError
from restores.pg.process import CHUNK_BYTES, feed, spawn
from restores.pg.tools import PgTool, choose_pg_restore

HEADER_BYTES = 4096

_FORMATS = {0: "unknown", 1: "custom", 2: "files", 3: "tar", 4: "null", 5: "directory"}
_ALGORITHMS = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}


@dataclass(frozen=True)
class ArchiveHeader:
    """What the header of a pg_dump custom-format archive says about it."""

    format_version: str
    format: str
    compression: str
    created_at: datetime | None
    database: str
    server_version: str
    pg_dump_version: str

    @property
    def pg_dump_major(self) -> int:
        return major_number(self.pg_dump_version)


def parse_archive_header(data: bytes) -> ArchiveHeader:
    """Parse the first bytes of a custom-format archive (``HEADER_BYTES`` are always enough)."""
    if not data.startswith(b"PGDMP"):
        raise ArchiveError("not a pg_dump custom-format archive (it does not start with PGDMP)")
    pos = 5

    def byte() -> int:
        nonlocal pos
        if pos >= len(data):
            raise ArchiveError("the archive header is truncated")
        pos += 1
        return data[pos - 1]

    major, minor, rev = byte(), byte(), byte()
    if (major, minor) < (1, 10):
        raise ArchiveError(f"archive format {major}.{minor} is too old (pg_dump before 8.4?)")
    int_size, _off_size, fmt = byte(), byte(), byte()

    def read_int() -> int:
        sign = byte()
        value = 0
        for shift in range(int_size):
            value |= byte() << (8 * shift)
        return -value if sign else value

    def read_str() -> str:
        nonlocal pos
        length = read_int()
        if length < 0:
            return ""
        if pos + length > len(data):
            raise ArchiveError("the archive header is truncated")
        pos += length
        return data[pos - length:pos].decode("utf-8", "replace")

    if (major, minor) >= (1, 15):
        compression = _ALGORITHMS.get(byte(), "unknown")
    else:
        level = read_int()
        compression = "none" if level == 0 else "gzip"
    sec, minute, hour, mday, mon, year, _isdst = (read_int() for _ in range(7))
    try:
        created = datetime(year + 1900, mon + 1, mday, hour, minute, sec, tzinfo=UTC)
    except ValueError:
        created = None
    database = read_str()
    server_version = read_str()
    pg_dump_version = read_str()
    if _FORMATS.get(fmt) != "custom":
        raise ArchiveError(f"the archive is in pg_dump's {_FORMATS.get(fmt, '?')} format; "
                           "restores need the custom format (pg_dump -Fc)")
    return ArchiveHeader(format_version=f"{major}.{minor}-{rev}", format="custom", compression=compression,
                         created_at=created, database=database, server_version=server_version,
                         pg_dump_version=pg_dump_version)


def read_archive_header(path: str | Path) -> ArchiveHeader:
    """The header of the custom-format archive file at ``path``."""
    try:
        with open(path, "rb") as handle:
            return parse_archive_header(handle.read(HEADER_BYTES))
    except OSError as exc:
        raise ArchiveError(f"cannot read the archive: {exc.strerror}") from None


Source = str | Path | Iterable[bytes]


def peek(chunks: Iterable[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """The first bytes of a stream (for its header), and an iterator still yielding all of it."""
    iterator = iter(chunks)
    head: list[bytes] = []
    size = 0
    for chunk in iterator:
        head.append(chunk)
        size += len(chunk)
        if size >= HEADER_BYTES:
            break
    first = b"".join(head)

    def rest() -> Iterator[bytes]:
        if first:
            yield first
        yield from iterator

    return first, rest()


def chunks_of(source) -> Iterable[bytes]:
    """The bytes of a file path, an open file or an iterable of chunks, chunk by chunk."""
    if hasattr(source, "read"):
        return iter(lambda: source.read(CHUNK_BYTES), b"")
    return source


_LIST_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_TOC_ENTRIES = re.compile(r"^;\s+TOC Entries: (\d+)", re.M)
_KINDS = sorted([
    "TABLE", "TABLE DATA", "INDEX", "CONSTRAINT", "FK CONSTRAINT", "SEQUENCE", "SEQUENCE SET",
    "SEQUENCE OWNED BY", "DEFAULT", "VIEW", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA", "FUNCTION",
    "PROCEDURE", "AGGREGATE", "TRIGGER", "EVENT TRIGGER", "SCHEMA", "EXTENSION", "COMMENT", "ACL", "DEFAULT ACL",
    "TYPE", "DOMAIN", "BLOB", "BLOBS", "BLOB METADATA", "LARGE OBJECT", "POLICY", "ROW SECURITY", "RULE",
    "INDEX ATTACH", "TABLE ATTACH", "COLLATION", "CAST", "OPERATOR", "PUBLICATION", "PUBLICATION TABLE",
    "SUBSCRIPTION", "STATISTICS", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY",
], key=len, reverse=True)


@dataclass
class ArchiveListing:
    """The structure check's result: the archive's table of contents, as ``pg_restore --list`` sees it."""

    toc_entries: int | None
    entries: list[str]
    counts: dict[str, int]
    table_data: list[str]
    pg_restore: PgTool
    duration_s: float
    header: ArchiveHeader | None = None

    def as_dict(self) -> dict:
        return {"toc_entries": self.toc_entries, "listed": len(self.entries), "counts": self.counts,
                "table_data": self.table_data, "pg_restore": self.pg_restore.version,
                "duration_s": round(self.duration_s, 4)}


def list_archive(source: Source, *, pg_restore: PgTool | None = None) -> ArchiveListing:
    """Structure check: run ``pg_restore --list`` on an archive file or stream and parse its TOC.

    From a stream, ``pg_restore`` reads only the header and the table of contents and stops;
    the rest of the stream is not consumed. Raises ``ArchiveError`` when pg_restore cannot
    read the archive (truncated, corrupted, not an archive).
    """
    started = time.perf_counter()
    stream = not isinstance(source, str | Path)
    if stream:
        head, chunks = peek(chunks_of(source))
        header = parse_archive_header(head)
    else:
        header = read_archive_header(source)
    tool = pg_restore or choose_pg_restore(archive=header)
    cmd = [tool.path, "--list"] + ([] if stream else [str(source)])
    proc = spawn(cmd, dict(os.environ), stdin=subprocess.PIPE if stream else subprocess.DEVNULL)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        if stream:
            feed(proc, chunks)
        returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for reader in readers:
            reader.join()
    text = b"".join(out).decode("utf-8", "replace")
    if returncode != 0:
        tail = b"".join(err).decode("utf-8", "replace").strip().splitlines()[-5:]
        raise ArchiveError(f"pg_restore cannot read the archive's table of contents: {' '.join(tail)[:500]}")
    entries, counts, table_data = [], {}, []
    for line in text.splitlines():
        match = _LIST_LINE.match(line)
        if not match:
            continue
        entries.append(line)
        rest = match[4]
        kind = next((k for k in _KINDS if rest.startswith(k + " ")), "OTHER")
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "TABLE DATA":
            schema, _, remainder = rest[len("TABLE DATA "):].partition(" ")
            table_data.append(f"{schema}.{remainder.rsplit(' ', 1)[0]}")
    toc = _TOC_ENTRIES.search(text)
    return ArchiveListing(toc_entries=int(toc[1]) if toc else None, entries=entries, counts=counts,
                          table_data=table_data, pg_restore=tool, duration_s=time.perf_counter() - started,
                          header=header)
