"""A logical full carries its server's roles and restores onto an EMPTY second server, identical fact by fact.

Two PostgreSQL servers (``tests.pg_servers``): the source, started by this module (a full carries every
role of its server, so no other test's may be there), holds ``shop``, owned by its own role, with grants
to two more roles, RLS policies, an extension, large objects, sequences, partitions and comments. A full
taken through the real backup job is restored through the real restore path onto the second server —
the session's shared one, kept clean —, which starts with no role but ``postgres`` and no ``shop``; what
the module made on it is dropped after. Later tests reuse the pair (roles are cluster-wide, so each makes
its own role names).
"""

import base64
import hashlib
import uuid

import pytest

from backups import keyrotation, server_roles
from backups.keys import KeyConfig, get_keyring
from backups.models import Artifact, StorageLocation, System
from compliance.models import AuditEvent
from restores import execution, requests, roles, targets
from tests.loop_support import take_backup
from tests.pg_servers import PgServer, kept_clean

pytest_plugins = ["tests.loop_fixtures"]
pytestmark = [pytest.mark.django_db, pytest.mark.slow]

SHOP_SETUP = """
CREATE EXTENSION citext;
SET ROLE app_owner;
CREATE SCHEMA store;
CREATE TABLE store.customers (id serial PRIMARY KEY, email citext NOT NULL, tenant text NOT NULL);
COMMENT ON TABLE store.customers IS 'people who buy';
COMMENT ON COLUMN store.customers.email IS 'their login';
ALTER TABLE store.customers ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON store.customers FOR SELECT TO app_reader USING (tenant = current_user);
CREATE POLICY writer_all ON store.customers TO app_writer USING (true) WITH CHECK (tenant <> '');
GRANT USAGE ON SCHEMA store TO app_reader, app_writer;
GRANT SELECT ON store.customers TO app_reader;
GRANT SELECT, INSERT, UPDATE ON store.customers TO app_writer;
GRANT USAGE ON SEQUENCE store.customers_id_seq TO app_writer;
CREATE SEQUENCE store.invoice_no START 1000;
SELECT setval('store.invoice_no', 1234);
COMMENT ON SEQUENCE store.invoice_no IS 'next invoice number';
CREATE TABLE store.orders (id bigint NOT NULL, placed date NOT NULL, amount numeric) PARTITION BY RANGE (placed);
CREATE TABLE store.orders_2025 PARTITION OF store.orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE store.orders_2026 PARTITION OF store.orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
GRANT SELECT ON store.orders TO app_reader;
GRANT UPDATE (amount) ON store.orders TO app_writer;
INSERT INTO store.customers (email, tenant)
  SELECT 'C' || g || '@example.org', 't' || (g % 3) FROM generate_series(1, 50) g;
INSERT INTO store.orders SELECT g, date '2025-06-01' + g, g * 1.5 FROM generate_series(1, 400) g;
SELECT lo_from_bytea(424242, 'invoice 1 as a PDF');
GRANT SELECT ON LARGE OBJECT 424242 TO app_reader;
COMMENT ON LARGE OBJECT 424242 IS 'first invoice';
RESET ROLE;
SELECT lo_from_bytea(424243, 'owned by postgres');
GRANT SELECT ON LARGE OBJECT 424243 TO app_owner;
"""

ROLES_SETUP = """
CREATE ROLE app_owner LOGIN PASSWORD 'owner-secret';
CREATE ROLE app_reader NOLOGIN;
CREATE ROLE app_writer LOGIN CONNECTION LIMIT 7 VALID UNTIL '2031-01-01 00:00:00+00';
CREATE ROLE app_ops NOLOGIN SUPERUSER;
GRANT app_reader TO app_writer WITH ADMIN OPTION;
COMMENT ON ROLE app_owner IS 'owns the shop';
"""


@pytest.fixture(scope="module")
def pair(protected_server):
    """Two servers: ``source`` with ``shop`` and its roles, ``empty`` with nothing but ``postgres``."""
    source = PgServer("roles-source")
    try:
        source.start()
        source.execute(ROLES_SETUP)
        source.create_database(name="shop", owner="app_owner")
        source.execute("REVOKE CONNECT, TEMPORARY ON DATABASE shop FROM PUBLIC; "
                       "GRANT CONNECT ON DATABASE shop TO app_reader, app_writer; "
                       "COMMENT ON DATABASE shop IS 'the shop'")
        source.execute(SHOP_SETUP, dbname="shop")
        with kept_clean(protected_server) as empty:
            others = empty.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' AND rolname <> 'postgres'")
            assert others == [], f"roles another test left on the shared server: {others}"
            assert empty.execute("SELECT 1 FROM pg_database WHERE datname = 'shop'") == []
            yield source, empty
    finally:
        source.stop()


