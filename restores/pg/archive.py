"""The structure check of a pg_dump custom-format archive (``pg_restore --list``), from a file or a stream."""

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from restores.pg.errors import ArchiveError
from restores.pg.header import HEADER_BYTES, ArchiveHeader, parse_archive_header, read_archive_header
from restores.pg.process import CHUNK_BYTES, feed, spawn
from restores.pg.tools import PgTool, choose_pg_restore

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
