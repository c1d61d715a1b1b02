"""The errors of the database operations of a restore; each message is meant for the operator."""




class PgOpsError(Exception):
    """A database operation of a restore failed; the message is meant for the operator."""


class NoSuitablePgRestore(PgOpsError):
    """No installed ``pg_restore`` is new enough for the archive and the server."""


class ArchiveError(PgOpsError):
    """The file is not a pg_dump custom-format archive this code can read."""


class UnsafeDatabaseName(PgOpsError):
    """A name outside the side/pre/failed patterns, or too long for PostgreSQL."""


class RestoreFailed(PgOpsError):
    """``pg_restore`` failed; ``stderr_tail`` holds its last meaningful lines."""

    def __init__(self, message: str, *, stderr_tail: str = "", returncode: int | None = None):
        super().__init__(message)
        self.stderr_tail = stderr_tail
        self.returncode = returncode


class SwapFailed(PgOpsError):
    """A swap did not happen; the live database is as it was (and accepts connections again)."""
