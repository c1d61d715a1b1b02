"""Streamed audit rows: the next batch is fetched on a thread while this one is used; order, errors, early stops."""

import uuid

import psycopg
import pytest
from django.db import connection, transaction

from compliance.audit.rows import Prefetched

pytestmark = pytest.mark.django_db


def server_cursor():
    connection.ensure_connection()
    return connection.connection.cursor(name=f"prefetch_test_{uuid.uuid4().hex}")


def test_every_row_arrives_once_and_in_order():
    with transaction.atomic(), server_cursor() as cursor:
        cursor.execute("SELECT g FROM generate_series(1, 12345) g ORDER BY g")
        rows = Prefetched(cursor, 1000)
        try:
            assert [row[0] for row in rows] == list(range(1, 12346))
        finally:
            rows.close()


def test_a_reader_that_stops_early_stops_the_fetching_thread():
    with transaction.atomic(), server_cursor() as cursor:
        cursor.execute("SELECT g FROM generate_series(1, 100000) g")
        rows = Prefetched(cursor, 100, depth=2)
        first = []
        for row in rows:
            first.append(row[0])
            if len(first) == 150:
                break
        rows.close()
        assert not rows._thread.is_alive()
        assert first == list(range(1, 151))
        # The cursor is free again: nothing else fetches from it.
        assert cursor.fetchone() is not None


def test_an_error_of_the_server_reaches_the_reader_after_the_batches_before_it():
    with transaction.atomic(), server_cursor() as cursor:
        cursor.execute("SELECT 1 / (2500 - g) FROM generate_series(1, 5000) g")
        rows = Prefetched(cursor, 100)
        seen = 0
        with pytest.raises(psycopg.errors.DivisionByZero):
            for _ in rows:
                seen += 1
        rows.close()
        assert seen == 2400  # every batch before the one the error fell in
        transaction.set_rollback(True)  # the server aborted this (inner) transaction
