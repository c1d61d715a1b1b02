"""Database operations of a restore, run against the target's own PostgreSQL server (the public names).

Everything here works on a target database ``<db>`` named by its libpq URL (the resolved
secret of ``Target.database_ref``) and only ever creates, renames or drops databases
whose names follow three patterns, all carrying a 12-character *run tag* (the first hex
digits of the run's UUID, see ``run_tag``):

- ``<db>__restore_<tag>`` — the **side database** a run restores into;
- ``<db>__pre_<tag>``     — the target's database as it was before the swap (rollback copy);
- ``<db>__failed_<tag>``  — the restored database after a rollback swapped it back out.

``<db>`` itself is renamed by the swaps but never dropped; a name that does not follow the
patterns is never dropped (``UnsafeDatabaseName``). The server may be the panel's own
(the demo): nothing else on it is touched. ``ALTER DATABASE`` and ``CREATE/DROP
DATABASE`` run from a connection to the maintenance database ``postgres``.

The target URL's role needs ``CREATEDB``, ownership of ``<db>`` (or superuser), and the
right to terminate the sessions of ``<db>`` (same role, ``pg_signal_backend`` or
superuser). Passwords never reach a command line: ``pg_restore`` gets them through
``PGPASSWORD`` in its environment.

The building blocks, in the order a restore run uses them (each in its own module of this
package; callers use ``from restores import pg`` and the names below):

- ``read_archive_header`` (``archive``) — pg_dump custom-format header (pg_dump and server
  versions);
- ``choose_pg_restore`` (``tools``) — a ``pg_restore`` at least as new as the archive's pg_dump and
  the server (``PG_BIN_DIR``, ``/usr/lib/postgresql/*/bin``, pgserver's, ``PATH``);
- ``list_archive`` (``archive``) — the structure check (``pg_restore --list``), from a file or a stream;
- ``plan_restore`` (``plan``) — file with ``-j N`` or, when the temporary disk lacks room, stream ``-j1``;
- ``restore_to_side_database`` (``databases``, ``restore``) — create ``<db>__restore_<tag>`` and
  ``pg_restore`` into it, with progress callbacks; on any failure the side database is dropped and the target is
  untouched;
- ``swap_in`` / ``swap_back`` (``swap``) — the atomic swap (one transaction, two renames) and rollback;
- ``drop_copy``, ``list_copies``, ``find_orphans`` (``databases``) — clean-up;
- ``swap_state`` / ``reconcile_swap`` (``swap``) — what a dead worker left, and bringing it back to a
  consistent state.
"""

from drpanel.pgbin import major_number
from restores.pg.archive import ArchiveListing, list_archive
from restores.pg.connect import client_args, database_name, server_version_num
from restores.pg.databases import (
    create_side_database,
    drop_copy,
    drop_database_copy,
    find_orphans,
    list_copies,
    restore_to_side_database,
)
from restores.pg.errors import (
    ArchiveError,
    NoSuitablePgRestore,
    PgOpsError,
    RestoreFailed,
    SwapFailed,
    UnsafeDatabaseName,
)
from restores.pg.header import ArchiveHeader, parse_archive_header, read_archive_header
from restores.pg.names import CopyDatabase, CopyKind, copy_name, parse_copy_name, run_tag
from restores.pg.plan import RestorePlan, human_bytes, plan_restore
from restores.pg.process import CHUNK_BYTES, die_with_parent, feed
from restores.pg.restore import RestoreProgress, RestoreResult, restore_archive
from restores.pg.swap import Reconciliation, SwapResult, SwapState, reconcile_swap, swap_back, swap_in, swap_state
from restores.pg.tools import PgTool, choose_pg_restore, pg_restore_candidates

__all__ = [
    "ArchiveError",
    "ArchiveHeader",
    "ArchiveListing",
    "CHUNK_BYTES",
    "CopyDatabase",
    "CopyKind",
    "NoSuitablePgRestore",
    "PgOpsError",
    "PgTool",
    "Reconciliation",
    "RestoreFailed",
    "RestorePlan",
    "RestoreProgress",
    "RestoreResult",
    "SwapFailed",
    "SwapResult",
    "SwapState",
    "UnsafeDatabaseName",
    "choose_pg_restore",
    "client_args",
    "copy_name",
    "create_side_database",
    "database_name",
    "die_with_parent",
    "drop_copy",
    "drop_database_copy",
    "feed",
    "find_orphans",
    "human_bytes",
    "list_archive",
    "list_copies",
    "major_number",
    "parse_archive_header",
    "parse_copy_name",
    "pg_restore_candidates",
    "plan_restore",
    "read_archive_header",
    "reconcile_swap",
    "restore_archive",
    "restore_to_side_database",
    "run_tag",
    "server_version_num",
    "swap_back",
    "swap_in",
    "swap_state",
]
