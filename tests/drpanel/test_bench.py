"""``make bench``'s plumbing: the one-line protocol, the runner's table, every script at every scale."""

from pathlib import Path

import pytest

from bench import protocol, run

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
    assert names == ["backup", "audit", "restore_ops", "restore", "jobs"]
