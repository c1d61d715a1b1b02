"""The swap lock: everything that renames a target's databases or directories (a worker's swap, a rollback,
the reconciler, the end of a rollback window) holds it, through a PostgreSQL advisory lock on the panel's database."""

import contextlib

from django.db import connection, transaction

# Any constant works as long as every process uses the same one ("DRRS").
SWAP_LOCK_NAMESPACE = 0x44525253


@contextlib.contextmanager
def target_lock(target_id: int):
    """Hold the swap lock of one target for the block (inside a transaction of the panel's database)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [SWAP_LOCK_NAMESPACE, int(target_id)])
        yield
