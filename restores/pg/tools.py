"""Choosing a ``pg_restore``: the first installed one at least as new as the archive's pg_dump and the server.

Where binaries are looked for, and their versions, is ``drpanel.pgbin`` (shared with backups'
``pg_dump``); here the candidates are ``PG_BIN_DIR``, ``/usr/lib/postgresql/*/bin`` newest
first, pgserver's bundled binaries, then the one on ``PATH``.
"""

from __future__ import annotations

from dataclasses import dataclass

from drpanel.pgbin import candidates, major_number, show_major
from restores.pg.errors import NoSuitablePgRestore
from restores.pg.header import ArchiveHeader


@dataclass(frozen=True)
class PgTool:
    """An installed ``pg_restore`` and its version."""

    path: str
    version: str

    @property
    def major(self) -> int:
        return major_number(self.version)


def pg_restore_candidates(bin_dir: str | None = None) -> list[PgTool]:
    """Installed ``pg_restore`` binaries in order of preference.

    ``bin_dir`` (default ``PG_BIN_DIR``), then ``/usr/lib/postgresql/*/bin`` newest first,
    then pgserver's bundled binaries, then the one on ``PATH``.
    """
    return [PgTool(path=tool.path, version=tool.release)
            for tool in candidates("pg_restore", bin_dir, include_path=True)]


def choose_pg_restore(*, archive: ArchiveHeader | None = None, server_version: int | str | None = None,
                      bin_dir: str | None = None) -> PgTool:
    """The first candidate at least as new as the archive's pg_dump and the server.

    Raises ``NoSuitablePgRestore`` naming what was needed and what was found.
    """
    needs = []
    if archive is not None:
        needs.append((archive.pg_dump_major, f"the archive was made by pg_dump {archive.pg_dump_version}"))
    if server_version:
        server_major = major_number(server_version)
        needs.append((server_major, f"the server is PostgreSQL {show_major(server_major)}"))
    need = max((n for n, _ in needs), default=0)
    found_tools = pg_restore_candidates(bin_dir)
    for tool in found_tools:
        if tool.major >= need:
            return tool
    found = ", ".join(f"{t.path} ({t.version})" for t in found_tools) or "none"
    why = "; ".join(reason for _, reason in needs)
    raise NoSuitablePgRestore(
        f"no pg_restore is at least version {show_major(need)} ({why}); found: {found}. "
        f"Install the PostgreSQL {show_major(need)} client tools or point PG_BIN_DIR at them.")
