"""Strict, typed reading of the environment.

Every setting the panel takes from outside goes through these functions, once, in
``drpanel/settings.py``. A value that cannot be parsed raises ``ConfigError`` with a
one-line reason naming the variable; ``manage.py`` and the WSGI entry point print that
line and stop instead of showing a traceback.
"""

import os
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """A setting from the environment is missing or malformed."""


def env_str(name: str, default: str | None = None, *, choices: tuple[str, ...] | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None:
        return default
    value = value.strip()
    if choices is not None and value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of: {', '.join(choices)}")
    return value


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}={number} is below its minimum {minimum}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name}={number} is above its maximum {maximum}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_secret(name: str) -> str | None:
    """Read a secret from ``NAME`` or from the file named by ``NAME_FILE`` (not both)."""
    direct = os.environ.get(name)
    file_name = os.environ.get(f"{name}_FILE")
    if direct and file_name:
        raise ConfigError(f"set either {name} or {name}_FILE, not both")
    if file_name:
        path = Path(file_name)
        try:
            content = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={file_name!r} cannot be read: {exc.strerror}") from None
        if not content:
            raise ConfigError(f"{name}_FILE={file_name!r} is empty")
        return content
    return direct.strip() if direct else None


def database_settings(url: str, *, name_for_errors: str = "DATABASE_URL") -> dict:
    """Turn a libpq URL (``postgresql://user:pw@host:port/db?host=/socket``) into Django's form."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{name_for_errors} must start with postgresql:// (got {url.split(':', 1)[0]}://…)")
    try:
        params = conninfo_to_dict(url)
    except Exception:
        raise ConfigError(f"{name_for_errors} is not a valid libpq URL") from None
    name = params.pop("dbname", None)
    if not name:
        raise ConfigError(f"{name_for_errors} names no database (add /<name> to the URL)")
    settings = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": str(params.pop("port", "")),
        "OPTIONS": params,
    }
    return settings
