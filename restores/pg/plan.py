"""Planning a restore: from a file with ``-j N`` when the temporary disk has room, else streamed with ``-j1``."""

import shutil
import tempfile
from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class RestorePlan:
    """How to restore: from a temporary file with ``-j N``, or streaming ``-j1`` when the disk lacks room."""

    mode: str
    jobs: int
    temp_dir: str
    free_bytes: int
    needed_bytes: int
    reason: str

    def as_dict(self) -> dict:
        return {"mode": self.mode, "jobs": self.jobs, "temp_dir": self.temp_dir, "free_bytes": self.free_bytes,
                "needed_bytes": self.needed_bytes, "reason": self.reason}


def human_bytes(count: int) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units, as disks are sold)."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def plan_restore(plaintext_size: int, *, temp_dir: str | None = None, jobs: int | None = None,
                 headroom_bytes: int | None = None) -> RestorePlan:
    """Decide file (``-j jobs``) or stream (``-j1``) by the free space of ``temp_dir``, and say why.

    The decrypted archive needs ``plaintext_size`` bytes plus a headroom
    (``DRPANEL_RESTORE_TEMP_HEADROOM_MB``) in ``temp_dir`` (``DRPANEL_RESTORE_TEMP_DIR``,
    default the system's temporary directory).
    """
    temp_dir = temp_dir or settings.RESTORE_TEMP_DIR or tempfile.gettempdir()
    jobs = max(1, int(jobs or settings.RESTORE_JOBS))
    headroom = settings.RESTORE_TEMP_HEADROOM_MB * 1024 * 1024 if headroom_bytes is None else headroom_bytes
    free = shutil.disk_usage(temp_dir).free
    needed = int(plaintext_size) + headroom
    if free >= needed:
        return RestorePlan("file", jobs, temp_dir, free, needed,
                           f"decrypting to a temporary file in {temp_dir} ({human_bytes(free)} free, "
                           f"{human_bytes(needed)} needed), then pg_restore -j{jobs}")
    return RestorePlan("stream", 1, temp_dir, free, needed,
                       f"only {human_bytes(free)} free in {temp_dir}, the decrypted archive needs "
                       f"{human_bytes(plaintext_size)} plus {human_bytes(headroom)} headroom: streaming into "
                       "pg_restore -j1 instead (slower: no parallel restore from a pipe)")
