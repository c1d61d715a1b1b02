"""The header of a pg_dump custom-format archive: pg_dump and server versions, format, compression."""

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from drpanel.pgbin import major_number
from restores.pg.errors import ArchiveError

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
