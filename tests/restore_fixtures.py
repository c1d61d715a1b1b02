"""Fixtures of the restore tests (a pytest plugin: ``pytest_plugins = ["tests.restore_fixtures"]``).

``scratch`` gives throw-away databases on the shared PostgreSQL (all dropped after the
test); ``sample_archive`` is a small pg_dump custom-format archive; ``second_server`` is another
server to recover a system onto. Helpers live in
``tests.restore_support``.
"""

import pytest

from tests.restore_support import ScratchServer, make_archive


@pytest.fixture
def scratch():
    """A ``ScratchServer``; every ``drt_<random>`` database it (or the code under test) made is dropped after
    (in the background: ``restore_support.LaterDrops``)."""
    server = ScratchServer()
    try:
        yield server
    finally:
        server.drop_all_later()


@pytest.fixture(scope="session")
def sample_archive(tmp_path_factory):
    """A pg_dump custom-format archive of a small shop (users, orders with a foreign key, GIN index)."""
    return make_archive(tmp_path_factory.mktemp("archives") / "sample.dump")


@pytest.fixture
def second_server(clean_server):
    """The base URL (``postgresql://postgres@127.0.0.1:<port>``) of a second server, not the panel's, without a
    ``shop`` database: the tests' shared one (``clean_server``), where what the test made is dropped after it."""
    assert clean_server.execute("SELECT 1 FROM pg_database WHERE datname = 'shop'") == []
    return f"postgresql://postgres@127.0.0.1:{clean_server.port}"
