"""The server's roles with every logical full: ``pg_dumpall --globals-only``, sealed in the manifest, and parsed.

A pg_dump archive names its owners and grantees but does not create them, so a full restored
onto a server that lacks them fails with ``role "…" does not exist``. Each full therefore
carries the roles of the server it came from, taken just before the dump:

- ``capture_globals`` runs ``pg_dumpall --globals-only --no-tablespaces`` (and
  ``--no-role-passwords`` unless ``DRPANEL_BACKUP_ROLE_PASSWORDS`` is on) as the system's role;
- ``seal_globals`` encrypts that text in the artifact format (its own data key, the active
  master key, artifact id ``globals_id(artifact)``, so it cannot be swapped in from another
  artifact) and returns the manifest's ``globals`` section: the sealed bytes (base64), their
  SHA-256 and the plaintext's, the role names. The manifest travels with every copy of the
  artifact and survives a catalog rebuilt from storage;
- ``open_globals`` checks and authenticates that section before anything uses it: a flipped
  bit is refused (``GlobalsError``) before the restore touches its target;
- ``parse_globals`` never executes the text: it lexes it and keeps only what it recognises
  (``CREATE ROLE``, ``ALTER ROLE … WITH`` attributes, ``COMMENT ON ROLE``, ``GRANT role TO
  role``); everything else is listed as skipped. ``restores.roles`` builds its own statements
  from the result.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import subprocess
import uuid
from dataclasses import dataclass, field

from django.conf import settings

from backups import formats, pgtools
from drpanel import pgbin

GLOBALS_NAMESPACE = uuid.UUID("5d0c2f6e-8a3b-4f61-9c1e-6b7a2d4e9f10")
GLOBALS_FORMAT = "pg_dumpall --globals-only"
MAX_GLOBALS_BYTES = 4 * 1024 * 1024
# Role attributes pg_dumpall writes, as (keyword, its negation, column of pg_roles).
FLAGS = {
    "SUPERUSER": "rolsuper", "INHERIT": "rolinherit", "CREATEROLE": "rolcreaterole", "CREATEDB": "rolcreatedb",
    "LOGIN": "rolcanlogin", "REPLICATION": "rolreplication", "BYPASSRLS": "rolbypassrls",
}
# A role's password as pg_dumpall writes it: a SCRAM or MD5 verifier, never clear text.
PASSWORD_VERIFIER = re.compile(r"^(SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+"
                               r"|md5[0-9a-f]{32})$")


class GlobalsError(Exception):
    """The globals of an artifact cannot be taken, trusted or read; the message says which."""


def globals_id(artifact_id) -> uuid.UUID:
    """The artifact id the sealed globals of ``artifact_id`` carry in their header."""
    return uuid.uuid5(GLOBALS_NAMESPACE, str(artifact_id))


# --- taking and sealing ----------------------------------------------------------------------

def capture_globals(url: str, server_major: int, *, role_passwords: bool | None = None) -> tuple[bytes, pgbin.Tool]:
    """``pg_dumpall --globals-only`` of the server behind ``url`` (passwords per the setting)."""
    if role_passwords is None:
        role_passwords = settings.BACKUP_ROLE_PASSWORDS
    tool = pgbin.find_tool("pg_dumpall", server_major)
    env = pgtools.libpq_env(url)
    cmd = [tool.path, "--globals-only", "--no-tablespaces", "--no-password"]
    if env.get("PGDATABASE"):  # the system's own database: its role may lack CONNECT on "postgres"
        cmd.append(f"--database={env['PGDATABASE']}")
    if not role_passwords:
        cmd.append("--no-role-passwords")
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
        first = (lines or ["no message"])[0]
        first = first.split("password")[0].rstrip(" :") if "password" in first.lower() else first
        raise GlobalsError(f"pg_dumpall --globals-only exited with {done.returncode}: {first[:300]}")
    if len(done.stdout) > MAX_GLOBALS_BYTES:
        raise GlobalsError(f"pg_dumpall --globals-only wrote {len(done.stdout)} bytes, more than the "
                           f"{MAX_GLOBALS_BYTES} a manifest carries")
    return done.stdout, tool


DATABASE_SQL = """
SELECT d.datname, pg_get_userbyid(d.datdba), shobj_description(d.oid, 'pg_database'),
       d.datacl IS NOT NULL,
       (SELECT coalesce(json_agg(json_build_object('privilege', a.privilege_type, 'grantable', a.is_grantable,
                                                   'grantee', CASE a.grantee WHEN 0 THEN NULL
                                                              ELSE pg_get_userbyid(a.grantee) END)
                                 ORDER BY a.grantee, a.privilege_type), '[]'::json)
        FROM aclexplode(d.datacl) a)
FROM pg_database d WHERE d.datname = current_database()
"""


def database_properties(conn) -> dict:
    """What pg_dump leaves out without ``--create``: the database's owner, comment and grants."""
    name, owner, comment, has_acl, grants = conn.execute(DATABASE_SQL).fetchone()
    return {"name": name, "owner": owner, "comment": comment, "acl": grants if has_acl else None}


