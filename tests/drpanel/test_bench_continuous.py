"""``bench/continuous.py``: its lag arithmetic, where it reads Barman's WAL position, its leftovers, and one whole run.

The whole run starts its own PostgreSQL server, a real Barman receiver, real ``pg_basebackup``,
``barman recover`` and ``pgbench``, at the smallest scale (one run of each, a few seconds of load).
"""

import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from bench import protected, protocol
from bench.continuous import lags, p95
from drpanel import runtime

ROOT = Path(__file__).resolve().parents[2]
MB16 = 16 * 1024 * 1024


# --- the lag of each sample -----------------------------------------------------------------------

def test_no_lag_while_barman_holds_everything_the_server_wrote():
    assert lags([(0.0, 100, 100), (0.1, 200, 250), (0.2, 300, 300)]) == [0.0, 0.0, 0.0]


def test_the_lag_is_the_time_since_the_server_was_last_within_what_barman_holds():
    samples = [(10.0, 100, 100), (10.1, 200, 100), (10.2, 300, 150), (10.3, 400, 300), (10.4, 500, 500)]
    assert lags(samples) == pytest.approx([0.0, 0.1, 0.2, 0.1, 0.0])
    # Behind even the first sample: at least the whole time sampled so far.
    assert lags([(5.0, 100, 50), (6.5, 200, 50)]) == pytest.approx([0.0, 1.5])
    assert p95([0.0] * 18 + [3.0] * 2) == 3.0 and p95([0.0] * 30 + [3.0]) == 0.0


# --- the WAL position Barman holds ------------------------------------------------------------------

def page(start: int, index: int, body: bytes = b"") -> bytes:
    header = struct.pack("<HHIQI", 0xD110, 0, 1, start + index * protected.PAGE_SIZE, 0).ljust(24, b"\0")
    return (header + body).ljust(protected.PAGE_SIZE, b"\0")


def test_barmans_position_is_past_its_complete_segments_and_inside_the_partial_one(tmp_path):
    (tmp_path / "wals" / "0000000100000000").mkdir(parents=True)
    (tmp_path / "streaming").mkdir()
    (tmp_path / "wals" / "0000000100000000" / "000000010000000000000001").write_bytes(b"")
    (tmp_path / "streaming" / "000000010000000000000002").write_bytes(b"")
    assert protected.written_lsn(tmp_path) == 3 * MB16

    start = 3 * MB16
    written = page(start, 0, b"x" * 100) + page(start, 1, b"y" * 8000) + page(start, 2, b"z" * 97)
    partial = tmp_path / "streaming" / "000000010000000000000003.partial"
    partial.write_bytes(written.ljust(MB16, b"\0"))  # pg_receivewal fills the file with zeros first
    # Page 2 holds a 24-byte header and 97 bytes: the WAL ends there, rounded up to 8 bytes.
    assert protected.written_lsn(tmp_path) == start + 2 * protected.PAGE_SIZE + 128

    # A page left from another position (a recycled file) is not written WAL.
    stale = written + page(start - MB16, 3, b"old")
    partial.write_bytes(stale.ljust(MB16, b"\0"))
    assert protected.written_lsn(tmp_path) == start + 2 * protected.PAGE_SIZE + 128
    partial.write_bytes(b"\0" * MB16)
    assert protected.written_lsn(tmp_path) == start


# --- an interrupted run's leftovers -------------------------------------------------------------------

def sleeper(directory: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(directory / "data")])


def test_only_this_benchmarks_leftover_servers_and_directories_are_cleared():
    base = Path(tempfile.gettempdir())
    orphan_dir = Path(tempfile.mkdtemp(prefix=f"{protected.LEFTOVER_PREFIX}tagx-", dir=base))
    current = Path(tempfile.mkdtemp(prefix=f"{protected.LEFTOVER_PREFIX}tagx-", dir=base))
    other_dir = Path(tempfile.mkdtemp(prefix=f"{protected.LEFTOVER_PREFIX}tagx_other-", dir=base))
    orphan, mine, other = sleeper(orphan_dir), sleeper(current), sleeper(other_dir)
    try:
        killed = protected.clear_leftovers("tagx", keep=current)
        orphan.wait(10)  # it would sleep for a minute: gone now means killed
        assert mine.poll() is None and other.poll() is None
    finally:
        for proc in (orphan, mine, other):
            proc.kill()
            proc.wait()
        for path in (current, other_dir, orphan_dir):
            subprocess.run(["rm", "-rf", str(path)], check=True)
    assert killed == 1


# --- one whole run, at the smallest scale -----------------------------------------------------------

@pytest.mark.slow
def test_the_continuous_benchmark_runs_end_to_end_and_reports_its_four_figures():
    panel_db = f"{os.environ.get('DRPANEL_TEST_DATABASE') or 'test_drpanel'}_bench_cont"[:60]
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    try:
        done = subprocess.run([sys.executable, "bench/continuous.py", "--scale", "1", "--runs", "1",
                               "--lag-seconds", "3", "--replay-seconds", "1", "--panel-db", panel_db],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        with psycopg.connect(runtime.with_database_name(os.environ["DATABASE_URL"], "postgres"),
                             autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{panel_db}" WITH (FORCE)')

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = {f["name"]: f for f in protocol.parse(done.stdout)}
    assert set(figures) == {"base backup through the panel vs pg_basebackup",
                            "base backup through the panel vs pg_basebackup --wal-method=stream",
                            "point-in-time restore through the panel vs barman recover",
                            "WAL receive lag p95 under pgbench -c 4"}
    for name in ("base backup through the panel vs pg_basebackup",
                 "base backup through the panel vs pg_basebackup --wal-method=stream",
                 "point-in-time restore through the panel vs barman recover"):
        figure = figures[name]
        assert figure["ours"] > 0 and figure["raw"] > 0 and figure["runs"] == 1
        assert figure["ratio"] == pytest.approx(figure["ours"] / figure["raw"], rel=1e-3)
        assert figure["met"] == (figure["ratio"] <= float(figure["goal"].split("≤")[1]))
        assert set(figure["conditions"]) == {"load_before", "load_after", "others_cores", "busy"}
    lag = figures["WAL receive lag p95 under pgbench -c 4"]
    assert lag["raw"] is None and 0 <= lag["ours"] < 60 and lag["met"] == (lag["ours"] <= 5)
    assert "tps" in lag["note"]
    # Nothing of it is left running or on disk.
    tag = panel_db.lower()
    assert not list(Path(tempfile.gettempdir()).glob(f"{protected.LEFTOVER_PREFIX}{tag}-*"))
    running = subprocess.run(["pgrep", "-f", f"{protected.LEFTOVER_PREFIX}{tag}-"], capture_output=True, text=True)
    assert running.stdout.strip() == ""
