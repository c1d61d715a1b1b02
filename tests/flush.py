"""The transactional tests' flush: delete the rows of the tables that hold some (see conftest)."""

from django.db.backends.base.base import BaseDatabaseWrapper

# A trigger's firing mode in pg_trigger.tgenabled and the clause that restores it.
RESTORE = {"A": "ENABLE ALWAYS TRIGGER", "R": "ENABLE REPLICA TRIGGER"}


def _quote(connection: BaseDatabaseWrapper, name: str) -> str:
    return connection.ops.quote_name(name)


def tables_with_rows(connection: BaseDatabaseWrapper, tables) -> list[str]:
    """The tables among ``tables`` that hold at least one row, in one query."""
    tables = sorted(tables)
    probes = " UNION ALL ".join(
        f"SELECT %s WHERE EXISTS (SELECT 1 FROM {_quote(connection, table)})"  # noqa: S608 (Django's own, quoted)
        for table in tables)
    with connection.cursor() as cursor:
        cursor.execute(probes, tables)
        return [row[0] for row in cursor.fetchall()]


def firing_triggers(connection: BaseDatabaseWrapper, tables) -> list[tuple[str, str, str]]:
    """User triggers on ``tables`` that fire in the replica role: (table, trigger, mode)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND t.tgenabled IN ('A', 'R') AND c.relname = ANY(%s) "
            "AND c.relnamespace = 'public'::regnamespace ORDER BY 1, 2",
            [list(tables)])
        return cursor.fetchall()


def around_always_triggers(connection: BaseDatabaseWrapper, tables, statements: list[str]) -> list[str]:
    """``statements`` with the triggers that would refuse them disabled before and restored after."""
    triggers = firing_triggers(connection, tables)
    disable = [f"ALTER TABLE {_quote(connection, table)} DISABLE TRIGGER {_quote(connection, name)}"
               for table, name, _ in triggers]
    restore = [f"ALTER TABLE {_quote(connection, table)} {RESTORE[mode]} {_quote(connection, name)}"
               for table, name, mode in triggers]
    return [*disable, *statements, *restore]


def sql_flush_rows(connection: BaseDatabaseWrapper, tables) -> list[str]:
    """Statements that leave every table of ``tables`` empty, touching only those that hold rows."""
    full = tables_with_rows(connection, tables)
    if not full:
        # Nothing to delete; one statement all the same, so that the flush still emits post_migrate (the
        # groups, permissions and content types come back) exactly as Django's does after every flush.
        return ["SELECT 1"]
    deletes = [f"DELETE FROM {_quote(connection, table)}" for table in full]  # noqa: S608 (Django's own, quoted)
    return ["SET LOCAL session_replication_role = replica",
            *around_always_triggers(connection, full, deletes),
            "SET LOCAL session_replication_role = DEFAULT"]
