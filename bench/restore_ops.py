"""Benchmark of the restore building blocks against the raw PostgreSQL tools, in the same run.

    .venv/bin/python bench/restore_ops.py [--scale 50] [--partitions N] [--repeat 5] [--swaps 10] [--skip-restores]

On a ``pgbench -i -s SCALE`` database (``--partitions N`` splits its big table so that
``-j2`` has work to share) dumped with ``pg_dump -Fc`` (a plaintext archive:
decryption arrives with the catalog), it measures:

1. the structure check, ``pg.list_archive`` vs raw ``pg_restore --list`` (goal ≤ 0.3 s);
2. restores: raw ``createdb`` + ``pg_restore -j2`` from the file, our side-database restore
   with ``-j2`` from the file (goal ≤ 1.15× raw), raw ``pg_restore -j1`` from stdin, and our
   streaming ``-j1`` restore (the fallback when the disk lacks room);
3. the swap, ``pg.swap_in``/``swap_back`` with sessions connected to the live database,
   vs a bare pair of ``ALTER DATABASE … RENAME`` in one transaction (goal ≤ 0.16 s).

Every database it makes is named ``drt_b<random>…`` and dropped at the end. It uses the
server of ``DATABASE_URL`` (or the panel's default). Figures go to stdout and, as JSON,
to ``bench-results/restore_ops-<scale>.json``.
"""

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.protocol import report  # noqa: E402 - after the path is set


def setup_django() -> None:
    from drpanel import runtime

    runtime.prepare()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drpanel.settings")
    import django

    django.setup()


