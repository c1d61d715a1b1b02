"""Config restores: a tar of configuration files, extracted safely, then swapped in as a directory.

For a target's config directory ``<dir>`` and a run tag (``restores.pg.run_tag``):

1. ``check_config_tar`` reads the tar's headers only and refuses it, before anything is
   written, when it has too many members (``DRPANEL_CONFIG_RESTORE_MAX_MEMBERS``), too many
   bytes (``DRPANEL_CONFIG_RESTORE_MAX_MB``), an absolute name, a ``..`` component, a
   symbolic or hard link leading out of the directory (or absolute), or a device, FIFO or
   other special file;
2. ``extract_config_tar`` then creates ``<dir>.restore-<tag>`` beside ``<dir>`` (same
   filesystem, so the swap is a rename) and extracts into it with tarfile's ``data``
   filter, which refuses the same things again at extraction time (including paths that
   would escape through a link extracted earlier). On any refusal the new directory is
   removed: nothing is written outside it;
3. ``swap_config_dir`` renames ``<dir>`` → ``<dir>.pre-<tag>`` and ``<dir>.restore-<tag>`` →
   ``<dir>`` (the window between the two renames is microseconds; a crash inside it is
   repaired by ``reconcile_config_swap``);
4. ``swap_back_config_dir`` rolls back: ``<dir>`` → ``<dir>.failed-<tag>``,
   ``<dir>.pre-<tag>`` → ``<dir>``; ``drop_config_copy`` removes a pre/failed/restore copy.

Members are paths relative to the config directory (``./app.env`` or ``app.env``). Extracted
files belong to the worker's user; the new directory takes the old one's permission bits.
"""

import contextlib
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from django.conf import settings

from restores.pg import run_tag


class ConfigArchiveRefused(Exception):
    """The config tar breaks a rule; nothing was written outside the temporary directory."""


class ConfigSwapError(Exception):
    """A config directory swap cannot happen; the directory is as it was."""


class ConfigCopyKind(StrEnum):
    """The directories a config restore creates beside ``<dir>``."""

    NEW = "restore"
    PRE = "pre"
    FAILED = "failed"


def config_copy_path(config_dir: str | Path, run_id, kind: ConfigCopyKind | str) -> Path:
    """``<dir>.<kind>-<tag>``, beside the config directory."""
    directory = _config_dir(config_dir)
    return directory.with_name(f"{directory.name}.{ConfigCopyKind(kind)}-{run_tag(run_id)}")


def _config_dir(config_dir: str | Path) -> Path:
    path = Path(config_dir)
    if not path.is_absolute():
        raise ConfigSwapError(f"the config directory must be an absolute path (got {config_dir!r})")
    path = Path(os.path.normpath(path))
    if path == path.parent:
        raise ConfigSwapError("the config directory cannot be the root directory")
    return path


def _limits(max_members: int | None, max_bytes: int | None) -> tuple[int, int]:
    return (int(max_members or settings.CONFIG_RESTORE_MAX_MEMBERS),
            int(max_bytes or settings.CONFIG_RESTORE_MAX_MB * 1024 * 1024))


@dataclass(frozen=True)
class TarSummary:
    """What the header pass saw in an acceptable config tar."""

    members: int
    files: int
    bytes: int

    def as_dict(self) -> dict:
        return {"members": self.members, "files": self.files, "bytes": self.bytes}


