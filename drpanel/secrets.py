"""Secret references: how systems, targets and storage locations name a secret without holding it.

A reference is stored in the database; the secret never is. Two forms:

- ``env:NAME`` — the value of the environment variable ``NAME`` of the process that needs it
  (web or worker);
- ``file:/absolute/path`` — the content of that file (stripped), which must not be readable
  by group or others.

``resolve`` reads the secret at the moment it is needed; errors name the reference, never
the value.
"""

import os
import re
import stat
from pathlib import Path

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SecretReferenceError(Exception):
    """A reference is malformed, or what it names is missing or unsafe."""


def validate(reference: str) -> str:
    """Check the form of a reference (not its value); return it normalised."""
    reference = (reference or "").strip()
    kind, _, rest = reference.partition(":")
    if kind == "env" and _ENV_NAME.match(rest):
        return reference
    if kind == "file" and rest.startswith("/") and "\x00" not in rest:
        return reference
    raise SecretReferenceError(
        "a secret reference is env:VARIABLE_NAME or file:/absolute/path (the secret itself is never stored)"
    )


def resolve(reference: str) -> str:
    """Read the secret a reference names."""
    reference = validate(reference)
    kind, _, rest = reference.partition(":")
    if kind == "env":
        value = os.environ.get(rest)
        if not value:
            raise SecretReferenceError(f"{reference}: the variable is not set in this process")
        return value.strip()
    path = Path(rest)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretReferenceError(f"{reference}: the file must not be readable by group or others (chmod 600)")
        value = path.read_text().strip()
    except OSError as exc:
        raise SecretReferenceError(f"{reference}: cannot be read ({exc.strerror})") from None
    if not value:
        raise SecretReferenceError(f"{reference}: the file is empty")
    return value
