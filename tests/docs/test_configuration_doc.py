"""docs/configuration.md lists every environment variable the code reads, and only those.

The variables are found in the code, not in a second list: an AST walk of every module outside
``tests/`` for

- the settings helpers ``env_str/env_bool/env_int/env_list/env_secret("NAME")`` (``env_secret``
  also reads ``NAME_FILE``), and any function that passes its first argument on to one of them;
- ``os.environ.get("NAME")``, ``os.getenv("NAME")``, ``os.environ["NAME"]`` (read, not written), and
  ``.get("NAME")`` on a mapping named ``env``/``environ`` (``backups.keys`` reads a copy of the environment).
"""

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
SKIPPED = {"tests", "var", "node_modules", "docs", "static", "templates"}
ENV_HELPERS = {"env_str", "env_bool", "env_int", "env_list", "env_secret"}
ENVIRONS = {"os.environ", "environ", "env"}


def _skipped(parts) -> bool:
    return bool(set(parts) & SKIPPED) or any(part.startswith(".") or part.endswith(".egg-info") for part in parts)


def modules() -> list[Path]:
    """Every module outside the skipped folders (never entered: ``.venv`` and ``node_modules`` alone hold tens of
    thousands of files)."""
    found = []
    for top in ROOT.iterdir():
        if _skipped([top.name]):
            continue
        candidates = [top] if top.suffix == ".py" and top.is_file() else top.rglob("*.py") if top.is_dir() else []
        found += [path for path in candidates if not _skipped(path.relative_to(ROOT).parts)]
    return sorted(found)


def _literal(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _forwarders(tree) -> set[str]:
    """Functions whose first parameter is the name an env_* helper reads (``_networks(name)`` → ``env_list(name)``)."""
    names = set()
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef) and function.args.args:
            first = function.args.args[0].arg
            for call in ast.walk(function):
                if (isinstance(call, ast.Call) and _callee(call) in ENV_HELPERS and call.args
                        and isinstance(call.args[0], ast.Name) and call.args[0].id == first):
                    names.add(function.name)
    return names - ENV_HELPERS


@functools.cache
def variables_read() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    trees = {path: ast.parse(path.read_text(), filename=str(path)) for path in modules()}
    readers = ENV_HELPERS.union(*(_forwarders(tree) for tree in trees.values()))
    for path, tree in trees.items():
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Call) and node.args and (name := _literal(node.args[0])):
                callee = _callee(node)
                receiver = ast.unparse(node.func.value) if isinstance(node.func, ast.Attribute) else ""
                if callee in readers:
                    names = [name, f"{name}_FILE"] if callee == "env_secret" else [name]
                elif callee == "getenv" or (callee == "get" and receiver in ENVIRONS):
                    names = [name]
            elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                  and ast.unparse(node.value) in ENVIRONS and (name := _literal(node.slice))):
                names = [name]
            for name in names:
                found.setdefault(name, set()).add(where)
    return found


def documented() -> set[str]:
    """The names in the first column of the doc's tables: ``| `NAME` | default | meaning |``."""
    return set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", DOC.read_text(), flags=re.MULTILINE))


def test_the_walk_finds_the_variables_it_should():
    """Guards the extractor itself: one of each way of reading a variable."""
    read = variables_read()
    for name in ("SECRET_KEY", "DRPANEL_AUDIT_SIGNING_KEY_FILE", "DRPANEL_METRICS_ALLOWED_NETWORKS", "DRPANEL_KEYS",
                 "DRPANEL_VAR_DIR", "DRPANEL_JOB_HEARTBEAT_SECONDS"):
        assert name in read, name


def test_every_variable_the_code_reads_is_documented():
    missing = {name: sorted(where) for name, where in variables_read().items() if name not in documented()}
    assert not missing, f"add these to docs/configuration.md (name, default, meaning): {missing}"


def test_every_documented_variable_is_still_read():
    stale = documented() - set(variables_read())
    assert not stale, f"docs/configuration.md lists variables no code reads any more: {sorted(stale)}"


def test_each_variable_is_documented_once_with_a_default_and_a_meaning():
    rows = re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|([^|]*)\|([^|]*)\|", DOC.read_text(), flags=re.MULTILINE)
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    assert all(default.strip() and meaning.strip() for _, default, meaning in rows)