def seal_globals(text: bytes, *, artifact_id, keyring, tool_version: str, role_passwords: bool,
                 database: dict | None = None) -> dict:
    """The manifest's ``globals`` section: ``text`` and ``database`` sealed in the artifact format.

    The sealed plaintext is JSON: ``{"globals": <pg_dumpall output>, "database": <database_properties>}``,
    so the database's owner and grants are authenticated like the roles.
    """
    sealed = io.BytesIO()
    document = json.dumps({"globals": text.decode(), "database": database}, sort_keys=True).encode()
    result = formats.encrypt_stream(io.BytesIO(document), sealed, artifact_id=globals_id(artifact_id),
                                    keyring=keyring)
    parsed = parse_globals(text)
    return {
        "format": GLOBALS_FORMAT, "pg_dumpall": tool_version, "role_passwords": role_passwords,
        "roles": sorted(parsed.roles), "encryption": formats.ENCRYPTION_DRPANEL, "key_id": result.key_id,
        "size": result.stored_size, "sha256": result.stored_sha256,
        "plaintext_size": result.plaintext_size, "plaintext_sha256": result.plaintext_sha256,
        "data": base64.b64encode(sealed.getvalue()).decode(),
    }


def open_globals(section: dict, *, artifact_id, keyring) -> dict:
    """``{"globals": text, "database": properties}`` of a manifest section (``GlobalsError`` if a check fails)."""
    if not isinstance(section, dict) or section.get("format") != GLOBALS_FORMAT:
        raise GlobalsError("the manifest's globals section is not a pg_dumpall --globals-only section")
    if section.get("encryption") != formats.ENCRYPTION_DRPANEL:
        raise GlobalsError("the manifest's globals are not sealed in the DR Panel format: refused")
    try:
        sealed = base64.b64decode(str(section.get("data") or ""), validate=True)
    except (binascii.Error, ValueError):
        raise GlobalsError("the manifest's globals are not valid base64: the section was changed") from None
    if hashlib.sha256(sealed).hexdigest() != section.get("sha256") or len(sealed) != section.get("size"):
        raise GlobalsError("the manifest's globals do not match their SHA-256: the section was changed")
    plain = io.BytesIO()
    try:
        result = formats.decrypt_stream(io.BytesIO(sealed), plain, artifact_id=globals_id(artifact_id),
                                        keyring=keyring)
    except formats.ArtifactError as exc:
        raise GlobalsError(f"the manifest's globals did not authenticate: {exc}") from None
    except Exception as exc:  # a key provider's own error (unknown key, KMS refusal)
        raise GlobalsError(f"the manifest's globals could not be decrypted: {type(exc).__name__}: {exc}") from None
    if result.plaintext_sha256 != section.get("plaintext_sha256"):
        raise GlobalsError("the manifest's globals decrypt to other bytes than recorded")
    try:
        document = json.loads(plain.getvalue())
        if not isinstance(document.get("globals"), str):
            raise ValueError
    except (ValueError, AttributeError):
        raise GlobalsError("the manifest's globals are not a globals document") from None
    return {"globals": document["globals"], "database": document.get("database") or None}


def rewrap_globals(section: dict, *, artifact_id, keyring, to_key_id: str) -> dict:
    """The section with its data key re-wrapped under ``to_key_id`` (a key rotation), checked again."""
    sealed = base64.b64decode(section["data"])
    out = io.BytesIO()
    header, result = formats.rewrap_stream(io.BytesIO(sealed), out, artifact_id=globals_id(artifact_id),
                                           keyring=keyring, to_key_id=to_key_id)
    new = {**section, "key_id": header.key_id, "size": result.stored_size, "sha256": result.stored_sha256,
           "data": base64.b64encode(out.getvalue()).decode()}
    open_globals(new, artifact_id=artifact_id, keyring=keyring)
    return new


# --- reading ---------------------------------------------------------------------------------

@dataclass
class RoleSpec:
    """One role of a server as its globals describe it."""

    name: str
    flags: dict[str, bool] = field(default_factory=dict)
    connection_limit: int = -1
    valid_until: str | None = None
    password: str | None = None
    comment: str | None = None
    settings: list[str] = field(default_factory=list)


@dataclass
class Membership:
    """``member`` is a member of ``role`` (``admin``: WITH ADMIN OPTION)."""

    role: str
    member: str
    admin: bool = False


