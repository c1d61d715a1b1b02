"""Fixtures of the compliance tests: a frozen panel clock and a roster of one contact per level.

Import the ones a module uses (``from tests.compliance_fixtures import panel_clock``).
"""

from datetime import UTC, datetime

import pytest

from compliance.models import Contact
from drpanel import clock

# A Wednesday: its ISO week (2026-W48) runs Monday 23 to Sunday 29 November.
NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

ROSTER = [
    (Contact.Level.L1, "Lena One", "l1@example.com", 5),
    (Contact.Level.L2, "Leo Two", "l2@example.com", 15),
    (Contact.Level.L3, "Lara Three", "l3@example.com", 30),
    (Contact.Level.EMERGENCY, "Emil Emergency", "emergency@example.com", 2),
    (Contact.Level.VENDOR, "Vendor Co", "vendor@example.com", None),
]


@pytest.fixture
def panel_clock():
    """``drpanel.clock`` frozen at Wednesday 2026-11-25 12:00 UTC; move it with ``panel_clock.advance(...)``."""
    with clock.frozen(NOON):
        yield clock
    clock.reset()


@pytest.fixture
def roster(db, panel_clock):
    """One active contact per level (L1 5 min, L2 15, L3 30, Emergency 2, a vendor), in a dict by level."""
    now = clock.now()
    return {level: Contact.objects.create(level=level, name=name, email=email, response_minutes=minutes,
                                          phone="+1-555-0100", created_at=now, updated_at=now)
            for level, name, email, minutes in ROSTER}
