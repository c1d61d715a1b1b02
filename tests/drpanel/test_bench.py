"""``make bench``'s plumbing: the one-line protocol, the runner's table, every script at every scale."""

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench import installation, protocol, run, stats

ROOT = Path(__file__).resolve().parents[2]


def test_a_figure_round_trips_through_the_protocol(capsys):
    sent = protocol.report("full backup vs pg_dump -Fc", ours=3.3, raw=3.0, unit="s", goal="ratio ≤ 1.05",
                           met=False, scale="pgbench -s 50")
    printed = capsys.readouterr().out
    assert printed.startswith("BENCH {")
    (received,) = protocol.parse("machine: 2 cores\n" + printed + "done\n")
    assert received == sent
    assert received["ratio"] == pytest.approx(1.1) and received["met"] is False


def test_lines_outside_the_protocol_are_ignored():
    assert protocol.parse("BENCH not json\nbenchmark BENCH {}\nresults: fine\n") == []


def test_a_figure_without_a_raw_counterpart_has_no_ratio(capsys):
    line = protocol.report("x", ours=float("nan"), raw=None, unit="s", goal="", met=None, scale="")
    assert line["ours"] is None and line["raw"] is None and line["ratio"] is None


def test_the_table_shows_missed_goals_and_scripts_that_did_not_report():
    text = run.table([
        {"name": "list", "ours": 27.7, "raw": 29.7, "unit": "ms", "ratio": 0.93, "goal": "ratio ≤ 1.5", "met": True,
         "scale": "100,000"},
        {"name": "backup", "ours": 3.6, "raw": 3.2, "unit": "s", "ratio": 1.12, "goal": "ratio ≤ 1.05", "met": False,
         "scale": "s50"},
        {"name": "restore_ops (not reported)", "ours": None, "raw": None, "ratio": None, "goal": "", "met": None,
         "scale": ""},
    ])
    rows = text.splitlines()
    assert rows[0] == "| benchmark | ours | raw tool | ratio | goal | met | scale |"
    assert rows[2] == "| list | 27.7 ms | 29.7 ms | 0.93× | ratio ≤ 1.5 | yes | 100,000 |"
    assert "| 1.12× | ratio ≤ 1.05 | **no** |" in rows[3]
    assert rows[4].startswith("| restore_ops (not reported) | — | — | — |")


@pytest.mark.parametrize("scale", run.SCALES)
def test_every_benchmark_runs_an_existing_script_at_every_scale(scale):
    names = []
    for name, argv in run.benchmarks(scale, "drpanel_bench", "postgresql://postgres@127.0.0.1:5432/x"):
        names.append(name)
        assert (ROOT / argv[1]).is_file(), argv
    assert names == ["backup", "audit", "restore_ops", "restore", "jobs", "continuous"]


# --- the statistics every figure goes through (bench/stats.py) --------------------------------

def test_a_short_operation_is_repeated_until_the_calls_last_a_second():
    clock = iter(n * 0.3 for n in range(100))  # each call "takes" 0.3 s on this clock
    calls = []
    per_call, count = stats.timed(lambda: calls.append(1), min_seconds=1.0, clock=lambda: next(clock))
    assert count == 4 == len(calls)  # 0.9 s after three calls is not yet a second
    assert per_call == pytest.approx(0.3)


def test_an_operation_longer_than_a_second_is_timed_once():
    clock = iter([0.0, 2.5])
    assert stats.timed(lambda: None, clock=lambda: next(clock)) == (2.5, 1)


def test_interleaved_runs_alternate_the_order_of_the_operations():
    order = []
    samples = stats.interleaved({"raw": lambda: order.append("raw") or 1.0,
                                 "ours": lambda: order.append("ours") or 2.0}, runs=3)
    assert order == ["raw", "ours", "ours", "raw", "raw", "ours"]
    assert samples == {"raw": [1.0, 1.0, 1.0], "ours": [2.0, 2.0, 2.0]}


def test_a_figure_is_the_median_with_its_spread():
    s = stats.summary([1.10, 1.00, 1.30])
    assert (s.median, s.low, s.high, s.runs) == (1.10, 1.00, 1.30, 3)
    assert s.spread == pytest.approx(0.30 / 1.10)
    assert s.text("×") == "median 1.1× over 3 runs (min 1×, max 1.3×, spread 27%)"
    assert stats.ratios([2.2, 3.3, 4.0], [2.0, 3.0, 4.0]).median == pytest.approx(1.1)
    with pytest.raises(ValueError):
        stats.summary([])


def test_other_processes_cpu_is_counted_and_flags_the_figure():
    before = {(10, 1.0): 5.0, (11, 2.0): 1.0}
    after = {(10, 1.0): 6.0, (12, 3.0): 0.5}  # 11 ended; 12 started meanwhile
    assert stats.others_cores(before, after, seconds=5.0) == pytest.approx(0.3)
    busy = stats.Conditions(load_before=3.2, load_after=3.9, others_cores=0.3)
    quiet = stats.Conditions(load_before=0.1, load_after=0.2, others_cores=0.01)
    assert busy.busy and busy.text().startswith("TAKEN BESIDE OTHER WORK")
    assert not quiet.busy and "0.01 cores" in quiet.text()


