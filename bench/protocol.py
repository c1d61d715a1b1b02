"""The benchmarks' one-line protocol, read by ``bench/run.py`` (``make bench``).

A benchmark script prints, besides whatever it wants people to read, one line per measured
figure::

    BENCH {"name": "...", "ours": 3.38, "raw": 3.54, "unit": "s", "ratio": 0.95,
           "goal": "ratio <= 1.05", "met": true, "scale": "pgbench -s 50", "note": "..."}

``ours``/``raw`` are the panel's figure and the raw tool's in the same run (``raw`` may be null
when there is no raw counterpart), ``ratio`` is ours/raw for times (raw/ours for throughputs,
as the goal says), ``goal`` is the target in words and ``met`` whether this run reached it.
A script that prints no such line is reported as "not reported" by the runner.
"""

import json
import math

PREFIX = "BENCH "


def report(name: str, *, ours: float, raw: float | None, unit: str, goal: str, met: bool | None,
           scale: str, ratio: float | None = None, note: str = "") -> dict:
    """Print one protocol line (and return it as a dict)."""
    if ratio is None and raw:
        ratio = ours / raw
    line = {"name": name, "ours": _num(ours), "raw": _num(raw), "unit": unit, "ratio": _num(ratio),
            "goal": goal, "met": met, "scale": scale, "note": note}
    print(PREFIX + json.dumps(line, ensure_ascii=False), flush=True)
    return line


def parse(text: str) -> list[dict]:
    """The protocol lines in a script's output."""
    lines = []
    for raw in text.splitlines():
        if raw.startswith(PREFIX):
            try:
                lines.append(json.loads(raw[len(PREFIX):]))
            except json.JSONDecodeError:
                continue
    return lines


def _num(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), 6)
