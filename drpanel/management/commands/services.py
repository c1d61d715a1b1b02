"""``manage.py services status|up|check``: where PostgreSQL and Redis are, and whether jobs run."""

import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from drpanel import queues, runtime
from drpanel.jobs import ping


class Command(BaseCommand):
    help = "status: show the services in use; up: hold embedded services until Ctrl-C; check: run a job."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["status", "up", "check"])
        parser.add_argument("--timeout", type=float, default=30.0, help="check: seconds to wait for a worker")

    def handle(self, *args, action, timeout, **options):
        getattr(self, f"do_{action}")(timeout=timeout)

    def do_status(self, **_):
        state = runtime.read_state()
        db = settings.DATABASES["default"]
        where = db["HOST"] or "local socket"
        self.stdout.write(f"database: {db['NAME']} at {where}" + (" (embedded)" if "postgres" in state else ""))
        redis_where = settings.REDIS_URL.split("@")[-1]
        self.stdout.write(f"redis: {redis_where}" + (" (embedded)" if "redis" in state else ""))
        self.stdout.write(f"installation: {settings.INSTALLATION_ID} (queues {settings.RQ_QUEUE_PREFIX}*)")

    def do_up(self, **_):
        """Keep this process alive as the owner of the embedded services."""
        self.do_status()
        self.stdout.write("services are up; Ctrl-C stops them", ending="\n")
        self.stdout.flush()
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        try:
            while not stop:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        runtime.stop_owned()
        self.stdout.write("services stopped")

    def do_check(self, *, timeout, **_):
        queue = queues.get_queue("default")
        job = queue.enqueue(ping, "round-trip")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = job.get_status(refresh=True)
            if status == "finished":
                result = job.return_value()
                self.stdout.write(f"job round-trip ok: worker pid {result['worker_pid']}, "
                                  f"database {result['database']}")
                return
            if status in ("failed", "stopped", "canceled"):
                raise CommandError(f"the ping job {status}")
            time.sleep(0.1)
        raise CommandError(f"no worker ran the ping job within {timeout:.0f} s")
