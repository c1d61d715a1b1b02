"""Which installation of the panel this process belongs to, so panels sharing a Redis never take each other's jobs.

Every RQ queue name carries the installation id: the logical queue ``restore`` is
``drp-<id>:restore`` in Redis. The id is ``DRPANEL_INSTALLATION_ID`` when set; otherwise it
is derived from the identity of the panel's database (host, port and name of
``DATABASE_URL``), which is stable for one installation and differs between two panels
that do not share a database. It is derived, not stored in the database, because the queue
names are needed by settings, before any database connection.

Two panels could still pick the same id (the same ``DRPANEL_INSTALLATION_ID`` by copy and
paste). So each process that starts a worker, the scheduler or the web server first
**claims** the id in the Redis hash ``drp:installations`` (id → database identity) and
refuses to start when the id is already held for another database.

Nothing here uses Django: ``drpanel/settings.py`` calls ``derive``/``validate`` while it is
being read, and ``claim`` takes plain values.
"""

import hashlib
import re

import redis

REGISTRY_KEY = "drp:installations"
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class InstallationConflict(Exception):
    """The Redis database already serves another installation under the same id; the message says what to do."""


def database_identity(host: str, port: str, name: str) -> str:
    """The database an installation keeps its rows in, as ``host:port/name`` (local socket: ``local``)."""
    return f"{host or 'local'}:{port or '5432'}/{name}"


def derive(identity: str) -> str:
    """The default installation id: a short digest of the database identity (stable, no secret in it)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def validate(value: str) -> str | None:
    """None when ``value`` may be an installation id, else the reason it may not."""
    if not ID_PATTERN.match(value):
        return (f"DRPANEL_INSTALLATION_ID={value!r} must be 1-40 characters of a-z, 0-9, '-' or '_', "
                "starting with a letter or digit")
    return None


def queue_prefix(installation_id: str) -> str:
    """The prefix of every queue name of the installation."""
    return f"drp-{installation_id}:"


def claim(connection: redis.Redis, installation_id: str, identity: str) -> None:
    """Record that ``installation_id`` serves ``identity`` in this Redis database, or refuse.

    Raises ``InstallationConflict`` when the id is already held for another database: its
    workers would take our jobs and we theirs. A later start with the same database (a
    restart, another worker host) finds its own claim and goes on.
    """
    connection.hsetnx(REGISTRY_KEY, installation_id, identity)
    holder = connection.hget(REGISTRY_KEY, installation_id)
    holder = holder.decode() if isinstance(holder, bytes) else holder
    if holder != identity:
        raise InstallationConflict(
            f"this Redis database already serves installation {installation_id!r} with the database {holder}, "
            f"not {identity}: two panels would take each other's jobs. Give this panel its own "
            "DRPANEL_INSTALLATION_ID (or its own Redis database); if the other panel is gone for good, "
            f"remove its entry: HDEL {REGISTRY_KEY} {installation_id}")
