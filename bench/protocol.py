"""The benchmarks' one-line protocol, read by ``bench/run.py`` (``make bench``).

A benchmark script prints, besides whatever it wants people to read, one line per measured
figure::

    BENCH {"name": "...", "ours": 3.38, "raw": 3.54, "unit": "s", "ratio": 0.95,
           "goal": "ratio <= 1.05", "met": true, "scale": "pgbench -s 50", "note": "..."}

Optional keys: ``runs``, ``low``, ``high``, ``spread`` (of the figure the goal is about, over
interleaved runs) and ``conditions`` (load average before/after, other work beside it).
``ours``/``raw`` are the panel's figure and the raw tool's in the same run (``raw`` may be null
when there is no raw counterpart), ``ratio`` is ours/raw for times (raw/ours for throughputs,
as the goal says), ``goal`` is the target in words and ``met`` whether this run reached it.
A script that prints no such line is reported as "not reported" by the runner.
"""

import json
import math

PREFIX = "BENCH "


def report(name: str, *, ours: float, raw: float | None, unit: str, goal: str, met: bool | None,
           scale: str, ratio: float | None = None, note: str = "", spread=None, conditions=None) -> dict:
    """Print one protocol line (and return it as a dict).

    ``spread`` (a ``bench.stats.Summary`` of the figure the goal is about: the ratio, or ``ours``)
    adds ``runs``, ``low``, ``high``; ``conditions`` (``bench.stats.Conditions``) the load
    average before and after and whether other work ran beside the measurement.
    """
    if ratio is None and raw:
        ratio = ours / raw
    line = {"name": name, "ours": _num(ours), "raw": _num(raw), "unit": unit, "ratio": _num(ratio),
            "goal": goal, "met": met, "scale": scale, "note": note}
    if spread is not None:
        line.update(runs=spread.runs, low=_num(spread.low), high=_num(spread.high), spread=_num(spread.spread))
    if conditions is not None:
        line["conditions"] = conditions.as_dict()
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