def timed(func, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = func(*args, **kwargs)
    return time.perf_counter() - started, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


class Bench:
    @property
    def scale_label(self) -> str:
        scale, parts = getattr(self.args, "scale", None), getattr(self.args, "partitions", 0)
        if scale is None:
            return "small database"
        return f"pgbench -s {scale}" + (f", {parts} partitions" if parts else "")

    def __init__(self, args):
        from drpanel import runtime
        from restores import pg

        self.args = args
        self.pg = pg
        self.prefix = f"drt_b{secrets.token_hex(3)}"
        self.base_url = os.environ["DATABASE_URL"]
        self.url = lambda name: runtime.with_database_name(self.base_url, name)
        self.server = pg.server_version_num(self.url("postgres"))
        self.tool = pg.choose_pg_restore(server_version=self.server)
        self.bin = Path(self.tool.path).parent
        self.results: dict = {"scale": args.scale, "partitions": args.partitions, "pg_restore": self.tool.version,
                              "server": self.server}
        self.tmp = Path(tempfile.mkdtemp(prefix="drt-bench-"))

    # --- helpers ---------------------------------------------------------------------------

    def admin(self):
        import psycopg

        return psycopg.connect(self.url("postgres"), autocommit=True)

    def sql(self, statement: str) -> None:
        with self.admin() as conn:
            conn.execute(statement)

    def client_args(self, name: str) -> tuple[list[str], dict]:
        conninfo, env = self.pg.client_args(self.base_url, name)
        return [f"--dbname={conninfo}"], env

    def settle(self) -> None:
        """Write back what the previous measurement left dirty, so it does not slow down the next one."""
        self.sql("CHECKPOINT")
        os.sync()
        time.sleep(1)

    def run(self, cmd: list[str], env: dict | None = None, stdin=None) -> None:
        subprocess.run(cmd, check=True, env=env, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def cleanup(self) -> None:
        with self.admin() as conn:
            names = [r[0] for r in conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [self.prefix]).fetchall()]
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for path in self.tmp.glob("*"):
            path.unlink()
        self.tmp.rmdir()

    # --- steps -----------------------------------------------------------------------------

    def make_archive(self) -> Path:
        source = f"{self.prefix}_src"
        self.sql(f'CREATE DATABASE "{source}"')
        dbname, env = self.client_args(source)
        print(f"pgbench -i -s {self.args.scale} …", flush=True)
        conninfo = dbname[0].removeprefix("--dbname=")  # pgbench takes the connection as its argument
        partitions = [f"--partitions={self.args.partitions}"] if self.args.partitions else []
        seconds, _ = timed(self.run, [str(self.bin / "pgbench"), "-i", "-q", "-s", str(self.args.scale), *partitions,
                                      conninfo], env=env)
        archive = self.tmp / f"pgbench-{self.args.scale}.dump"
        dump_seconds, _ = timed(self.run, [str(self.bin / "pg_dump"), "-Fc", "-f", str(archive), *dbname], env=env)
        with self.admin() as conn:
            size = conn.execute("SELECT pg_database_size(%s)", [source]).fetchone()[0]
        self.sql(f'DROP DATABASE "{source}"')
        self.results["database_bytes"] = size
        self.results["archive_bytes"] = archive.stat().st_size
        print(f"  database {size / 1e6:.0f} MB (init {seconds:.1f} s), archive {archive.stat().st_size / 1e6:.1f} MB "
              f"(pg_dump {dump_seconds:.1f} s)")
        return archive

    def structure(self, archive: Path) -> None:
        ours, raw = [], []
        for _ in range(self.args.repeat):
            raw.append(timed(self.run, [self.tool.path, "--list", str(archive)])[0])
            ours.append(timed(self.pg.list_archive, archive)[0])
        self.results["structure"] = {"ours_median_s": median(ours), "raw_median_s": median(raw),
                                     "ours_max_s": max(ours), "ratio": median(ours) / median(raw)}
        verdict = "ok" if max(ours) <= 0.3 else "OVER GOAL"
        report("structure check (max) vs pg_restore --list", ours=max(ours), raw=median(raw), unit="s",
               goal="max <= 0.3 s", met=max(ours) <= 0.3, scale=self.scale_label,
               note=f"{self.args.repeat} runs; ours median {median(ours) * 1000:.1f} ms")
        print(f"structure check: ours {median(ours) * 1000:.1f} ms (max {max(ours) * 1000:.1f}), raw pg_restore --list "
              f"{median(raw) * 1000:.1f} ms → {median(ours) / median(raw):.2f}× raw; goal ≤ 300 ms: {verdict}")

    def restores(self, archive: Path) -> None:
        data_size = archive.stat().st_size

        def raw(jobs: int, from_stdin: bool) -> float:
            name = f"{self.prefix}_raw{jobs}{'s' if from_stdin else 'f'}"
            dbname, env = self.client_args(name)
            started = time.perf_counter()
            self.sql(f'CREATE DATABASE "{name}" TEMPLATE template0')
            cmd = [self.tool.path, "--no-owner", "--exit-on-error", f"--jobs={jobs}", *dbname]
            if from_stdin:
                with open(archive, "rb") as handle:
                    self.run(cmd, env=env, stdin=handle)
            else:
                self.run([*cmd, str(archive)], env=env)
            seconds = time.perf_counter() - started
            self.sql(f'DROP DATABASE "{name}" WITH (FORCE)')
            return seconds

        def ours(stream: bool) -> float:
            target = self.url(f"{self.prefix}_tgt")
            run = uuid.uuid4()
            if stream:
                handle = open(archive, "rb")  # noqa: SIM115 - closed below
                source = iter(lambda: handle.read(1024 * 1024), b"")
            else:
                handle, source = None, archive
            try:
                seconds, result = timed(self.pg.restore_to_side_database, target, run, source, jobs=2,
                                        bytes_total=data_size)
            finally:
                if handle:
                    handle.close()
            assert result.jobs == (1 if stream else 2)
            self.pg.drop_copy(target, run, "restore")
            return seconds

        rounds = self.args.rounds
        print(f"restores ({rounds} interleaved round(s), medians; each into a fresh database, CREATE DATABASE "
              "included) …", flush=True)
        samples: dict[str, list[float]] = {"raw_file_j2_s": [], "ours_file_j2_s": [], "raw_stdin_j1_s": [],
                                           "ours_stream_j1_s": []}
        for n in range(rounds):
            # Alternate who goes first, so a burst of load elsewhere does not always hit the same one.
            order = [("raw_file_j2_s", lambda: raw(2, False)), ("ours_file_j2_s", lambda: ours(False)),
                     ("raw_stdin_j1_s", lambda: raw(1, True)), ("ours_stream_j1_s", lambda: ours(True))]
            if n % 2:
                order = [order[1], order[0], order[3], order[2]]
            for key, measure in order:
                self.settle()
                samples[key].append(measure())
        figures = {key: median(values) for key, values in samples.items()}
        figures["samples"] = samples
        base = figures["raw_file_j2_s"]
        figures["ours_file_j2_ratio"] = figures["ours_file_j2_s"] / base
        figures["raw_stdin_j1_ratio"] = figures["raw_stdin_j1_s"] / base
        figures["ours_stream_j1_ratio"] = figures["ours_stream_j1_s"] / base
        self.results["restore"] = figures
        verdict = "ok" if figures["ours_file_j2_ratio"] <= 1.15 else "OVER GOAL"
        report("side-database restore -j2 vs pg_restore -j2", ours=figures["ours_file_j2_s"], raw=base, unit="s",
               goal="ratio <= 1.15", met=figures["ours_file_j2_ratio"] <= 1.15, scale=self.scale_label,
               note=f"median of {rounds} interleaved rounds, CREATE DATABASE included")
        report("streaming restore -j1 vs pg_restore -j1 (stdin)", ours=figures["ours_stream_j1_s"],
               raw=figures["raw_stdin_j1_s"], unit="s", goal="no goal (fallback when the disk lacks room)",
               met=None, scale=self.scale_label)
        print(f"  raw pg_restore -j2 (file)   {base:7.2f} s  1.00×")
        print(f"  ours -j2 (file)             {figures['ours_file_j2_s']:7.2f} s  "
              f"{figures['ours_file_j2_ratio']:.2f}×  goal ≤ 1.15×: {verdict}")
        print(f"  raw pg_restore -j1 (stdin)  {figures['raw_stdin_j1_s']:7.2f} s  {figures['raw_stdin_j1_ratio']:.2f}×")
        print(f"  ours -j1 (stream)           {figures['ours_stream_j1_s']:7.2f} s  "
              f"{figures['ours_stream_j1_ratio']:.2f}×")

    def swaps(self) -> None:
        import psycopg

        live = f"{self.prefix}_live"
        url = self.url(live)
        self.sql(f'CREATE DATABASE "{live}"')
        swap_in, swap_back, raw = [], [], []
        for n in range(self.args.swaps):
            run = uuid.uuid4()
            self.sql(f'CREATE DATABASE "{self.pg.copy_name(live, run, "restore")}"')
            # Clients the swap must disconnect: idle ones, and one in the middle of a long query.
            clients = [psycopg.connect(url, autocommit=True) for _ in range(self.args.clients)]
            busy = threading.Thread(target=_sleep_until_terminated, args=(clients[0],), daemon=True)
            busy.start()
            time.sleep(0.05)
            result = self.pg.swap_in(url, run)
            assert result.sessions_terminated == len(clients), result
            swap_in.append(result.duration_s)
            busy.join()
            for client in clients:
                client.close()
            swap_back.append(self.pg.swap_back(url, run).duration_s)
            self.pg.drop_copy(url, run, "failed")
            # The raw tool: the same two renames in one transaction, nobody connected, nothing else.
            a, b = f"{self.prefix}_ra{n}", f"{self.prefix}_rb{n}"
            self.sql(f'CREATE DATABASE "{a}"')
            self.sql(f'CREATE DATABASE "{b}"')
            with self.admin() as conn:
                started = time.perf_counter()
                with conn.transaction():
                    conn.execute(f'ALTER DATABASE "{a}" RENAME TO "{a}_old"')
                    conn.execute(f'ALTER DATABASE "{b}" RENAME TO "{a}"')
                raw.append(time.perf_counter() - started)
                conn.execute(f'DROP DATABASE "{a}"')
                conn.execute(f'DROP DATABASE "{a}_old"')
        self.results["swap"] = {"swap_in_median_s": median(swap_in), "swap_in_p95_s": p95(swap_in),
                                "swap_back_median_s": median(swap_back), "raw_rename_median_s": median(raw),
                                "runs": len(swap_in), "clients": self.args.clients}
        verdict = "ok" if p95(swap_in) <= 0.16 else "OVER GOAL"
        report(f"swap (p95, {self.args.clients} sessions connected) vs bare double rename", ours=p95(swap_in),
               raw=median(raw), unit="s", goal="p95 <= 0.16 s", met=p95(swap_in) <= 0.16, scale=self.scale_label,
               note=f"{len(swap_in)} swaps; swap_back median {median(swap_back) * 1000:.1f} ms")
        print(f"swap ({len(swap_in)} runs, {self.args.clients} clients connected, one in a query): "
              f"swap_in median {median(swap_in) * 1000:.1f} ms, p95 {p95(swap_in) * 1000:.1f} ms; "
              f"swap_back median {median(swap_back) * 1000:.1f} ms; "
              f"raw double rename {median(raw) * 1000:.1f} ms; goal ≤ 160 ms: {verdict}")


def _sleep_until_terminated(conn) -> None:
    import psycopg

    with contextlib.suppress(psycopg.Error):
        conn.execute("SELECT pg_sleep(60)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale (50 ≈ 750 MB)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the structure check")
    parser.add_argument("--swaps", type=int, default=10, help="runs of the swap")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the four restores")
    parser.add_argument("--clients", type=int, default=4, help="sessions connected to the live database")
    parser.add_argument("--partitions", type=int, default=0,
                        help="split pgbench_accounts into N partitions (gives pg_restore -j something to share)")
    parser.add_argument("--skip-restores", action="store_true", help="only the structure check and the swap")
    args = parser.parse_args()
    setup_django()
    bench = Bench(args)
    print(f"PostgreSQL {bench.server}, pg_restore {bench.tool.version} ({bench.tool.path}), "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    try:
        archive = bench.make_archive()
        bench.structure(archive)
        if not args.skip_restores:
            bench.restores(archive)
        bench.swaps()
    finally:
        bench.cleanup()
    bench.results["load_average_end"] = os.getloadavg()[0]
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    suffix = f"-p{args.partitions}" if args.partitions else ""
    (out / f"restore_ops-{args.scale}{suffix}.json").write_text(json.dumps(bench.results, indent=2))


if __name__ == "__main__":
    main()
