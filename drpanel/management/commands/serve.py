"""``manage.py serve``: the whole panel in one terminal — web, RQ workers and the cron scheduler.

Used by ``make demo``. It migrates, optionally seeds the demo, starts every process as a
child, restarts a worker or the scheduler that dies, and on Ctrl-C (or SIGTERM) stops them
all, then the embedded services this process owns.

With ``--demo`` the protected demo database gets its own PostgreSQL first (``backups.demo_server``:
continuous protection through Barman, never the panel's server), and a writer places an order every
few seconds; both stop with the panel.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from backups import demo_server
from backups.demo import start_demo_s3, stop_protected_server
from drpanel import queues
from drpanel.installation import InstallationConflict

BIN = Path(sys.executable).parent


class Command(BaseCommand):
    help = "Run the web server, RQ workers and the cron scheduler until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--demo", action="store_true", help="seed the demo data first")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--workers", type=int, default=int(os.environ.get("DRPANEL_WORKERS", 2)))

    def handle(self, *args, demo, port, host, workers, **options):
        # The database first: a panel that cannot use its database stops on that error and claims no Redis database.
        call_command("migrate", interactive=False, verbosity=0)
        try:
            queues.claim_installation()
        except InstallationConflict as exc:
            raise CommandError(str(exc)) from None
        if settings.PRODUCTION:
            call_command("collectstatic", interactive=False, verbosity=0)
        early = {}
        if demo:
            try:
                protected = demo_server.start()
            except demo_server.DemoServerError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"The demo's protected PostgreSQL runs on 127.0.0.1:{protected.port} "
                              f"(data in {demo_server.root_dir() / 'data'})")
            # The demo's off-site location needs an S3 endpoint before the seed runs: moto's server.
            started = start_demo_s3()
            if started:
                early["s3"] = started
            try:
                call_command("demo")
            except BaseException:
                for _, proc in early.values():
                    proc.kill()
                stop_protected_server()
                raise
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        specs = {"web": [str(BIN / "gunicorn"), "drpanel.wsgi:application", "--bind", f"{host}:{port}",
                         "--workers", "2", "--threads", "4", "--timeout", "120", "--access-logfile", "-"],
                 "cron": [*manage, "rqcron", "drpanel.cron"]}
        for n in range(workers):
            specs[f"worker-{n + 1}"] = [*manage, "rqworker", *queues.queue_names()]
        if demo:
            specs["demo-writer"] = [*manage, "demo_writer", "--every", "5"]
        children: dict[str, subprocess.Popen] = {}
        stopping = []

        def stop(*_):
            stopping.append(1)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for name, (cmd, proc) in early.items():
            specs[name] = cmd
            children[name] = proc
        for name, cmd in specs.items():
            if name not in children:
                children[name] = subprocess.Popen(cmd)
        self.stdout.write(self.style.SUCCESS(f"DR Panel on http://{host}:{port}/ — Ctrl-C stops everything"))
        self.stdout.flush()
        restarts: dict[str, list[float]] = {}
        try:
            while not stopping:
                time.sleep(0.5)
                for name, proc in list(children.items()):
                    if proc.poll() is None:
                        continue
                    if name == "web":
                        self.stderr.write(f"the web server exited ({proc.returncode}); stopping")
                        stopping.append(1)
                        break
                    recent = [t for t in restarts.get(name, []) if time.monotonic() - t < 60] + [time.monotonic()]
                    restarts[name] = recent
                    if len(recent) > 5:
                        self.stderr.write(f"{name} keeps exiting ({proc.returncode}); stopping")
                        stopping.append(1)
                        break
                    self.stderr.write(f"{name} exited ({proc.returncode}); restarting it")
                    children[name] = subprocess.Popen(specs[name])
        finally:
            for proc in children.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            for proc in children.values():
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
            if demo:
                stop_protected_server()
                self.stdout.write("the demo's PostgreSQL stopped")
            self.stdout.write("all panel processes stopped")