@dataclass
class Globals:
    """What ``parse_globals`` kept: roles by name, memberships, and the statements it did not use."""

    roles: dict[str, RoleSpec] = field(default_factory=dict)
    memberships: list[Membership] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*)
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<string>'(?:[^']|'')*')
  | (?P<word>[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*)
  | (?P<number>-?\d+)
  | (?P<punct>[;,=()])
  | (?P<meta>\\[^\n]*)
""", re.VERBOSE)
_META_ALLOWED = re.compile(r"^\\(?:un)?restrict [A-Za-z0-9]{1,256}\s*$")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "ident" (a name, quoted or not), "keyword" (an unquoted word), "string", "number", "punct"
    value: str

    def is_kw(self, *words: str) -> bool:
        return self.kind == "keyword" and self.value.upper() in words


def _statements(text: str) -> list[list[_Tok]]:
    statements, current, pos = [], [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise GlobalsError(f"the globals cannot be read at offset {pos}: {text[pos:pos + 20]!r}")
        pos = match.end()
        kind, value = match.lastgroup, match.group()
        if kind in ("space", "comment"):
            continue
        if kind == "meta":
            # pg_dumpall 15.14+ frames its output with \restrict / \unrestrict; any other meta-command is refused.
            if not _META_ALLOWED.match(value):
                raise GlobalsError(f"the globals hold a psql meta-command: {value[:40]!r}")
            continue
        if kind == "quoted":
            current.append(_Tok("ident", value[1:-1].replace('""', '"')))
        elif kind == "string":
            current.append(_Tok("string", value[1:-1].replace("''", "'")))
        elif kind == "word":
            current.append(_Tok("keyword", value))
        elif value == ";":
            if current:
                statements.append(current)
            current = []
        else:
            current.append(_Tok(kind, value))
    if current:
        statements.append(current)
    return statements


def _name(tok: _Tok) -> str:
    if tok.kind == "ident":
        return tok.value
    if tok.kind == "keyword":
        return tok.value.lower()  # an unquoted name folds to lower case
    raise GlobalsError(f"expected a role name, found {tok.value!r}")


def _text(tokens: list[_Tok]) -> str:
    return " ".join(t.value for t in tokens)[:200]


def parse_globals(text: bytes | str) -> Globals:
    """The roles, attributes and memberships in ``pg_dumpall --globals-only`` output (never executed)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="strict")
    found = Globals()
    for tokens in _statements(text):
        try:
            _statement(found, tokens)
        except (IndexError, ValueError):
            found.skipped.append(_text(tokens))
    return found


def _statement(found: Globals, t: list[_Tok]) -> None:
    if t[0].is_kw("SET"):
        return
    if len(t) == 3 and t[0].is_kw("CREATE") and t[1].is_kw("ROLE"):
        name = _name(t[2])
        found.roles.setdefault(name, RoleSpec(name=name))
        return
    if len(t) >= 4 and t[0].is_kw("ALTER") and t[1].is_kw("ROLE") and t[3].is_kw("WITH"):
        role = found.roles.setdefault(_name(t[2]), RoleSpec(name=_name(t[2])))
        _attributes(role, t[4:])
        return
    if len(t) >= 4 and t[0].is_kw("ALTER") and t[1].is_kw("ROLE") and t[3].is_kw("SET", "IN"):
        role = found.roles.get(_name(t[2]))
        if role is not None:
            role.settings.append(_text(t[3:]))
        found.skipped.append(_text(t))
        return
    if len(t) == 6 and t[0].is_kw("COMMENT") and t[1].is_kw("ON") and t[2].is_kw("ROLE") and t[4].is_kw("IS"):
        role = found.roles.get(_name(t[3]))
        if role is not None and t[5].kind == "string":
            role.comment = t[5].value
            return
    if len(t) >= 4 and t[0].is_kw("GRANT") and t[2].is_kw("TO"):
        _membership(found, t)
        return
    found.skipped.append(_text(t))


def _attributes(role: RoleSpec, t: list[_Tok]) -> None:
    i = 0
    while i < len(t):
        word = t[i].value.upper() if t[i].kind == "keyword" else ""
        if word in FLAGS:
            role.flags[word] = True
        elif word.startswith("NO") and word[2:] in FLAGS:
            role.flags[word[2:]] = False
        elif word == "CONNECTION" and t[i + 1].is_kw("LIMIT") and t[i + 2].kind == "number":
            role.connection_limit = int(t[i + 2].value)
            i += 2
        elif word == "VALID" and t[i + 1].is_kw("UNTIL") and t[i + 2].kind == "string":
            role.valid_until = t[i + 2].value
            i += 2
        elif word == "PASSWORD" and t[i + 1].kind == "string":
            role.password = t[i + 1].value
            i += 1
        elif word == "PASSWORD" and t[i + 1].is_kw("NULL"):
            i += 1
        else:
            raise ValueError(word)
        i += 1


def _membership(found: Globals, t: list[_Tok]) -> None:
    role, member = _name(t[1]), _name(t[3])
    rest = [tok.value.upper() for tok in t[4:]]
    if "GRANTED" in rest:
        rest = rest[: rest.index("GRANTED")]
    admin = False
    if rest:
        if rest[0] != "WITH":
            raise ValueError(rest[0])
        options = " ".join(rest[1:]).replace(" ,", ",")
        for option in (o.strip() for o in options.split(",")):
            if option in ("ADMIN OPTION", "ADMIN TRUE"):
                admin = True
            elif option not in ("ADMIN FALSE", "INHERIT TRUE", "INHERIT FALSE", "SET TRUE", "SET FALSE"):
                raise ValueError(option)
    found.memberships.append(Membership(role=role, member=member, admin=admin))
