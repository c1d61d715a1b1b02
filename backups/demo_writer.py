"""The demo's application at work: an order every few seconds into the protected demo database.

Continuous protection only shows what it is worth when the database changes: this writer gives
the demo a history to go back to ("restore to 10 minutes ago" brings back the orders placed
until then, none after). It reconnects after any error, so a restore swapping the database
underneath it, or the server restarting, only pauses it. ``manage.py demo_writer`` runs it; it
is a child of ``manage.py serve --demo``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg

log = logging.getLogger(__name__)

ORDER = """
INSERT INTO orders (user_id, restaurant_id, status, total, placed_at, delivery)
SELECT (SELECT id FROM users ORDER BY random() LIMIT 1), (SELECT id FROM restaurants ORDER BY random() LIMIT 1),
       'pending', round((10 + random() * 90)::numeric, 2), clock_timestamp(),
       jsonb_build_object('source', 'demo writer', 'minutes', 15 + floor(random() * 45)::int)
RETURNING id, placed_at
"""


def place_order(conn) -> tuple[int, object]:
    """One order, committed on its own; its id and commit-time ``placed_at``."""
    return conn.execute(ORDER).fetchone()


def write_orders(url: str, *, every: float, count: int | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    """Place an order every ``every`` seconds (``count`` of them, or until stopped); how many were placed."""
    placed, conn = 0, None
    while count is None or placed < count:
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(url, autocommit=True, connect_timeout=5, application_name="demo writer")
            place_order(conn)
            placed += 1
        except psycopg.Error as exc:
            log.warning("demo writer: %s; trying again", str(exc).strip().splitlines()[0] if str(exc) else exc)
            if conn is not None:
                conn.close()
            conn = None
        sleep(every)
    if conn is not None:
        conn.close()
    return placed
