"""An empty PostgreSQL server of its own, under the name tests written earlier import (``tests.pg_servers``).

A test that only needs a server to restore onto takes the shared one with ``clean_server`` (tests/conftest.py)."""

from collections.abc import Iterator
from contextlib import contextmanager

from tests.pg_servers import BIN_DIR, own_server

BINDIR = BIN_DIR


@contextmanager
def pg_server() -> Iterator[str]:
    """Yield the ``postgresql://postgres@127.0.0.1:<port>`` base URL of a new, empty server, removed after."""
    with own_server("empty") as server:
        yield f"postgresql://postgres@127.0.0.1:{server.port}"
