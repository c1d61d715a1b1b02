"""Questions the backup catalog asks other apps, answered through settings (the restores app fills them).

- ``restore_running(system)``: is a restore of this system running? Retention and deletions
  wait while it is. ``settings.BACKUP_RESTORE_RUNNING_HOOK`` (``DRPANEL_RESTORE_RUNNING_HOOK``) is
  a dotted path to ``callable(system) -> bool``; without it, no restore is ever running.
- ``backup_succeeded(artifact)``: called inside the transaction that marks a new full artifact
  available. ``settings.BACKUP_SUCCEEDED_HOOK`` is a dotted path to ``callable(artifact)``;
  by default the restores app queues a decrypt-level verification of it (on commit), so the
  "verified in the last 24 h" check does not wait for the next daily verification.
- "verified": an artifact is verified when a verification run set ``Artifact.last_verified_level``
  (``checksum`` < ``decrypt`` < ``structure`` < ``restore-test``) and ``last_verified_at``. A base
  backup's ``manifest`` level ranks with ``structure``: ``pg_verifybackup`` re-reads every file
  against the checksums of the backup's manifest (what ``checksum`` proves; a base backup is not
  encrypted, so there is nothing more for ``decrypt`` to prove) and finds any file missing or added.
"""

from django.conf import settings
from django.utils.module_loading import import_string

VERIFICATION_LEVELS = ("checksum", "decrypt", "structure", "restore-test")
LEVEL_RANK = {"checksum": 0, "decrypt": 1, "structure": 2, "manifest": 2, "restore-test": 3}
DEFAULT_BACKUP_SUCCEEDED_HOOK = "restores.verifications.verify_new_backup"


def restore_running(system) -> bool:
    path = getattr(settings, "BACKUP_RESTORE_RUNNING_HOOK", None)
    if not path:
        return False
    return bool(import_string(path)(system))


def backup_succeeded(artifact) -> None:
    path = getattr(settings, "BACKUP_SUCCEEDED_HOOK", DEFAULT_BACKUP_SUCCEEDED_HOOK)
    if path:
        import_string(path)(artifact)


def verified_at_least(artifact, level: str) -> bool:
    if artifact.last_verified_level not in LEVEL_RANK:
        return False
    return LEVEL_RANK[artifact.last_verified_level] >= LEVEL_RANK[level]


def levels_at_least(level: str) -> list[str]:
    """Every level that counts as ``level`` or better (for ``last_verified_level__in``)."""
    return [name for name, rank in LEVEL_RANK.items() if rank >= LEVEL_RANK[level]]