@pytest.fixture
def shop_on(pair, monkeypatch, loop_keys, temp_dir, tmp_path):
    """The system ``shop`` (on the source server) with a local primary location."""
    source, _ = pair
    monkeypatch.setenv("DRPANEL_SECRET_ROLES_SOURCE_URL", source.url("shop"))
    (tmp_path / "primary").mkdir()
    StorageLocation.objects.create(name="primary", kind="local", role="primary", path=str(tmp_path / "primary"))
    return System.objects.create(name="shop", database_ref="env:DRPANEL_SECRET_ROLES_SOURCE_URL")


def target_on(server, monkeypatch, operator, database: str):
    variable = f"DRPANEL_SECRET_ROLES_{database.upper()}_URL"
    monkeypatch.setenv(variable, server.url(database))
    target = targets.target_create(actor=None, name=f"{database}-scratch", environment="scratch",
                                   database_ref=f"env:{variable}", config_dir="", system=None)
    targets.target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")
    return target


def restore(operator, artifact, target):
    run = requests.restore_request(actor=operator, artifact=artifact, target=target, mode="database-only",
                                   confirm=target.name)
    return execution.restore_run_execute(run.pk)


def step(run, name) -> dict:
    return next(s for s in run.steps if s["name"] == name)


def role_facts(server, names) -> dict:
    rows = server.execute(
        "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls, "
        "rolconnlimit, rolvaliduntil, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = ANY(%s)",
        list(names))
    members = server.execute(
        "SELECT r.rolname, m.rolname, a.admin_option FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid "
        "JOIN pg_roles m ON m.oid = a.member WHERE m.rolname = ANY(%s) ORDER BY 1, 2", list(names))
    return {"roles": sorted(rows), "memberships": members}


FACTS = {
    "owners": "SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner) FROM pg_class c "
              "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'store' ORDER BY 1, 2",
    "schemas": "SELECT nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace "
               "WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1",
    "database": "SELECT pg_get_userbyid(datdba), datacl::text, shobj_description(oid, 'pg_database') "
                "FROM pg_database WHERE datname = current_database()",
    "acls": "SELECT c.relname, c.relacl::text, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'store' ORDER BY 1",
    "column_acls": "SELECT attrelid::regclass::text, attname, attacl::text FROM pg_attribute a "
                   "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE attacl IS NOT NULL AND n.nspname = 'store' ORDER BY 1, 2",
    "policies": "SELECT schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check "
                "FROM pg_policies ORDER BY 1, 2, 3",
    "extensions": "SELECT e.extname, e.extversion, n.nspname, pg_get_userbyid(e.extowner) FROM pg_extension e "
                  "JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1",
    "large_objects": "SELECT m.oid::bigint, pg_get_userbyid(m.lomowner), m.lomacl::text, md5(lo_get(m.oid)), "
                     "obj_description(m.oid, 'pg_largeobject') FROM pg_largeobject_metadata m ORDER BY 1",
    "sequences": "SELECT schemaname, sequencename, pg_get_userbyid(c.relowner), last_value, start_value, increment_by "
                 "FROM pg_sequences s JOIN pg_class c ON c.oid = (quote_ident(schemaname) || '.' || "
                 "quote_ident(sequencename))::regclass ORDER BY 1, 2",
    "partitions": "SELECT inhparent::regclass::text, inhrelid::regclass::text, pg_get_expr(c.relpartbound, c.oid) "
                  "FROM pg_inherits JOIN pg_class c ON c.oid = inhrelid ORDER BY 1, 2",
    "comments": "SELECT pg_describe_object(classoid, objoid, objsubid), description FROM pg_description "
                "WHERE objoid >= 16384 ORDER BY 1",
    "rows": "SELECT (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM store.customers t), "
            "(SELECT md5(string_agg(o::text, '|' ORDER BY o.id)) FROM store.orders o), "
            "(SELECT count(*) FROM store.orders_2025), (SELECT count(*) FROM store.orders_2026)",
}


def shop_facts(server, dbname="shop") -> dict:
    return {name: server.execute(query, dbname=dbname) for name, query in FACTS.items()}


