"""SQL sanity checks and row-count comparisons, run read-only on a (restored) database.

A sanity check is a query returning one value and an *expectation* the value must meet.
The expectation language is deliberately tiny::

    <operator> <value>

``operator`` is one of ``=`` (or ``==``), ``!=`` (or ``<>``), ``<``, ``<=``, ``>``, ``>=``;
``value`` is a number (``1``, ``-2.5``, ``1e6``), a quoted text (``'ok'`` or ``"ok"``,
compared exactly), ``true``, ``false`` or ``null``. Text, booleans and null only take
``=`` and ``!=``. Examples: ``>= 1``, ``= 0``, ``!= 'broken'``, ``= true``.

Every query runs in its own ``READ ONLY`` transaction with ``statement_timeout`` and
``lock_timeout``, through the extended query protocol (so one query string is exactly one
statement: ``SELECT 1; DROP TABLE users`` is refused by the server), and is rolled back.
Give the target's URL a role that can read what the checks read; nothing here needs more.

Public functions: ``Expectation.parse``, ``run_sanity_checks``, ``compare_row_counts``,
``parse_table_name``.
"""

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import psycopg
from django.conf import settings
from psycopg import sql

_EXPECTATION = re.compile(r"^\s*(==|=|!=|<>|<=|>=|<|>)\s*(.*?)\s*$", re.S)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_ORDERING = {"<", "<=", ">", ">="}


class ExpectationError(ValueError):
    """An expectation that does not parse."""


@dataclass(frozen=True)
class Expectation:
    """A parsed expectation: an operator and a number, a text, a boolean or null."""

    op: str
    value: Decimal | str | bool | None
    text: str

    @classmethod
    def parse(cls, text: str) -> "Expectation":
        match = _EXPECTATION.match(text or "")
        if not match or not match.group(2):
            raise ExpectationError(
                "write an operator and a value, e.g. >= 1, = 0, != 'broken' (operators: = != < <= > >=)")
        op, raw = match.group(1), match.group(2)
        op = {"==": "=", "<>": "!="}.get(op, op)
        value: Decimal | str | bool | None
        if _NUMBER.match(raw):
            value = Decimal(raw)
        elif len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            value = raw[1:-1]
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        elif raw.lower() == "null":
            value = None
        else:
            raise ExpectationError(f"{raw!r} is not a number, a quoted text, true, false or null")
        if op in _ORDERING and not isinstance(value, Decimal):
            raise ExpectationError(f"{op} compares numbers only; use = or != for text, booleans and null")
        return cls(op=op, value=value, text=f"{op} {raw}")

    def check(self, actual) -> tuple[bool, str]:
        """Compare a query's value; returns (met, a one-line explanation when not met)."""
        if self.value is None:
            met = (actual is None) == (self.op == "=")
            return met, "" if met else f"got {_show(actual)}"
        if actual is None:
            return False, "got NULL"
        if isinstance(self.value, bool):
            if not isinstance(actual, bool):
                return False, f"got {_show(actual)}, not a boolean"
            met = (actual == self.value) == (self.op == "=")
            return met, "" if met else f"got {_show(actual)}"
        if isinstance(self.value, Decimal):
            number = _as_decimal(actual)
            if number is None:
                return False, f"got {_show(actual)}, not a number"
            met = {
                "=": number == self.value, "!=": number != self.value, "<": number < self.value,
                "<=": number <= self.value, ">": number > self.value, ">=": number >= self.value,
            }[self.op]
            return met, "" if met else f"got {_show(actual)}"
        text = actual if isinstance(actual, str) else _show(actual)
        met = (text == self.value) == (self.op == "=")
        return met, "" if met else f"got {_show(actual)}"


def _as_decimal(value) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


def _show(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | memoryview):
        return f"<{len(bytes(value))} bytes>"
    text = str(value)
    return repr(text[:200]) if isinstance(value, str) else text[:200]


@dataclass
class SanityResult:
    """The outcome of one sanity check."""

    name: str
    query: str
    expectation: str
    ok: bool
    value: str = ""
    error: str = ""
    duration_ms: int = 0

    def as_dict(self) -> dict:
        return {"name": self.name, "query": self.query, "expectation": self.expectation, "ok": self.ok,
                "value": self.value, "error": self.error, "duration_ms": self.duration_ms}


@dataclass
class RowCountResult:
    """One table's row count in the restored database against the manifest's."""

    table: str
    expected: int
    actual: int | None
    ok: bool
    error: str = ""

    def as_dict(self) -> dict:
        return {"table": self.table, "expected": self.expected, "actual": self.actual, "ok": self.ok,
                "error": self.error}


def _connect(url: str, timeout: int) -> psycopg.Connection:
    return psycopg.connect(url, connect_timeout=min(timeout, 10), autocommit=True,
                           application_name="drpanel-sanity")


