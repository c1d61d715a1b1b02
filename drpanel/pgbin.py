"""PostgreSQL client binaries (pg_dump, pg_restore, psql): where they are, and which version each one is.

Backups (``pg_dump``) and restores (``pg_restore``, ``psql``) look in the same places, in this
order: ``PG_BIN_DIR`` (when set), Debian's ``/usr/lib/postgresql/*/bin`` (newest first), then
the PostgreSQL bundled in the ``pgserver`` wheel, and, for those that ask, the one on
``PATH``. Each binary's version is asked once per path and modification time.

Two choices are made from those candidates: ``find_tool`` takes the binary closest to (and at
least) the server's major version, whose output the most versions can read (what backups
want from ``pg_dump``); ``candidates`` lists them in order, for a caller that takes the first
one new enough (what restores want from ``pg_restore``).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

_POSTGRESQL_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)")
_ANY_VERSION = re.compile(r"(\d+(?:\.\d+)*)")


class ToolError(Exception):
    """No suitable client tool, or the database cannot be reached; the message names no secret."""


@dataclass(frozen=True)
class Tool:
    """One client binary and its version: ``version`` is what ``--version`` printed, ``release`` its number."""

    path: str
    major: int
    version: str
    release: str


def major_number(version: str | int) -> int:
    """A comparable major version: ``"16.2"`` → 160000, ``"9.6.24"`` → 90600, 150020 → 150000."""
    if isinstance(version, int):
        return version // 10000 * 10000 if version >= 100000 else version // 100 * 100
    match = re.match(r"\s*(\d+)(?:\.(\d+))?", version or "")
    if not match:
        raise ValueError(f"{version!r} is not a PostgreSQL version")
    first, second = int(match[1]), int(match[2] or 0)
    return first * 10000 if first >= 10 else first * 10000 + second * 100


def show_major(number: int) -> str:
    """``major_number``'s value as people write it: 160000 → "16", 90600 → "9.6"."""
    return str(number // 10000) if number >= 100000 else f"{number // 10000}.{number % 10000 // 100}"


@functools.lru_cache(maxsize=128)
def _probe(path: str, mtime: float) -> Tool | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _POSTGRESQL_VERSION.search(out) or _ANY_VERSION.search(out)
    if not match:
        return None
    release = match.group(1)
    return Tool(path=path, major=int(release.split(".")[0]), version=out.strip(), release=release)


def tool_version(path: str) -> Tool | None:
    """The version a client binary reports (cached per path and modification time); None if it is not one."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return _probe(path, mtime)


def _pgserver_bin() -> str | None:
    # Located without importing it: importing pgserver has side effects (platformdirs, logging).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin")


def _debian_version(directory: str) -> int:
    with contextlib.suppress(ValueError):
        return major_number(Path(directory).parent.name)
    return 0


def candidate_dirs(bin_dir: str | None = None) -> list[str]:
    """Where client binaries are looked for, in order (``bin_dir`` replaces ``PG_BIN_DIR``)."""
    dirs = []
    preferred = bin_dir or settings.PG_BIN_DIR
    if preferred:
        dirs.append(preferred)
    dirs.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_debian_version, reverse=True))
    bundled = _pgserver_bin()
    if bundled:
        dirs.append(bundled)
    return dirs


def candidates(name: str, bin_dir: str | None = None, *, include_path: bool = False) -> list[Tool]:
    """The installed ``name`` binaries in order of preference, each once (``include_path``: also ``PATH``'s)."""
    dirs = candidate_dirs(bin_dir)
    on_path = shutil.which(name) if include_path else None
    if on_path:
        dirs.append(str(Path(on_path).parent))
    tools, seen = [], set()
    for directory in dirs:
        path = os.path.join(directory, name)
        if not os.access(path, os.X_OK):
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        tool = tool_version(path)
        if tool is not None:
            tools.append(tool)
    return tools


def find_tool(name: str, server_major: int) -> Tool:
    """The ``name`` binary (pg_dump, pg_restore, psql) fitting a server of ``server_major``.

    ``PG_BIN_DIR``'s wins when it fits; otherwise the fitting one closest to the server.
    """
    seen = []
    fitting = []
    for tool in candidates(name):
        seen.append(f"{tool.major} ({tool.path})")
        if tool.major >= server_major:
            if settings.PG_BIN_DIR and os.path.dirname(tool.path) == os.path.normpath(settings.PG_BIN_DIR):
                return tool
            fitting.append(tool)
    if not fitting:
        found = ", ".join(seen) or "none"
        raise ToolError(f"no {name} of version {server_major} or newer was found for this PostgreSQL {server_major} "
                        f"server (found: {found}); install the PostgreSQL {server_major} client or set PG_BIN_DIR")
    return min(fitting, key=lambda t: t.major)
