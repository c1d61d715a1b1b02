"""Scrubbing secrets out of error text before it reaches a run, a page, a log, the API or the audit log.

Error messages of libpq, pg_dump, boto3 and friends can repeat what they were given: libpq
quotes the whole connection string in its parse errors (``postgresql://u:PASSWORD@h/db``,
``password=...``), a mistyped reference may resolve to a password used as a URL. ``scrub``
removes, from any text:

- the password of every URL (``scheme://user:***@host``) and of every conninfo ``password=``;
- every value this process resolved from a secret reference (``drpanel.secrets``), and any
  password inside such a value;
- the values of the panel's own secrets (``SECRET_KEY``, ``DATABASE_URL``, ``DRPANEL_KEYS``,
  ``AWS_SECRET_ACCESS_KEY``…) and of every variable a reference may name (``DRPANEL_SECRET_*`` by
  default), read from the environment when called — with the words and the password inside each.

Values shorter than ``MIN_SECRET_LENGTH`` are left alone (scrubbing "1" from every text would
destroy it and protect nothing). ``ScrubFilter`` applies the same to every log record.
"""

import functools
import logging
import os
import re

from django.conf import settings
from psycopg.conninfo import conninfo_to_dict

from drpanel import secrets

MASK = "***"
MIN_SECRET_LENGTH = 8
# Besides what a reference may name, the environment variables whose values are the panel's own secrets.
_ENV_SECRETS = (*secrets.PANEL_SECRET_NAMES, "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)(?P<pw>[^\s@'\"]*)(?P<at>@)")
_CONNINFO_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s'\"]+)",
                                re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def _with_parts(value: str) -> frozenset[str]:
    """A secret value, its words (libpq quotes one word of a malformed conninfo), and the password inside it."""
    # Only words that cannot be ordinary English (a digit or a sign in them): "password" stays readable.
    found = {value, *(w for w in re.split(r"[\s'\"=]+", value) if not w.isalpha())}
    for match in _URL_PASSWORD.finditer(value):
        found.add(match.group("pw"))
    if "=" in value or "://" in value:
        try:
            password = conninfo_to_dict(value).get("password")
        except Exception:  # noqa: BLE001 - any unparsable value is simply not a connection string
            password = None
        if password:
            found.add(password)
    return frozenset(found)


def known_secrets() -> tuple[str, ...]:
    """The secret values to remove, longest first (so a value containing another goes whole).

    Read afresh at each call (a secret resolved or an environment variable set a moment ago counts), but
    worked out again only when what it depends on changed: every log record is scrubbed.
    """
    return _known_secrets(secrets.resolved_values(), tuple(os.environ.items()),
                          tuple(settings.SECRET_ENV_PREFIXES))


@functools.lru_cache(maxsize=8)
def _known_secrets(resolved: frozenset[str], environ: tuple, prefixes: tuple) -> tuple[str, ...]:
    values: set[str] = set()
    for value in resolved:
        values |= _with_parts(value)
    for name, value in environ:
        if value and (name in _ENV_SECRETS or secrets.env_allowed(name)):
            values |= _with_parts(value.strip())
    return tuple(sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True))


def scrub(text) -> str:
    """``text`` (any object, made a string) with every password and known secret value replaced by ``***``."""
    if text is None:
        return ""
    text = str(text)
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}{m.group('at')}" if m.group("pw") else m.group(0),
                             text)
    text = _CONNINFO_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}", text)
    for value in known_secrets():
        if value in text:
            text = text.replace(value, MASK)
    return text


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs the formatted message (and drops its arguments) of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logged as it is
            return True
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            cleaned_exc = scrub(text)
            if cleaned_exc != text:
                record.exc_text, record.exc_info = cleaned_exc, None
        return True
