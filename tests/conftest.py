"""Fixtures for every test: personas per role, clients, Redis, RQ workers, S3 (moto), Chromium.

Personas: ``operator``, ``manager``, ``auditor``, ``admin`` (one per role) and
``outsider`` (signed in, no role). ``clients`` maps each persona's name to a logged-in
Django test client (the persona is made and signed in when the test first asks for it).
``redis_conn`` is the test run's own Redis database, flushed around each test that uses it.
``s3_endpoint`` serves S3 over HTTP from moto's threaded server on 127.0.0.1. Browser tests
take ``page`` (pytest-playwright) on Debian's Chromium against ``live_server``.

``make test`` runs the suite with pytest-xdist (``-n N --dist loadgroup``); each worker has its
own test database and Redis database (``drpanel.testing``). ``pytest_collection_modifyitems``
below puts the browser tests in two lanes (two workers, one Chromium each: one lane of journeys
was longer than the whole rest of the run), keeps the fault campaign with the embedded-services
test on one worker (their time bounds are measured one at a time), and hands out the tests that
start real processes first, so no long one is left for the end.
"""

import os
from collections import Counter
from collections.abc import Mapping

import pytest

# The fixture modules that test modules also import by name (``from tests.backup_fixtures import …``):
# registered before any import, so their asserts are rewritten like a plugin's whichever comes first.
pytest.register_assert_rewrite(
    "tests.backup_fixtures", "tests.restore_fixtures", "tests.loop_fixtures", "tests.compliance_fixtures",
    "tests.health_fixtures", "tests.notify_support")

from django.test import Client  # noqa: E402

from tests.factories import PASSWORD, UserFactory  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


# Tests of one group run on one xdist worker, one after the other (``--dist loadgroup``).
SERIAL_GROUPS = ("chaos", "browser")
# Browser tests share out over this many groups ("browser-1", ...): each is one worker with its own
# Chromium, live server and test database (all per xdist worker), so the lanes cannot meet.
BROWSER_LANES = 2
# A test taking one of these starts real processes or makes databases (real backups, pg_restore,
# RQ workers, CREATE DATABASE): it is ``slow`` (not in ``make check``) whether or not it says so.
SLOW_FIXTURES = frozenset({"workers", "full_artifact", "config_artifact", "source_db", "scratch", "sample_archive",
                           "protected_server", "protected_database", "clean_server", "second_server"})