def test_a_full_of_a_database_with_its_own_roles_restores_onto_an_empty_server_identical_fact_by_fact(
        pair, shop_on, monkeypatch, operator):
    source, empty = pair
    backup_roles = ["app_owner", "app_reader", "app_writer", "app_ops"]
    assert role_facts(empty, backup_roles)["roles"] == []
    artifact = take_backup(shop_on, "full")
    assert sorted(artifact.manifest["globals"]["roles"]) == sorted([*backup_roles, "postgres"])
    assert artifact.manifest["globals"]["role_passwords"] is False

    run = restore(operator, artifact, target_on(empty, monkeypatch, operator, "shop"))

    assert run.state == "succeeded", run.error
    report = step(run, "roles")["data"]
    assert sorted(report["created"]) == sorted(backup_roles)
    assert report["existing"] == ["postgres"] and report["differences"] == []
    assert report["withheld"] == [{"role": "app_ops", "attribute": "SUPERUSER"}]
    assert report["memberships_granted"] == [{"role": "app_reader", "member": "app_writer", "admin": True}]
    expected, restored = shop_facts(source), shop_facts(empty)
    for fact in FACTS:
        assert restored[fact] == expected[fact], fact
    # Facts that would be empty prove nothing: each kind is really there.
    assert all(expected[fact] for fact in FACTS), [fact for fact in FACTS if not expected[fact]]
    assert ("store", "customers", "r", "app_owner") in expected["owners"]
    assert {row[1] for row in expected["large_objects"]} == {"app_owner", "postgres"}
    # The roles are the source's, except the superuser attribute the restore withholds (and reports).
    source_roles, empty_roles = role_facts(source, backup_roles), role_facts(empty, backup_roles)
    assert empty_roles["memberships"] == source_roles["memberships"]
    assert [r for r in empty_roles["roles"] if r[0] != "app_ops"] == [
        r for r in source_roles["roles"] if r[0] != "app_ops"]
    assert [r[1] for r in empty_roles["roles"] if r[0] == "app_ops"] == [False]
    # Passwords were left out of the backup: the new login role has none.
    assert empty.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'app_owner'") == [(None,)]
    event = AuditEvent.objects.get(action="restore.roles_created", object_id=str(run.pk))
    assert sorted(event.details["roles"]["created"]) == sorted(backup_roles)


def test_an_existing_role_with_other_attributes_is_not_altered_and_the_difference_is_reported(
        pair, shop_on, monkeypatch, operator):
    source, empty = pair
    name = f"clerk_{uuid.uuid4().hex[:8]}"
    source.execute(f"CREATE ROLE {name} LOGIN CREATEDB CONNECTION LIMIT 4 PASSWORD 'clerk-secret'; "
                   f"GRANT app_reader TO {name}")
    empty.execute(f"CREATE ROLE {name} NOLOGIN CONNECTION LIMIT 2 PASSWORD 'kept-as-it-is'")
    for role in ("app_owner", "app_reader", "app_writer"):  # when this test runs alone
        if not empty.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", role):
            empty.execute(f"CREATE ROLE {role}")
    before = empty.execute("SELECT rolcanlogin, rolcreatedb, rolconnlimit, rolpassword FROM pg_authid "
                           "WHERE rolname = %s", name)
    artifact = take_backup(shop_on, "full")

    run = restore(operator, artifact, target_on(empty, monkeypatch, operator, f"shop_{name}"))

    assert run.state == "succeeded", run.error
    report = step(run, "roles")["data"]
    assert name in report["existing"] and name not in report["created"]
    assert {(d["attribute"], d["backup"], d["server"]) for d in report["differences"] if d["role"] == name} == {
        ("LOGIN", True, False), ("CREATEDB", True, False), ("CONNECTION LIMIT", 4, 2)}
    assert {"role": "app_reader", "member": name, "admin": False,
            "why": "the member exists on the server: not altered"} in report["memberships_not_granted"]
    assert empty.execute("SELECT rolcanlogin, rolcreatedb, rolconnlimit, rolpassword FROM pg_authid "
                         "WHERE rolname = %s", name) == before
    assert role_facts(empty, [name])["memberships"] == []
    assert name in step(run, "roles")["detail"]