def test_a_process_of_this_tree_is_not_other_work():
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with stats.Conditions() as around:
            time.sleep(0.5)
        assert (child.pid, psutil.Process(child.pid).create_time()) not in stats.others_cpu()
    finally:
        child.kill()
        child.wait()
    assert around.seconds >= 0.5


def test_the_figures_table_says_which_were_taken_beside_other_work():
    text = run.conditions_table([
        {"name": "backup", "runs": 3, "low": 1.01, "high": 1.04, "spread": 0.03,
         "conditions": {"load_before": 0.2, "load_after": 0.4, "others_cores": 0.05, "busy": False}},
        {"name": "audit", "runs": 3, "low": 9e4, "high": 1.1e5, "spread": 0.2,
         "conditions": {"load_before": 4.0, "load_after": 6.5, "others_cores": 1.2, "busy": True}},
    ])
    rows = text.splitlines()
    assert rows[2] == "| backup | 3 | 1.01 – 1.04 | 3% | 0.20 → 0.40 | no, 0.05 cores |"
    assert rows[3] == "| audit | 3 | 90,000 – 110,000 | 20% | 4.00 → 6.50 | **yes**, 1.20 cores |"


# --- an interrupted run's leftovers (bench/installation.py) -----------------------------------

def test_only_this_benchmarks_leftovers_are_cleared(redis_conn):
    from rq import Queue

    from drpanel import queues
    from drpanel.jobs import ping

    ours = Queue(queues.queue_name("default"), connection=redis_conn)
    waiting = ours.enqueue(ping, "left by an interrupted run")
    failed = ours.enqueue(ping, "failed")
    ours.failed_job_registry.add(failed, ttl=600)
    theirs = Queue("drp-someone-else:default", connection=redis_conn)
    kept = theirs.enqueue(ping, "another installation's")
    # An orphaned worker of this installation, and a process of another one.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "rqworker",
                               queues.queue_name("default")])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "rqworker",
                              "drp-someone-else:default"])
    try:
        cleared = installation.clear_leftovers()
        orphan.wait(10)  # it would sleep for a minute: gone now means killed (and reaped by the clearing)
        assert other.poll() is None
    finally:
        for proc in (orphan, other):
            proc.kill()
            proc.wait()
    assert cleared == {"jobs": 2, "workers": 1}
    assert ours.count == 0 and ours.failed_job_registry.count == 0
    assert not redis_conn.exists(waiting.key) and not redis_conn.exists(failed.key)
    assert theirs.job_ids == [kept.id] and redis_conn.exists(kept.key)


def test_a_wait_past_its_deadline_names_what_it_waited_for():
    with pytest.raises(SystemExit, match="gave up after 0 s waiting for the backup run 7 to finish\nlast log line"):
        installation.wait_until(lambda: False, 0.05, "the backup run 7 to finish", interval=0.01,
                                detail=lambda: "last log line")


def test_the_scaling_rows_call_existing_scripts_with_options_they_take():
    rows = run.scaling("drpanel_bench", "postgresql://postgres@127.0.0.1:5432/x")
    assert len(rows) == 2 * len(run.SCALING_DATABASE_MB) + len(run.SCALING_ARTIFACTS) + len(run.SCALING_EVENTS) + len(
        run.SCALING_SYSTEMS)
    helps = {}
    for name, argv in rows:
        script = argv[1]
        assert (ROOT / script).is_file(), name
        if script not in helps:
            helps[script] = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                                           text=True, timeout=60, check=True).stdout
        for option in (arg for arg in argv[2:] if arg.startswith("--")):
            assert option in helps[script], f"{name}: {script} has no {option}"


def test_each_part_of_the_full_scale_can_run_alone():
    main = [name for name, _argv in run.benchmarks("full", "drpanel_bench", "postgresql://postgres@127.0.0.1:5432/x")]
    rows = main + [name for name, _argv in run.scaling("drpanel_bench", "postgresql://postgres@127.0.0.1:5432/x")]
    chosen = {part: [name for name in rows if run.selected(name, [part])]
              for part in ("backup", "restore", "list", "audit", "dashboard", "scaling", "jobs")}
    assert chosen["audit"] == ["audit", "audit at 100,000 events", "audit at 1,000,000 events",
                               "audit at 10,000,000 events"]
    assert chosen["list"] == ["artifact list at 10,000", "artifact list at 100,000", "artifact list at 1,000,000"]
    assert chosen["dashboard"] == [f"dashboard with {n} systems" for n in (1, 10, 100)]
    assert chosen["backup"] == ["backup"] + [f"backup at {mb} MB" for mb in run.SCALING_DATABASE_MB]
    assert chosen["restore"] == ["restore"] + [f"verified restore at {mb} MB" for mb in run.SCALING_DATABASE_MB]
    assert chosen["jobs"] == ["jobs"]
    assert chosen["scaling"] == rows[len(main):] and "audit" not in chosen["scaling"]
    assert all(run.selected(name, []) for name in rows)


def test_the_dashboard_rows_hold_the_same_number_of_artifacts_spread_over_their_systems():
    rows = {name: argv for name, argv in run.scaling("drpanel_bench", "postgresql://postgres@127.0.0.1:5432/x")
            if name.startswith("dashboard")}
    for argv in rows.values():
        assert argv[argv.index("--artifacts") + 1] == str(run.SCALING_DASHBOARD_ARTIFACTS)
