"""Gunicorn's settings for the panel's web process, shared by the systemd unit and the container.

Threads, not more processes: most requests wait on PostgreSQL, and streamed audit exports hold a
thread for minutes (the reverse proxy's read timeout must allow that too). Gunicorn's own access
log stays off: the panel writes one line per request itself, with its request id and the URL
pattern rather than the path (a path may carry an acknowledgement link's token).
"""

import os

bind = os.environ.get("DRPANEL_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("DRPANEL_WEB_WORKERS", "2"))
worker_class = "gthread"
threads = 4
# Seconds a worker may stay silent before it is replaced; a gthread worker heartbeats while its
# threads serve long streams, so this does not cut exports short.
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = None
errorlog = "-"
# With DRPANEL_LOG_FORMAT=json gunicorn's own lines (boot, worker restarts, timeouts) are JSON too,
# so every line of the web process parses the same way.
if os.environ.get("DRPANEL_LOG_FORMAT") == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "drpanel.logformat.json_formatter"}},
        "filters": {"ids": {"()": "drpanel.logformat.RequestIdFilter"}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["ids"],
                              "stream": "ext://sys.stderr"}},
        "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["json"], "propagate": False},
                    "gunicorn.access": {"level": "INFO", "handlers": ["json"], "propagate": False}},
        "root": {"level": "INFO", "handlers": []},
    }
# X-Forwarded-Proto is trusted from the local proxy only (DRPANEL_BEHIND_TLS_PROXY decides for Django).
forwarded_allow_ips = "127.0.0.1,::1"
