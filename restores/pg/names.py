"""The names of the databases a restore makes beside ``<db>``: ``<db>__<kind>_<tag>`` (a run's tag)."""

import re
from dataclasses import dataclass
from enum import StrEnum

from restores.pg.errors import UnsafeDatabaseName

TAG_LENGTH = 12
MAX_IDENTIFIER_BYTES = 63


class CopyKind(StrEnum):
    """The three kinds of database a restore creates beside ``<db>``."""

    SIDE = "restore"
    PRE = "pre"
    FAILED = "failed"


_COPY_NAME = re.compile(rf"^(?P<database>.+)__(?P<kind>restore|pre|failed)_(?P<tag>[0-9a-z]{{{TAG_LENGTH}}})$")


def run_tag(run_id) -> str:
    """The 12-character tag of a run id (a UUID, with or without hyphens) used in database names."""
    text = str(run_id).replace("-", "").lower()
    if not re.fullmatch(rf"[0-9a-z]{{{TAG_LENGTH},}}", text):
        raise ValueError(f"a run id must have at least {TAG_LENGTH} letters or digits (got {run_id!r})")
    return text[:TAG_LENGTH]


def copy_name(database: str, run_id, kind: CopyKind | str) -> str:
    """``<database>__<kind>_<tag>``; refused when longer than PostgreSQL's 63-byte identifiers."""
    kind = CopyKind(kind)
    suffix = f"__{kind}_{run_tag(run_id)}"
    name = database + suffix
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise UnsafeDatabaseName(
            f"the database name {database!r} is too long for restore copies: at most "
            f"{MAX_IDENTIFIER_BYTES - len(suffix)} bytes leave room for {suffix!r}")
    return name


@dataclass(frozen=True)
class CopyDatabase:
    """A database whose name follows one of the copy patterns."""

    name: str
    database: str
    kind: CopyKind
    tag: str


def parse_copy_name(name: str) -> CopyDatabase | None:
    """The parts of a copy's name, or None when ``name`` follows none of the patterns."""
    match = _COPY_NAME.match(name or "")
    if not match:
        return None
    return CopyDatabase(name=name, database=match["database"], kind=CopyKind(match["kind"]), tag=match["tag"])
