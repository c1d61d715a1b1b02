"""``manage.py worker [QUEUE ...]``: an RQ worker on this installation's queues, named by their logical names.

The queues in Redis carry the installation id (``drp-<id>:restore``, ``drpanel.queues``);
this command spares scripts and units from spelling it: ``manage.py worker`` takes every
queue of the installation, ``manage.py worker restore verify`` only those. Every option of
``manage.py rqworker`` (``--burst``, ``--name``, ``--with-scheduler``…) works the same.
"""

from django.core.management.base import CommandError
from django_rq.management.commands.rqworker import Command as RQWorkerCommand

from drpanel import queues


class Command(RQWorkerCommand):
    help = "Run an RQ worker on this installation's queues: all of them, or the logical names given."

    def handle(self, *args, **options):
        try:
            names = queues.queue_names(list(args) or None)
        except KeyError as exc:
            raise CommandError(exc.args[0]) from None
        return super().handle(*names, **options)