@pytest.mark.parametrize("passwords", [False, True])
def test_role_passwords_travel_only_when_the_deployment_enables_it(pair, shop_on, monkeypatch, operator, settings,
                                                                    passwords):
    source, empty = pair
    settings.BACKUP_ROLE_PASSWORDS = passwords
    name = f"payer_{uuid.uuid4().hex[:8]}"
    source.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'payer-secret'")
    verifier = source.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", name)[0][0]
    artifact = take_backup(shop_on, "full")
    text = server_roles.open_globals(artifact.manifest["globals"], artifact_id=artifact.id,
                                     keyring=get_keyring())["globals"].encode()
    assert artifact.manifest["globals"]["role_passwords"] is passwords
    assert (verifier.encode() in text) is passwords
    assert (b"PASSWORD '" in text) is passwords
    assert b"payer-secret" not in text and "payer-secret" not in str(artifact.manifest)

    run = restore(operator, artifact, target_on(empty, monkeypatch, operator, f"shop_{name}"))

    assert run.state == "succeeded", run.error
    assert name in step(run, "roles")["data"]["created"]
    assert empty.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", name) == [
        (verifier if passwords else None,)]


def _flip(section: dict, *, fix_checksum: bool) -> dict:
    sealed = bytearray(base64.b64decode(section["data"]))
    sealed[len(sealed) // 2] ^= 0x01
    changed = {**section, "data": base64.b64encode(bytes(sealed)).decode()}
    if fix_checksum:
        changed["sha256"] = hashlib.sha256(bytes(sealed)).hexdigest()
    return changed


@pytest.mark.parametrize("fix_checksum", [False, True], ids=["checksum-differs", "checksum-recomputed"])
def test_a_tampered_globals_section_is_refused_before_the_target_is_touched(pair, shop_on, monkeypatch, operator,
                                                                           fix_checksum):
    source, empty = pair
    name = f"ghost_{uuid.uuid4().hex[:8]}"
    source.execute(f"CREATE ROLE {name} LOGIN")
    database = f"shop_{name}"
    empty.create_database(name=database)
    empty.execute("CREATE TABLE info (marker text); INSERT INTO info VALUES ('before')", dbname=database)
    artifact = take_backup(shop_on, "full")
    Artifact.objects.filter(pk=artifact.pk).update(
        manifest={**artifact.manifest, "globals": _flip(artifact.manifest["globals"], fix_checksum=fix_checksum)})
    artifact.refresh_from_db()
    databases_before = empty.execute("SELECT datname FROM pg_database ORDER BY 1")

    run = restore(operator, artifact, target_on(empty, monkeypatch, operator, database))

    assert run.state == "failed"
    assert "roles are refused" in run.error and "target is untouched" in run.error
    assert ("authenticate" in run.error) if fix_checksum else ("SHA-256" in run.error)
    assert step(run, "fetch and decrypt")["state"] == "succeeded"
    assert step(run, "roles")["state"] == "failed"
    assert step(run, "restore into side database")["state"] == "not run"
    assert empty.execute("SELECT marker FROM info", dbname=database) == [("before",)]
    assert empty.execute("SELECT datname FROM pg_database ORDER BY 1") == databases_before
    assert empty.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", name) == []
    assert not AuditEvent.objects.filter(action="restore.roles_created", object_id=str(run.pk)).exists()
    assert AuditEvent.objects.filter(action="restore.failed", object_id=str(run.pk)).exists()


def test_globals_sealed_under_another_keyring_or_for_another_artifact_are_refused(loop_keys, settings):
    text = b"CREATE ROLE planted;\nALTER ROLE planted WITH LOGIN;\n"
    artifact_id = uuid.uuid4()
    foreign = KeyConfig(master_keys={"k1": bytes(32)}, active_key_id="k1", source="test")
    settings.BACKUP_KEYS = foreign
    planted = server_roles.seal_globals(text, artifact_id=artifact_id, keyring=get_keyring(), tool_version="x",
                                        role_passwords=False)
    settings.BACKUP_KEYS = KeyConfig(master_keys=loop_keys, active_key_id="k1", source="test")
    with pytest.raises(server_roles.GlobalsError, match="did not authenticate"):
        server_roles.open_globals(planted, artifact_id=artifact_id, keyring=get_keyring())
    ours = server_roles.seal_globals(text, artifact_id=artifact_id, keyring=get_keyring(), tool_version="x",
                                     role_passwords=False)
    assert server_roles.open_globals(ours, artifact_id=artifact_id, keyring=get_keyring())["globals"].encode() == text
    with pytest.raises(server_roles.GlobalsError, match="did not authenticate"):
        server_roles.open_globals(ours, artifact_id=uuid.uuid4(), keyring=get_keyring())


def test_planted_globals_create_no_superuser_and_change_no_existing_role(pair):
    _, empty = pair
    tag = uuid.uuid4().hex[:8]
    empty.execute(f"CREATE ROLE keeper_{tag} LOGIN PASSWORD 'keeper-secret'")
    before = empty.execute("SELECT rolname, rolsuper, rolpassword FROM pg_authid ORDER BY 1")
    planted = f"""
        CREATE ROLE boss_{tag};
        ALTER ROLE boss_{tag} WITH SUPERUSER CREATEROLE REPLICATION BYPASSRLS LOGIN PASSWORD 'clear-text';
        CREATE ROLE postgres;
        ALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'md5{'0' * 32}';
        ALTER ROLE keeper_{tag} WITH NOLOGIN PASSWORD 'md5{'1' * 32}';
        GRANT pg_execute_server_program TO boss_{tag};
        GRANT postgres TO boss_{tag};
        GRANT boss_{tag} TO keeper_{tag};
        DROP ROLE keeper_{tag};
        ALTER ROLE boss_{tag} SET session_preload_libraries = 'evil';
    """
    found = server_roles.parse_globals(planted.encode())

    report = roles.roles_create(empty.url(), found)

    assert report.created == [f"boss_{tag}"]
    assert sorted(report.existing) == sorted([f"keeper_{tag}", "postgres"])
    assert {w["attribute"] for w in report.withheld if w["role"] == f"boss_{tag}"} == {
        "SUPERUSER", "CREATEROLE", "REPLICATION", "BYPASSRLS", "PASSWORD (not a SCRAM or MD5 verifier)"}
    assert report.memberships_granted == []
    assert {m["role"] for m in report.memberships_not_granted} == {"pg_execute_server_program", "postgres",
                                                                   f"boss_{tag}"}
    assert any(s.startswith("DROP ROLE") for s in report.skipped)
    assert any("session_preload_libraries" in s for s in report.skipped)
    boss = empty.execute("SELECT rolsuper, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin, rolpassword "
                         "FROM pg_authid WHERE rolname = %s", f"boss_{tag}")
    assert boss == [(False, False, False, False, True, None)]
    after = empty.execute("SELECT rolname, rolsuper, rolpassword FROM pg_authid ORDER BY 1")
    assert [row for row in after if row[0] != f"boss_{tag}"] == before
    assert empty.execute("SELECT count(*) FROM pg_auth_members WHERE member = %s::regrole",
                         f"boss_{tag}") == [(0,)]


def test_a_psql_meta_command_in_the_globals_is_refused():
    with pytest.raises(server_roles.GlobalsError, match="meta-command"):
        server_roles.parse_globals(b"CREATE ROLE a;\n\\! touch /tmp/owned\n")


def test_a_key_rotation_rewraps_the_sealed_roles_with_the_artifact(pair, shop_on, settings, loop_keys):
    artifact = take_backup(shop_on, "full")
    keys = {**loop_keys, "k2": bytes(range(32))}
    settings.BACKUP_KEYS = KeyConfig(master_keys=keys, active_key_id="k1", source="test")

    artifact = keyrotation.artifact_rewrap(actor=None, artifact=artifact, to_key_id="k2")

    section = artifact.manifest["globals"]
    assert section["key_id"] == "k2" and artifact.key_id == "k2"
    settings.BACKUP_KEYS = KeyConfig(master_keys={"k2": keys["k2"]}, active_key_id="k2", source="test")
    document = server_roles.open_globals(section, artifact_id=artifact.id, keyring=get_keyring())
    assert "CREATE ROLE app_owner;" in document["globals"] and document["database"]["owner"] == "app_owner"


def test_a_full_whose_roles_cannot_be_taken_still_succeeds_and_says_so(pair, shop_on, monkeypatch, settings):
    source, _ = pair
    # Password verifiers need pg_authid, which only a superuser reads: the system's own role is not one.
    settings.BACKUP_ROLE_PASSWORDS = True
    monkeypatch.setenv("DRPANEL_SECRET_ROLES_SOURCE_URL", source.url("shop").replace("postgres@", "app_owner@"))

    artifact = take_backup(shop_on, "full")

    section = artifact.manifest["globals"]
    assert "data" not in section and "pg_dumpall --globals-only exited" in section["error"]
    run = artifact.runs.get()
    roles_step = next(s for s in run.steps if s["name"] == "roles")
    assert roles_step["state"] == "failed" and "roles not taken" in roles_step["detail"]
    event = AuditEvent.objects.get(action="backup.succeeded", object_id=str(artifact.pk))
    assert event.details["failed_steps"] == ["roles"]
    assert roles.roles_check(artifact) is None
