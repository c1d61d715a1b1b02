"""SQL sanity checks and row counts, run read-only on a real database."""

from dataclasses import dataclass
from decimal import Decimal

import psycopg
import pytest

from restores.sanity import (
    Expectation,
    ExpectationError,
    compare_row_counts,
    parse_table_name,
    run_sanity_checks,
    tables_intact,
)

pytest_plugins = ["tests.restore_fixtures"]

SHOP = """
CREATE TABLE users (id serial PRIMARY KEY, email text, active boolean DEFAULT true);
INSERT INTO users (email) SELECT 'u' || n || '@example.com' FROM generate_series(1, 5) n;
CREATE SCHEMA billing;
CREATE TABLE billing."Invoices.2024" (id int);
INSERT INTO billing."Invoices.2024" VALUES (1), (2);
CREATE TABLE settings (k text, v text);
INSERT INTO settings VALUES ('mode', 'live');
"""


@dataclass
class Check:
    name: str
    query: str
    expectation: str


@pytest.fixture
def shop(scratch):
    return scratch.create("shop", setup=SHOP)


@pytest.mark.parametrize(("text", "op", "value"), [
    (">= 1", ">=", Decimal(1)), ("=0", "=", Decimal(0)), ("== 2.5", "=", Decimal("2.5")), ("!= -3", "!=", Decimal(-3)),
    ("<> 'x'", "!=", "x"), ('= "live"', "=", "live"), ("= true", "=", True), ("!= null", "!=", None),
    ("< 1e3", "<", Decimal("1e3")),
])
def test_expectations_are_an_operator_and_a_value(text, op, value):
    expectation = Expectation.parse(text)
    assert (expectation.op, expectation.value) == (op, value)


@pytest.mark.parametrize("text", [
    "", "1", ">=", "~ 'x'", "= users", "> 'a'", "< true", "= 1; DROP TABLE x", "between 1 and 2",
])
def test_anything_else_is_refused(text):
    with pytest.raises(ExpectationError):
        Expectation.parse(text)


@pytest.mark.parametrize(("text", "value", "met"), [
    (">= 1", 5, True), (">= 1", 0, False), ("= 5", Decimal("5.0"), True), ("< 3", 2.5, True), ("= 5", "5", True),
    ("= 5", "five", False), ("= 5", None, False), ("= 'live'", "live", True), ("= 'live'", "Live", False),
    ("!= 'broken'", "ok", True), ("= true", True, True), ("= true", 1, False), ("= null", None, True),
    ("!= null", None, False), ("= 1", True, False),
])
def test_values_are_compared_exactly(text, value, met):
    assert Expectation.parse(text).check(value)[0] is met


def test_checks_pass_and_fail_on_a_real_database(shop):
    results = run_sanity_checks(shop, [
        Check("users exist", "SELECT count(*) FROM users", ">= 1"),
        Check("no inactive users", "SELECT count(*) FROM users WHERE NOT active", "= 0"),
        Check("mode is live", "SELECT v FROM settings WHERE k = 'mode'", "= 'live'"),
        Check("too many users", "SELECT count(*) FROM users", "> 100"),
    ])
    assert [r.ok for r in results] == [True, True, True, False]
    assert results[0].value == "5"
    assert results[3].error == "expected > 100, got 5"
    assert all(r.duration_ms >= 0 for r in results)


def test_a_failing_query_is_a_result_and_the_next_checks_still_run(shop):
    results = run_sanity_checks(shop, [
        Check("missing table", "SELECT count(*) FROM nope", ">= 1"),
        Check("two rows", "SELECT id FROM users", ">= 1"),
        Check("two columns", "SELECT 1, 2", "= 1"),
        Check("no rows", "SELECT 1 WHERE false", "= 1"),
        Check("bad expectation", "SELECT 1", "about 1"),
        Check("still runs", "SELECT 1", "= 1"),
    ])
    assert [r.ok for r in results] == [False, False, False, False, False, True]
    assert 'relation "nope" does not exist' in results[0].error
    assert "one row with one column" in results[1].error and "2+ row(s)" in results[1].error
    assert "2 column(s)" in results[2].error and "0 row(s)" in results[3].error
    assert results[4].error.startswith("bad expectation")


def test_checks_cannot_write(shop, scratch):
    results = run_sanity_checks(shop, [
        Check("delete", "DELETE FROM users RETURNING 1", "= 1"),
        Check("create", "CREATE TABLE evil (id int)", "= 1"),
        Check("writable function",
              "SELECT count(*) FROM (SELECT set_config('transaction_read_only', 'off', true)) s", "= 1"),
        Check("smuggled statement", "SELECT 1; DELETE FROM users", "= 1"),
        Check("commit then write", "COMMIT; DELETE FROM users", "= 1"),
    ])
    assert not any(r.ok for r in results)
    assert "read-only transaction" in results[0].error and "read-only transaction" in results[1].error
    assert "cannot insert multiple commands" in results[3].error
    assert scratch.scalar(scratch.name("shop"), "SELECT count(*) FROM users") == 5
    assert scratch.scalar(scratch.name("shop"), "SELECT count(*) FROM pg_tables WHERE tablename = 'evil'") == 0


def test_a_slow_query_is_stopped_by_the_statement_timeout(shop):
    [result] = run_sanity_checks(shop, [Check("slow", "SELECT count(*) FROM pg_sleep(5)", "= 1")], timeout=1)
    assert not result.ok and "time limit" in result.error
    assert result.duration_ms < 4000


def test_an_unreachable_database_fails_every_check_with_the_reason(scratch):
    results = run_sanity_checks(scratch.url(scratch.name("missing")), [Check("a", "SELECT 1", "= 1"),
                                                                         Check("b", "SELECT 2", "= 2")])
    assert [r.ok for r in results] == [False, False]
    assert all(r.error.startswith("cannot connect") and "does not exist" in r.error for r in results)


def test_row_counts_are_compared_exactly_with_the_manifest(shop):
    results = compare_row_counts(shop, {
        "public.users": 5, "users": 5, 'billing."Invoices.2024"': 2, "public.settings": 2, "public.gone": 1,
    })
    by_table = {r.table: r for r in results}
    assert by_table["public.users"].ok and by_table["users"].ok and by_table['billing."Invoices.2024"'].ok
    assert (by_table["public.settings"].actual, by_table["public.settings"].error) == (1, "1 rows, the manifest says 2")
    assert by_table["public.gone"].actual is None and "does not exist" in by_table["public.gone"].error
    assert not tables_intact(results)
    assert tables_intact([r for r in results if r.ok])


def test_row_counts_raise_only_when_the_database_is_unreachable(scratch):
    with pytest.raises(psycopg.OperationalError):
        compare_row_counts(scratch.url(scratch.name("missing")), {"public.users": 1})


def test_table_names_split_on_dots_outside_quotes():
    assert parse_table_name("public.users") == ("public", "users")
    assert parse_table_name("users") == ("users",)
    assert parse_table_name('billing."Invoices.2024"') == ("billing", "Invoices.2024")
    assert parse_table_name('"a""b"') == ('a"b',)
    for bad in ("a.b.c", "", 'x."open', ".users"):
        with pytest.raises(ValueError):
            parse_table_name(bad)