def _refuse_member(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if not name or "\x00" in name:
        return "a member has an empty name"
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        return f"{name!r} is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return f"{name!r} contains '..'"
    if member.isreg() or member.isdir():
        return None
    if member.issym():
        target = member.linkname
        if target.startswith("/"):
            return f"{name!r} is a symbolic link to the absolute path {target!r}"
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if resolved == ".." or resolved.startswith("../"):
            return f"{name!r} is a symbolic link leading out of the directory ({target!r})"
        return None
    if member.islnk():
        target = member.linkname
        resolved = posixpath.normpath(target)
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            return f"{name!r} is a hard link leading out of the directory ({target!r})"
        return None
    if member.ischr() or member.isblk():
        return f"{name!r} is a device file"
    if member.isfifo():
        return f"{name!r} is a FIFO"
    return f"{name!r} is a special file (type {member.type!r})"


def _strip(member: tarfile.TarInfo, prefix: str | None) -> tarfile.TarInfo | None:
    """``member`` with the leading ``prefix/`` taken off its name (None for ``prefix`` itself).

    A backup of a config directory holds its contents under the directory's own name
    (``config/app.env``); restoring into a target's config directory takes that name off.
    A member outside ``prefix/`` is refused.
    """
    if not prefix:
        return member
    name = member.name.removeprefix("./").rstrip("/")
    if name == prefix:
        return None
    if not name.startswith(prefix + "/"):
        raise ConfigArchiveRefused(f"{member.name!r} lies outside {prefix}/")
    changes = {"name": name[len(prefix) + 1:]}
    if member.islnk():
        link = member.linkname.removeprefix("./")
        if not link.startswith(prefix + "/"):
            raise ConfigArchiveRefused(f"{member.name!r} is a hard link leading out of {prefix}/")
        changes["linkname"] = link[len(prefix) + 1:]
    return member.replace(**changes, deep=False)


def single_top_directory(path: str | Path) -> str | None:
    """The one directory every member lies in (a backup of one config directory), else None."""
    tops: set[str] = set()
    nested = False
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                top, slash, _ = member.name.removeprefix("./").rstrip("/").partition("/")
                tops.add(top)
                nested = nested or bool(slash)
                if len(tops) > 1:
                    return None
    except (tarfile.TarError, EOFError, OSError):
        return None
    top = next(iter(tops), "")
    return top if nested and top not in ("", ".", "..") else None


def check_config_tar(path: str | Path, *, max_members: int | None = None, max_bytes: int | None = None,
                     strip_prefix: str | None = None) -> TarSummary:
    """Read the tar's headers (stopping at the first breach) and refuse it if it breaks a rule.

    With ``strip_prefix``, members are judged with that leading directory taken off (see
    ``_strip``). Raises ``ConfigArchiveRefused`` with the first reason; writes nothing.
    """
    max_members, max_bytes = _limits(max_members, max_bytes)
    members = files = total = 0
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for original in archive:
                member = _strip(original, strip_prefix)
                if member is None:
                    continue
                members += 1
                if members > max_members:
                    raise ConfigArchiveRefused(f"the archive has more than {max_members} members")
                reason = _refuse_member(member)
                if reason:
                    raise ConfigArchiveRefused(reason)
                if member.isreg():
                    files += 1
                    total += member.size
                    if total > max_bytes:
                        raise ConfigArchiveRefused(f"the archive holds more than {max_bytes} bytes")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ConfigArchiveRefused(f"not a readable tar archive: {exc}") from None
    return TarSummary(members=members, files=files, bytes=total)


def _data_filter(strip_prefix: str | None = None):
    def data_filter(original: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
        member = _strip(original, strip_prefix)
        if member is None:
            return None
        reason = _refuse_member(member)
        if reason:
            raise ConfigArchiveRefused(reason)
        return tarfile.data_filter(member, dest_path)

    return data_filter


def extract_config_tar(path: str | Path, config_dir: str | Path, run_id, *, max_members: int | None = None,
                       max_bytes: int | None = None, strip_prefix: str | None = None) -> tuple[Path, TarSummary]:
    """Check, then extract the tar into the new directory ``<dir>.restore-<tag>``; return it.

    ``strip_prefix`` takes a leading directory off every member (a backup of one config
    directory holds ``<its name>/…``). Raises ``ConfigArchiveRefused`` (and removes the new
    directory) on any breach; raises ``ConfigSwapError`` if the new directory already exists
    (an earlier attempt: drop it with ``drop_config_copy``).
    """
    directory = _config_dir(config_dir)
    summary = check_config_tar(path, max_members=max_members, max_bytes=max_bytes, strip_prefix=strip_prefix)
    new_dir = config_copy_path(directory, run_id, ConfigCopyKind.NEW)
    if not directory.parent.is_dir():
        raise ConfigSwapError(f"{directory.parent} does not exist")
    try:
        os.mkdir(new_dir, 0o700)
    except FileExistsError:
        raise ConfigSwapError(f"{new_dir} already exists (an earlier attempt of this run?)") from None
    try:
        with tarfile.open(path, mode="r:*") as archive:
            archive.errorlevel = 2
            archive.extractall(new_dir, filter=_data_filter(strip_prefix))  # noqa: S202 - checked above, filtered here
    except ConfigArchiveRefused:
        shutil.rmtree(new_dir, ignore_errors=True)
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(new_dir, ignore_errors=True)
        raise ConfigArchiveRefused(f"extraction refused: {exc}") from None
    except BaseException:
        shutil.rmtree(new_dir, ignore_errors=True)
        raise
    return new_dir, summary


@dataclass(frozen=True)
class ConfigSwapResult:
    """A directory swap that happened."""

    config_dir: str
    moved_in: str
    moved_aside: str | None

    def as_dict(self) -> dict:
        return {"config_dir": self.config_dir, "moved_in": self.moved_in, "moved_aside": self.moved_aside}


def _swap_dirs(directory: Path, incoming: Path, aside: Path) -> ConfigSwapResult:
    if not incoming.is_dir() or incoming.is_symlink():
        raise ConfigSwapError(f"{incoming} does not exist: nothing to swap in")
    if aside.exists() or aside.is_symlink():
        raise ConfigSwapError(f"{aside} already exists: refusing to overwrite it")
    if directory.is_symlink():
        raise ConfigSwapError(f"{directory} is a symbolic link; point the target at the real directory")
    if directory.exists():
        with contextlib.suppress(OSError):
            os.chmod(incoming, stat.S_IMODE(directory.stat().st_mode))
        os.rename(directory, aside)
        os.rename(incoming, directory)
        return ConfigSwapResult(str(directory), str(incoming), str(aside))
    os.rename(incoming, directory)
    return ConfigSwapResult(str(directory), str(incoming), None)


def swap_config_dir(config_dir: str | Path, run_id) -> ConfigSwapResult:
    """``<dir>`` → ``<dir>.pre-<tag>``, then ``<dir>.restore-<tag>`` → ``<dir>`` (only that if ``<dir>`` is new)."""
    directory = _config_dir(config_dir)
    return _swap_dirs(directory, config_copy_path(directory, run_id, ConfigCopyKind.NEW),
                      config_copy_path(directory, run_id, ConfigCopyKind.PRE))


def swap_back_config_dir(config_dir: str | Path, run_id) -> ConfigSwapResult:
    """Roll back: ``<dir>`` → ``<dir>.failed-<tag>``, ``<dir>.pre-<tag>`` → ``<dir>``."""
    directory = _config_dir(config_dir)
    return _swap_dirs(directory, config_copy_path(directory, run_id, ConfigCopyKind.PRE),
                      config_copy_path(directory, run_id, ConfigCopyKind.FAILED))


def drop_config_copy(config_dir: str | Path, run_id, kind: ConfigCopyKind | str) -> bool:
    """Remove ``<dir>.<kind>-<tag>`` if it exists; never ``<dir>`` itself. True if removed."""
    path = config_copy_path(config_dir, run_id, kind)
    if path.is_symlink():
        path.unlink()
        return True
    if not path.exists():
        return False
    shutil.rmtree(path)
    return True


def reconcile_config_swap(config_dir: str | Path, run_id) -> list[str]:
    """Repair what a dead worker left for this run; returns what was done (empty if nothing).

    - a crash between the two renames of a swap (``<dir>`` missing, ``.pre-`` present):
      ``.pre-`` goes back to ``<dir>`` (during a restore) or forward to ``<dir>`` (during a
      rollback): either way the directory the target had before the run is live again;
    - a ``.restore-`` directory left over (extraction or swap never finished) is removed.
    """
    directory = _config_dir(config_dir)
    new_dir = config_copy_path(directory, run_id, ConfigCopyKind.NEW)
    pre = config_copy_path(directory, run_id, ConfigCopyKind.PRE)
    actions = []
    if not directory.exists() and pre.is_dir():
        os.rename(pre, directory)
        actions.append(f"renamed {pre} back to {directory}")
    if new_dir.exists() or new_dir.is_symlink():
        drop_config_copy(directory, run_id, ConfigCopyKind.NEW)
        actions.append(f"removed {new_dir}")
    return actions
