"""``manage.py worker [QUEUE ...] [--pool NAME]``: an RQ worker on this installation's queues, by logical names.

The queues in Redis carry the installation id (``drp-<id>:restore``, ``drpanel.queues``);
this command spares scripts and units from spelling it: ``manage.py worker`` takes every
queue of the installation, ``manage.py worker restore verify`` only those. Every option of
``manage.py rqworker`` (``--burst``, ``--name``, ``--with-scheduler``…) works the same.

``--pool NAME`` makes it a worker of the pool ``NAME`` (docs/many-hosts.md): it takes the
pool's queues first, then the shared ones. The systemd unit passes its instance name
(``drpanel-worker@b`` → ``--pool b``); ``default`` (``drpanel-worker@default``) serves no
pool, and a ``.N`` suffix (``drpanel-worker@b.2``) runs a second worker of the same pool.
"""

from django.conf import settings
from django.core.management.base import CommandError
from django_rq.management.commands.rqworker import Command as RQWorkerCommand

from drpanel import queues


def pool_of_instance(value: str) -> str:
    """The pool named by ``--pool`` (a systemd instance name): "" for ``default``, the part before ``.N``."""
    pool, _, number = value.partition(".")
    if number and not number.isdigit():
        raise CommandError(f"--pool {value!r}: write NAME or NAME.N (N a number), e.g. b or b.2")
    if pool == queues.NO_POOL:
        return ""
    if reason := queues.pool_error(pool):
        raise CommandError(f"--pool: {reason}")
    return pool


class Command(RQWorkerCommand):
    help = ("Run an RQ worker on this installation's queues: all of them, or the logical names given; with --pool, "
            "the pool's queues too.")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--pool", default="", help="The worker pool this worker serves (its jobs first, then the "
                                                       "shared queues); 'default' or empty: no pool.")

    def handle(self, *args, **options):
        pool = pool_of_instance(options.pop("pool") or queues.NO_POOL)
        try:
            names = queues.queue_names(list(args) or None, pool=pool)
        except KeyError as exc:
            raise CommandError(exc.args[0]) from None
        if pool:
            # django-rq builds a worker's queues from RQ_QUEUES only: this process also knows its pool's.
            settings.RQ_QUEUES.update(queues.pool_queue_settings(pool))
        return super().handle(*names, **options)
