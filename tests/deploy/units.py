"""Reading deploy/: systemd units, their environment file and the container entrypoint, as systemd and sh would.

The tests start the panel from what these files say; nothing here keeps a second copy of a command.
"""

import os
import re
import shlex
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
UNITS = ("drpanel-web.service", "drpanel-worker@.service", "drpanel-cron.service")
ENV_EXAMPLE = SYSTEMD / "drpanel.env.example"

# Where a host install puts things (the units name these) and where this checkout has them.
INSTALL_DIR = "/opt/drpanel"
INSTALL_VENV_BIN = "/opt/drpanel/.venv/bin"
INSTALL_ENV_FILE = "/etc/drpanel/drpanel.env"


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as ``{section: {key: [values in order]}}`` (keys such as ExecStartPre repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: {line!r} outside a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def read_env_file(path: Path) -> dict[str, str]:
    """An ``EnvironmentFile``: ``NAME=value`` lines; blank lines and ``#`` comments skipped."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), f"{path.name}: bad line {line!r}"
        env[name] = value
    return env


def unit_environment(service: dict[str, list[str]]) -> dict[str, str]:
    """``Environment=`` assignments of a [Service] section."""
    env = {}
    for value in service.get("Environment", []):
        for item in shlex.split(value):
            name, _, val = item.partition("=")
            env[name] = val
    return env


def expand(command: str, env: dict[str, str], *, instance: str = "", host: str = "") -> list[str]:
    """A command line as systemd runs it: specifiers (%i, %H, %%), then ``${NAME}`` (one word) and
    ``$NAME`` (split into words) from the unit's environment."""
    command = command.lstrip("-@:+!")
    words = []
    for word in shlex.split(command):
        word = word.replace("%%", "\0").replace("%i", instance).replace("%H", host).replace("\0", "%")
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", word):
            words.extend(env.get(word[1:], "").split())
            continue
        words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m[1], ""), word))
    return words


def local_path(path: str, venv_bin: Path) -> str:
    """A path of the install layout, on this checkout (the virtualenv running the tests)."""
    if path.startswith(INSTALL_VENV_BIN + "/"):
        return str(venv_bin / path[len(INSTALL_VENV_BIN) + 1:])
    if path == INSTALL_DIR or path.startswith(INSTALL_DIR + "/"):
        return str(ROOT) + path[len(INSTALL_DIR):]
    return path


def entrypoint_commands() -> dict[str, list[str]]:
    """The ``exec`` line of each process of deploy/entrypoint.sh, with ``$python`` spelled out."""
    text = (DEPLOY / "entrypoint.sh").read_text()
    python = re.search(r'^python=(\S+)$', text, re.MULTILINE)[1]
    commands = {}
    for name, body in re.findall(r"^  (\w+)\)\n(.*?);;", text, re.MULTILINE | re.DOTALL):
        lines = [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
        words = [shlex.split(line.replace('"$python"', python).replace(' "$@"', "")) for line in lines]
        commands[name] = [w[1:] if w[0] == "exec" else w for w in words]
    return commands


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_process_env() -> dict[str, str]:
    """What systemd gives a service besides its unit's variables: a PATH, a HOME, a locale.

    And the test run's bytecode cache (``PYTHONPYCACHEPREFIX``, drpanel/testing.py) when it has one: without it the
    units' interpreters compiled the whole panel into the checkout (``__pycache__`` beside the sources).
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPYCACHEPREFIX"):
        env["PYTHONPYCACHEPREFIX"] = os.environ["PYTHONPYCACHEPREFIX"]
    return env
