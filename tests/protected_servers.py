"""The tests' own PostgreSQL servers under the names earlier tests import; they live in ``tests.pg_servers``."""

from tests.pg_servers import DEFAULT_CONF, PgServer, bin_dir, free_port

__all__ = ["DEFAULT_CONF", "PgServer", "bin_dir", "free_port"]
