"""How the benchmarks turn timings into figures that mean something on a shared machine.

- ``timed(op)``: one measured operation lasts at least ``MIN_SECONDS``, or is repeated until
  the total does; the figure is the total over the count (a 20 ms operation is timed 50 times).
- ``interleaved(ops, runs)``: each operation ``runs`` (≥ 3) times, in alternating order
  (A B, B A, A B…), so a drift of the machine's load touches both sides of a ratio alike.
- ``summary(samples)``: median and spread (min, max, and (max − min) / median) of the runs.
- ``Conditions``: the load average before and after, and the CPU other processes used
  meanwhile (``psutil``: everything but this process tree and the database and Redis servers
  it talks to); above ``BUSY_CORES`` the figure says it was taken beside other work.

Nothing here measures by itself; ``tests/drpanel/test_bench.py`` pins the arithmetic.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MIN_SECONDS = 1.0
MIN_RUNS = 3
# Other processes using more than this many cores on average: the figure is flagged.
BUSY_CORES = 0.25
# Servers a benchmark drives: their CPU is the benchmark's own work, not other work.
SERVER_NAMES = ("postgres", "postmaster", "redis-server")


def timed(op: Callable[[], object], *, min_seconds: float = MIN_SECONDS, max_count: int = 100_000,
          clock: Callable[[], float] = time.perf_counter) -> tuple[float, int]:
    """``(seconds per call, calls)``: ``op()`` called until the calls together last ``min_seconds``."""
    count, started = 0, clock()
    while True:
        op()
        count += 1
        total = clock() - started
        if total >= min_seconds or count >= max_count:
            return total / count, count


def interleaved(ops: dict[str, Callable[[], float]], runs: int = MIN_RUNS) -> dict[str, list[float]]:
    """Each op's samples over ``runs`` rounds, the order reversed every other round.

    An op returns its own figure (e.g. ``timed(...)[0]``), so setup left out of the timing stays out.
    """
    if runs < 1:
        raise ValueError("at least one run")
    names = list(ops)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for n in range(runs):
        for name in (names if n % 2 == 0 else names[::-1]):
            samples[name].append(ops[name]())
    return samples


@dataclass
class Summary:
    """Median and spread of one figure's runs."""

    median: float
    low: float
    high: float
    runs: int

    @property
    def spread(self) -> float:
        """(max − min) / median: 0.04 means the runs lie within 4 % of the median's size."""
        return (self.high - self.low) / self.median if self.median else 0.0

    def text(self, unit: str = "", digits: int = 3) -> str:
        return (f"median {self.median:.{digits}g}{unit} over {self.runs} runs "
                f"(min {self.low:.{digits}g}{unit}, max {self.high:.{digits}g}{unit}, spread {self.spread:.0%})")


def summary(samples: list[float]) -> Summary:
    if not samples:
        raise ValueError("no samples")
    return Summary(median=statistics.median(samples), low=min(samples), high=max(samples), runs=len(samples))


def ratios(ours: list[float], raw: list[float]) -> Summary:
    """The per-run ratios ours/raw (runs paired as they were interleaved), summarised."""
    return summary([o / r for o, r in zip(ours, raw, strict=True)])


def _own_tree() -> set[int]:
    import psutil

    me = psutil.Process()
    return {me.pid, *(child.pid for child in me.children(recursive=True))}


def others_cpu() -> dict[tuple[int, float], float]:
    """CPU seconds so far of every process that is not ours nor a server we drive, by (pid, start time)."""
    import psutil

    own = _own_tree()
    seen = {}
    for proc in psutil.process_iter(["pid", "name", "create_time", "cpu_times"]):
        info = proc.info
        if info["pid"] in own or not info["cpu_times"] or (info["name"] or "").startswith(SERVER_NAMES):
            continue
        seen[(info["pid"], info["create_time"])] = info["cpu_times"].user + info["cpu_times"].system
    return seen


def others_cores(before: dict, after: dict, seconds: float) -> float:
    """Cores other processes kept busy on average between two ``others_cpu()`` snapshots."""
    if seconds <= 0:
        return 0.0
    used = sum(cpu - before.get(key, 0.0) for key, cpu in after.items())
    return max(0.0, used) / seconds


@dataclass
class Conditions:
    """What else the machine did while a figure was taken (``with Conditions() as c: ...``)."""

    load_before: float = 0.0
    load_after: float = 0.0
    others_cores: float = 0.0
    seconds: float = 0.0
    _snapshot: dict = field(default_factory=dict, repr=False)
    _started: float = 0.0

    def start(self) -> Conditions:
        self.load_before = os.getloadavg()[0]
        self._snapshot = others_cpu()
        self._started = time.monotonic()
        return self

    def stop(self) -> Conditions:
        self.seconds = time.monotonic() - self._started
        self.others_cores = others_cores(self._snapshot, others_cpu(), self.seconds)
        self.load_after = os.getloadavg()[0]
        return self

    def __enter__(self) -> Conditions:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def busy(self) -> bool:
        return self.others_cores >= BUSY_CORES

    def text(self) -> str:
        said = (f"load average {self.load_before:.2f} before, {self.load_after:.2f} after; other processes used "
                f"{self.others_cores:.2f} cores")
        return f"TAKEN BESIDE OTHER WORK: {said}" if self.busy else said

    def as_dict(self) -> dict:
        return {"load_before": round(self.load_before, 2), "load_after": round(self.load_after, 2),
                "others_cores": round(self.others_cores, 2), "busy": self.busy}