def twice_collected(items) -> list[str]:
    """The node ids collected more than once: xdist runs one test of each such id and counts it once, silently."""
    seen = Counter(item.nodeid for item in items)
    return sorted(nodeid for nodeid, times in seen.items() if times > 1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # tryfirst: the marks must be there before ``-m`` deselects and before xdist reads the groups.
    twice = twice_collected(items)
    if twice:
        raise pytest.UsageError(f"{len(twice)} test id(s) are collected more than once, and xdist would run only one "
                                f"test of each: {', '.join(twice[:3])}")
    browser = []
    for item in items:
        if not item.get_closest_marker("slow") and SLOW_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("xdist_group"):
            continue
        for group in SERIAL_GROUPS:
            if item.get_closest_marker(group):
                if group == "browser":
                    browser.append(item)
                else:
                    item.add_marker(pytest.mark.xdist_group(group))
                break
    for item, lane in browser_lanes(browser, BROWSER_LANES):
        item.add_marker(pytest.mark.xdist_group(f"browser-{lane}"))
    # Stable: within each half the collection order (and so each module's tests) is kept.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def browser_lanes(items, lanes: int):
    """Each browser test with the lane (1..lanes) that has the least work so far, the slow ones first.

    A slow browser test (a whole restore loop behind the page) counts four times a quick one: about
    what ``--durations`` shows. The split depends only on the collection, so every xdist worker
    computes the same one.
    """
    load = [0] * lanes
    ordered = sorted(items, key=lambda item: item.get_closest_marker("slow") is None)
    for item in ordered:
        lane = load.index(min(load))
        load[lane] += 4 if item.get_closest_marker("slow") else 1
        yield item, lane + 1


@pytest.fixture(scope="session")
def django_db_setup(request, django_test_environment, django_db_blocker, django_db_modify_db_settings):
    """pytest-django's set-up, but the test database is copied from a migrated template (tests/template_db.py)."""
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases
    from pytest_django.fixtures import _get_databases_for_setup

    from tests import template_db

    aliases, serialized_aliases = _get_databases_for_setup(request.session.items)
    verbosity = request.config.option.verbose
    made = []

    def set_up(*, keepdb):
        made.append(setup_databases(verbosity=verbosity, interactive=False, aliases=aliases,
                                    serialized_aliases=serialized_aliases, keepdb=keepdb))

    with django_db_blocker.unblock():
        if template_db.enabled() and aliases == {"default"}:
            settings_dict = dict(connection.settings_dict)
            settings_dict["TEST"] = {**settings_dict.get("TEST", {}), "NAME": connection.creation._get_test_db_name()}
            template_db.set_up(settings_dict, migrate_fresh=lambda: set_up(keepdb=False),
                               keep_existing=lambda: set_up(keepdb=True))
        elif aliases:
            set_up(keepdb=False)
    yield
    with django_db_blocker.unblock():
        for config in made:
            try:
                # Dropped even when it was kept at set-up: the copy is this session's (the template stays).
                teardown_databases(config, verbosity=verbosity)
            except Exception as exc:
                request.node.warn(pytest.PytestWarning(f"Error when trying to teardown test databases: {exc!r}"))


@pytest.fixture(scope="session", autouse=True)
def _flush_only_what_a_test_wrote():
    """Transactional tests empty every table after each test: only the tables holding rows, by DELETE.

    Django's flush truncates all of the panel's tables in one statement, which makes new files for every
    table and index (about 1.5 s a test on this machine, for the two or three tables a test wrote). This
    flush finds the tables that hold rows (one query) and deletes their rows with foreign-key checks off
    (``session_replication_role = replica``, inside the flush's own transaction). The audit and certification
    tables refuse DELETE by triggers that fire in every role (``ENABLE ALWAYS``): the flush, run by the test
    database's superuser, disables those triggers inside its transaction and enables them again, ALWAYS,
    before it commits, so no other session ever sees a table unprotected. The end state is Django's: every
    table empty (a test asking for sequences reset keeps Django's TRUNCATE … RESTART IDENTITY).
    """
    from django.db.backends.postgresql.operations import DatabaseOperations

    from tests.flush import sql_flush_rows

    original = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if reset_sequences or not tables:
            return sql_flush_truncate(self, style, tables, reset_sequences=reset_sequences,
                                      allow_cascade=allow_cascade)
        return sql_flush_rows(self.connection, tables)

    def sql_flush_truncate(self, style, tables, **options):
        from tests.flush import around_always_triggers

        return around_always_triggers(self.connection, tables, original(self, style, tables, **options))

    DatabaseOperations.sql_flush = sql_flush
    yield
    DatabaseOperations.sql_flush = original


@pytest.fixture(scope="session", autouse=True)
def _databases_dropped_in_the_background():
    """Tests' own databases are dropped while later tests run; the session waits for the last drops."""
    yield
    from tests.restore_support import later_drops

    failures = later_drops.drain()
    if failures:
        pytest.fail("databases of the tests could not be dropped: " + "; ".join(failures))


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _own_audit_checkpoints(settings, tmp_path_factory, monkeypatch):
    """Each test its own checkpoint store: a checkpoint pins one chain, and tests rebuild the chain."""
    path = tmp_path_factory.mktemp("checkpoints")
    settings.AUDIT_CHECKPOINT_DIR = path
    monkeypatch.setenv("DRPANEL_AUDIT_CHECKPOINT_DIR", str(path))


@pytest.fixture(autouse=True)
def _config_roots(settings, tmp_path_factory, monkeypatch):
    """Config paths may lie under the tests' temporary directories, /srv and /etc (DRPANEL_CONFIG_ROOTS)."""
    roots = [str(tmp_path_factory.getbasetemp()), "/srv", "/etc"]
    settings.CONFIG_ROOTS = roots
    monkeypatch.setenv("DRPANEL_CONFIG_ROOTS", ",".join(roots))


@pytest.fixture
def runtime_role(django_db_setup):
    """A real non-superuser role on the test database with exactly the runtime role's rights (tests.role_support)."""
    from tests.role_support import database_role

    with database_role() as role:
        yield role


@pytest.fixture
def password():
    return PASSWORD


@pytest.fixture
def operator(db):
    return UserFactory(username="operator", role="Operator")


@pytest.fixture
def manager(db):
    return UserFactory(username="manager", role="Manager")


@pytest.fixture
def auditor(db):
    return UserFactory(username="auditor", role="Auditor")


@pytest.fixture
def admin(db):
    return UserFactory(username="admin", role="Admin", is_staff=True)


@pytest.fixture
def outsider(db):
    return UserFactory(username="outsider")


PERSONAS = ("operator", "manager", "auditor", "admin", "outsider")


class SignedInClients(Mapping):
    """Each persona's name to a Django test client signed in as that persona.

    A persona is made and signed in when the test first asks for its client (most tests use one or
    two of the five): the same user rows and sign-in as the persona fixtures, without the others' cost.
    """

    def __init__(self, request):
        self._request = request
        self._clients = {}

    def __getitem__(self, name):
        if name not in PERSONAS:
            raise KeyError(name)
        if name not in self._clients:
            client = Client()
            client.force_login(self._request.getfixturevalue(name))
            self._clients[name] = client
        return self._clients[name]

    def __iter__(self):
        return iter(PERSONAS)

    def __len__(self):
        return len(PERSONAS)


@pytest.fixture
def clients(request, db):
    return SignedInClients(request)


@pytest.fixture
def redis_conn():
    from drpanel import queues

    conn = queues.get_connection()
    conn.flushdb()
    yield conn
    conn.flushdb()


@pytest.fixture
def workers(transactional_db, redis_conn):
    """One real RQ worker process on every queue, for the test's duration."""
    from tests.support import rq_workers

    with rq_workers(count=1) as procs:
        yield procs


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3 endpoint over HTTP (moto's threaded server); credentials are moto's dummies."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    previous = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# --- Playwright on Debian's Chromium --------------------------------------------------------

@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True, "args": CHROMIUM_ARGS}


@pytest.fixture
def sign_in(live_server):
    """Sign a persona in through the real login page; returns the page at the dashboard."""

    def _sign_in(page, username: str, password: str = PASSWORD):
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("button[type=submit]")
        return page

    return _sign_in


# --- PostgreSQL servers of the tests' own (tests.pg_servers) ---------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def _pg_template_home(tmp_path_factory):
    """Servers copy one cluster ``initdb`` made for the whole run, kept in the run's temporary directory (which
    the xdist workers share: each worker's is a folder of it); nothing is made until a server is wanted."""
    from tests import pg_servers

    base = tmp_path_factory.getbasetemp()
    pg_servers.TEMPLATE_HOME = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    yield
    pg_servers.TEMPLATE_HOME = None


@pytest.fixture(scope="session")
def protected_server(_pg_template_home):
    """The shared PostgreSQL server of the tests' own (not the panel's), started once per test process."""
    from tests.pg_servers import PgServer

    server = PgServer("shared")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def protected_database(protected_server):
    """This test's own database on the shared ``protected_server``; its URL. Dropped after the test."""
    url = protected_server.create_database()
    yield url
    protected_server.drop_database(url)


@pytest.fixture
def clean_server(protected_server):
    """The shared ``protected_server`` for a test that leaves fixed names on it: every database, role and
    replication slot the test made is dropped after it (``tests.pg_servers.kept_clean``)."""
    from tests.pg_servers import kept_clean

    with kept_clean(protected_server) as server:
        yield server
