"""Secret references: how systems, targets and storage locations name a secret without holding it.

A reference is stored in the database; the secret never is. Two forms:

- ``env:NAME`` — the value of the environment variable ``NAME`` of the process that needs it
  (web or worker);
- ``file:/absolute/path`` — the content of that file (stripped), which must not be readable
  by group or others.

*Which* variables and files a reference may name is decided by the deployment, never by a row:
a variable must start with one of ``settings.SECRET_ENV_PREFIXES`` (``DRPANEL_SECRET_ENV_PREFIXES``,
default ``DRPANEL_SECRET_``), a file must lie (symbolic links resolved) under one of
``secret_dirs()`` (``DRPANEL_SECRET_DIRS``, none by default; in development also the demo's
``var/demo/secrets``). The panel's own secrets can never be named, even where a
prefix or a directory would match: ``is_panel_secret`` lists them (``SECRET_KEY``, ``DATABASE_URL``,
``REDIS_URL``, ``DRPANEL_KEYS``, ``AWS_*``, every ``*_FILE``…), and the files those ``*_FILE``
variables and ``var/`` itself hold.

``validate`` checks the form and the allowlist (forms and services call it when a row is
saved); ``resolve`` checks both again and reads the secret at the moment it is needed. Errors
name the reference, never the value. Every value resolved is remembered (in this process only)
so that ``drpanel.scrub`` can remove it from any error text.
"""

import os
import re
import stat
from pathlib import Path

from django.conf import settings

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

# The panel's own secrets and what configures them: never resolvable by a reference.
PANEL_SECRET_NAMES = frozenset({
    "SECRET_KEY", "DRPANEL_SECRET_KEY", "DATABASE_URL", "DRPANEL_MIGRATE_DATABASE_URL", "REDIS_URL", "DRPANEL_KEYS",
    "DRPANEL_ACTIVE_KEY_ID",
    "DRPANEL_LEGACY_PASSPHRASES", "DRPANEL_AUDIT_SIGNING_KEY", "DRPANEL_METRICS_TOKEN", "EMAIL_HOST_PASSWORD",
    "DRPANEL_DEMO_PASSWORD", "DRPANEL_VERIFY_DATABASE", "DRPANEL_PLAIN_SQL_ROLE_PASSWORD",
    "DRPANEL_SECRET_ENV_PREFIXES", "DRPANEL_SECRET_DIRS",
})
PANEL_SECRET_PREFIXES = ("AWS_", "DRPANEL_KMS_", "PG", "REDIS_", "DJANGO_")
PANEL_SECRET_SUFFIXES = ("_FILE",)

_resolved: set[str] = set()


class SecretReferenceError(Exception):
    """A reference is malformed, names what the deployment does not allow, or what it names is missing or unsafe."""


def is_panel_secret(name: str) -> bool:
    """Whether an environment variable is (or configures) one of the panel's own secrets."""
    upper = name.upper()
    return (upper in PANEL_SECRET_NAMES or upper.startswith(PANEL_SECRET_PREFIXES)
            or upper.endswith(PANEL_SECRET_SUFFIXES))


def env_allowed(name: str) -> bool:
    """Whether a reference may name this environment variable in this deployment."""
    return name.startswith(tuple(settings.SECRET_ENV_PREFIXES)) and not is_panel_secret(name)


def panel_secret_files() -> set[Path]:
    """The files holding the panel's own secrets: those its ``*_FILE`` variables name, and everything in ``var/``."""
    files = set()
    for name, value in os.environ.items():
        if name.endswith("_FILE") and value.strip():
            files.add(Path(value.strip()).resolve())
    var = Path(settings.VAR_DIR)
    if var.is_dir():
        files.update(p.resolve() for p in var.iterdir() if p.is_file())
    return files


def secret_dirs() -> list[Path]:
    """The directories file references may name: ``DRPANEL_SECRET_DIRS``, and in development the demo's own."""
    dirs = [Path(d) for d in settings.SECRET_DIRS]
    if not settings.PRODUCTION:
        dirs.append(Path(settings.VAR_DIR) / "demo" / "secrets")
    return dirs


def _file_allowed(path: Path) -> Path:
    real = path.resolve()
    roots = [d.resolve() for d in secret_dirs()]
    if not any(real.is_relative_to(root) for root in roots):
        raise SecretReferenceError(f"file:{path}: not under a secret directory of this deployment "
                                   "(DRPANEL_SECRET_DIRS)")
    if real in panel_secret_files():
        raise SecretReferenceError(f"file:{path}: that file holds one of the panel's own secrets")
    return real


def check_form(reference: str) -> str:
    """Check only the form of a reference (settings use it before the allowlist exists); return it normalised."""
    reference = (reference or "").strip()
    kind, _, rest = reference.partition(":")
    if (kind == "env" and _ENV_NAME.match(rest)) or (kind == "file" and rest.startswith("/") and "\x00" not in rest):
        return reference
    raise SecretReferenceError(
        "a secret reference is env:VARIABLE_NAME or file:/absolute/path (the secret itself is never stored)"
    )


def validate(reference: str) -> str:
    """Check the form of a reference and that the deployment allows what it names (not its value)."""
    reference = check_form(reference)
    kind, _, rest = reference.partition(":")
    if kind == "env":
        if not env_allowed(rest):
            prefixes = ", ".join(settings.SECRET_ENV_PREFIXES) or "none"
            raise SecretReferenceError(f"{reference}: this deployment lets references name only variables starting "
                                       f"with {prefixes} (DRPANEL_SECRET_ENV_PREFIXES), and never the panel's own "
                                       "secrets")
        return reference
    _file_allowed(Path(rest))
    return reference


def resolve(reference: str, *, deployment: bool = False) -> str:
    """Read the secret a reference names (checking again that the deployment allows it).

    ``deployment=True`` is for a reference the deployment itself set (``DRPANEL_VERIFY_DATABASE``):
    it may name any variable or file except the panel's own secrets.
    """
    reference = validate(reference) if not deployment else check_form(reference)
    kind, _, rest = reference.partition(":")
    if deployment and kind == "env" and is_panel_secret(rest):
        raise SecretReferenceError(f"{reference}: that variable is one of the panel's own secrets")
    if kind == "env":
        value = os.environ.get(rest)
        if not value:
            raise SecretReferenceError(f"{reference}: the variable is not set in this process")
        return _remember(value.strip())
    path = Path(rest)
    try:
        mode = (path if deployment else _file_allowed(path)).stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretReferenceError(f"{reference}: the file must not be readable by group or others (chmod 600)")
        value = path.read_text().strip()
    except OSError as exc:
        raise SecretReferenceError(f"{reference}: cannot be read ({exc.strerror})") from None
    if not value:
        raise SecretReferenceError(f"{reference}: the file is empty")
    return _remember(value)


def _remember(value: str) -> str:
    _resolved.add(value)
    return value


def resolved_values() -> frozenset[str]:
    """Every secret value this process has resolved so far."""
    return frozenset(_resolved)
