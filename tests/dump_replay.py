"""One real pg_dump per xdist worker, replayed for every later full backup of an identical database.

Most tests that need a full artifact (``full_artifact`` of ``tests.loop_fixtures``) back up the same
small shop. The first such backup in a test process runs the real ``pg_dump``; its output (the
plaintext of the artifact it made, decrypted back) is kept in a file of the session. A later backup
of a database with the same content fingerprint runs the panel's real backup path (connect, facts,
snapshot, exact row counts in that snapshot, encryption under the test's own keyring and new
artifact id, manifest, copies, audit events, the first verification's request) with one change: the
``pg_dump`` it finds in ``PG_BIN_DIR`` is a script that prints the kept dump. So every test still gets
its own artifact (own file, own catalog rows, own encryption): mutating one never touches another.

The fingerprint covers the schema (columns, indexes, constraints), every row of every table and
every sequence's value, so a test that changes the source first gets a real ``pg_dump`` again.
"""

import hashlib
import shlex
from pathlib import Path

import psycopg
from django.test import override_settings
from psycopg import sql

from backups import formats, pgtools
from backups.keys import get_keyring
from drpanel import pgbin, secrets
from tests.loop_support import stored_path, take_backup

SCHEMA_SQL = """
SELECT line FROM (
  SELECT format('column %s.%s.%s %s %s %s', table_schema, table_name, column_name, data_type, is_nullable,
                column_default) AS line
    FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
  UNION ALL
  SELECT format('index %s.%s', schemaname, indexdef) FROM pg_indexes
   WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL
  SELECT format('constraint %s %s', conrelid::regclass, pg_get_constraintdef(oid)) FROM pg_constraint
   WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
  UNION ALL
  SELECT format('sequence %s.%s %s', schemaname, sequencename, last_value) FROM pg_sequences
) lines ORDER BY line
"""


def fingerprint(url: str) -> str:
    """A hash of the database's schema, sequences and every row (the tests' sources are small)."""
    digest = hashlib.sha256()
    with psycopg.connect(url, autocommit=True) as conn:
        for (line,) in conn.execute(SCHEMA_SQL):
            digest.update(f"{line}\n".encode())
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema') ORDER BY 1, 2").fetchall()
        for schema, table in tables:
            rows = conn.execute(sql.SQL("SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                                        "FROM {} t").format(sql.Identifier(schema, table))).fetchone()[0]
            digest.update(f"table {schema}.{table} {rows}\n".encode())
    return digest.hexdigest()


class DumpReplay:
    """The kept dumps of one test process, by source fingerprint (see the module's docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.dumps: dict[str, Path] = {}
        self.replays = 0

    def backup(self, system):
        """A full backup of ``system`` (``take_backup``); its pg_dump replayed when the source is one already
        dumped in this session."""
        url = secrets.resolve(system.database_ref)
        key = fingerprint(url)
        kept = self.dumps.get(key)
        if kept is None:
            artifact = take_backup(system, "full")
            self.dumps[key] = self._keep(artifact, key)
            return artifact
        with override_settings(PG_BIN_DIR=str(kept.parent)):
            artifact = take_backup(system, "full")
        self.replays += 1
        return artifact

    def _keep(self, artifact, key: str) -> Path:
        """The artifact's plaintext (what pg_dump wrote) and, beside it, a pg_dump that prints it."""
        folder = self.folder / key[:16]
        folder.mkdir(parents=True, exist_ok=True)
        dump = folder / "dump"
        with open(stored_path(artifact), "rb") as src:
            formats.decrypt_to_file(src, dump, artifact_id=artifact.id, keyring=get_keyring())
        url = secrets.resolve(artifact.system.database_ref)
        with pgtools.connect(url, autocommit=True) as conn:
            real = pgbin.find_tool("pg_dump", pgtools.server_facts(conn)["server_major"])
        # It answers --version as the real one (so it is chosen for the same server) and prints the dump.
        script = folder / "pg_dump"
        script.write_text(f'#!/bin/sh\ncase "$1" in --version) exec {shlex.quote(real.path)} --version;; esac\n'
                          f"exec cat {shlex.quote(str(dump))}\n")
        script.chmod(0o700)
        return script
