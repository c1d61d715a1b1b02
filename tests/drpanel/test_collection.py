"""A run refuses a collection in which two tests share a node id: xdist runs one test of each id and counts it once,
so the others would be lost without a word (65 fuzz items once collapsed into one that way)."""

from types import SimpleNamespace

from tests.conftest import twice_collected


def test_node_ids_collected_more_than_once_are_named_and_distinct_ones_pass():
    items = [SimpleNamespace(nodeid=nodeid) for nodeid in ("a.py::t[1]", "a.py::t", "a.py::t", "b.py::u", "b.py::u")]

    assert twice_collected(items) == ["a.py::t", "b.py::u"]
    assert twice_collected(items[:2] + items[3:4]) == []