def _begin_read_only(cur, timeout: int, *, repeatable: bool = False) -> None:
    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ" if repeatable else "BEGIN")
    cur.execute("SET TRANSACTION READ ONLY")
    cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{timeout}s")))
    cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{min(timeout, 10)}s")))
    # Taking the snapshot now means the query itself can no longer switch the transaction to read-write.
    cur.execute("SELECT 1")


def _error_text(exc: Exception) -> str:
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return "the query ran past its time limit (statement_timeout)"
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    lines = str(exc).strip().splitlines()
    return (primary or (lines[0] if lines else type(exc).__name__))[:300]


def run_sanity_checks(url: str, checks: Iterable, *, timeout: int | None = None) -> list[SanityResult]:
    """Run each check (objects with ``name``, ``query``, ``expectation``) on the database at ``url``.

    Returns one result per check, in order; never raises for a failing check (a bad query,
    a timeout, a wrong value are results). If the database cannot be reached, every check
    fails with that reason. ``timeout`` is the statement timeout in seconds (default
    ``DRPANEL_SANITY_TIMEOUT_SECONDS``).
    """
    timeout = int(timeout or settings.SANITY_TIMEOUT_SECONDS)
    checks = list(checks)
    results: list[SanityResult] = []
    try:
        conn = _connect(url, timeout)
    except psycopg.Error as exc:
        reason = f"cannot connect: {_error_text(exc)}"
        return [SanityResult(c.name, c.query, c.expectation, ok=False, error=reason) for c in checks]
    with conn:
        for check in checks:
            result = SanityResult(check.name, check.query, check.expectation, ok=False)
            results.append(result)
            try:
                expectation = Expectation.parse(check.expectation)
            except ExpectationError as exc:
                result.error = f"bad expectation: {exc}"
                continue
            started = time.monotonic()
            # A binary cursor forces the extended protocol: exactly one statement per query.
            with conn.cursor(binary=True) as cur:
                try:
                    _begin_read_only(cur, timeout)
                    cur.execute(check.query)
                    rows = cur.fetchmany(2) if cur.description else []
                    width = len(cur.description or ())
                except psycopg.Error as exc:
                    result.error = _error_text(exc)
                    rows, width = None, 0
                finally:
                    result.duration_ms = int((time.monotonic() - started) * 1000)
                    if not conn.closed:
                        cur.execute("ROLLBACK")
            if rows is None:
                continue
            if len(rows) != 1 or width != 1:
                result.error = (f"the query must return one row with one column; it returned {len(rows)}"
                                f"{'+' if len(rows) == 2 else ''} row(s) with {width} column(s)")
                continue
            value = rows[0][0]
            result.value = _show(value)
            result.ok, why = expectation.check(value)
            if not result.ok:
                result.error = f"expected {expectation.text}, {why}"
    return results


def parse_table_name(name: str) -> tuple[str, ...]:
    """Split ``schema.table`` (or a bare ``table``) into exact names; double quotes protect dots.

    Names are taken literally (case kept), as the manifest records them from the catalog.
    """
    parts: list[str] = []
    current, quoted, i = "", False, 0
    while i < len(name):
        ch = name[i]
        if ch == '"':
            if quoted and i + 1 < len(name) and name[i + 1] == '"':
                current += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
        i += 1
    parts.append(current)
    if quoted or not all(parts) or len(parts) > 2:
        raise ValueError(f"{name!r} is not a table name (schema.table or table)")
    return tuple(parts)


def compare_row_counts(url: str, expected: Mapping[str, int], *, timeout: int | None = None,
                       ) -> list[RowCountResult]:
    """Count the rows of each table of ``expected`` (``{"schema.table": count}``, from a manifest).

    Counts are exact (``count(*)``), in one read-only repeatable-read snapshot; a missing
    table is a failed result, not an exception. Raises ``psycopg.Error`` only when the
    database cannot be reached at all.
    """
    timeout = int(timeout or settings.SANITY_TIMEOUT_SECONDS)
    results: list[RowCountResult] = []
    with _connect(url, timeout) as conn, conn.cursor() as cur:
        _begin_read_only(cur, timeout, repeatable=True)
        try:
            for table, count in sorted(expected.items()):
                result = RowCountResult(table=table, expected=int(count), actual=None, ok=False)
                results.append(result)
                try:
                    identifier = sql.Identifier(*parse_table_name(table))
                except ValueError as exc:
                    result.error = str(exc)
                    continue
                cur.execute("SAVEPOINT drpanel_count")
                try:
                    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(identifier))
                    result.actual = cur.fetchone()[0]
                    cur.execute("RELEASE SAVEPOINT drpanel_count")
                except psycopg.Error as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT drpanel_count")
                    result.error = _error_text(exc)
                    continue
                result.ok = result.actual == result.expected
                if not result.ok:
                    result.error = f"{result.actual} rows, the manifest says {result.expected}"
        finally:
            cur.execute("ROLLBACK")
    return results


def tables_intact(results: Iterable[RowCountResult]) -> bool:
    """True when every compared table has exactly the manifest's row count."""
    results = list(results)
    return bool(results) and all(r.ok for r in results)
