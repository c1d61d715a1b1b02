"""Log records as JSON lines (``DRPANEL_LOG_FORMAT=json``), each carrying the request id it belongs to.

The request id is the one ``RequestIdMiddleware`` gave the request (an incoming ``X-Request-ID``
when it is a sane token, else a new one); it is echoed in the response header and stored on the
request's audit events, so a line in the log, an answer a user reports and an audit event can be
matched. Records written outside a request (a worker, the scheduler, start-up) carry an empty id;
a worker's records carry the id of the job it runs instead, under ``job_id``.
"""

import logging

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from rq import get_current_job

from drpanel.context import current_request


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the current request's, or "") and ``job_id`` (the current RQ job's, or "")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request = current_request()
            record.request_id = getattr(request, "request_id", "") if request is not None else ""
        if not hasattr(record, "job_id"):
            job = get_current_job()
            record.job_id = job.id if job is not None else ""
        return True


# The fields of every JSON line, in order, under the names log shippers expect; "time" is UTC (RFC 3339).
JSON_FIELDS = ("levelname", "name", "message", "request_id", "job_id")
JSON_RENAME = {"levelname": "level", "name": "logger"}
# Extras are kept (``status_code``…), but not Django's ``request`` object: its text is only a repr.
JSON_OMIT = (*RESERVED_ATTRS, "request")


def json_formatter() -> JsonFormatter:
    """The ``json`` formatter of ``LOGGING`` (``DRPANEL_LOG_FORMAT=json``)."""
    return JsonFormatter(list(JSON_FIELDS), rename_fields=JSON_RENAME, reserved_attrs=JSON_OMIT, timestamp="time")

