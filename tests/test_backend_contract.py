"""The backend contract holds: backends import pymodels only through ``pymodels.backend``.

The rule, read from each module's source (every import, including those under
``if TYPE_CHECKING:`` and inside functions):

* a backend module may import ``pymodels.backend``;
* it may import modules of its own backend (``ext/tokyo_cabinet/_storage.py``
  imports ``ext/tokyo_cabinet/_binding.py``);
* it may import a shared private backend package, ``pymodels.ext._<name>``
  (``ext/_sql``: code the SQL backends share, itself a backend by this rule);
* it imports nothing else from pymodels: not ``pymodels`` itself, not
  ``pymodels.storage`` and the like, not another backend (``pymodels.ext.memory``).

The test plug-in (``tests/plugins/pymodels_testbackend``) stands for a
third-party backend and is held to the same rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pymodels
import pymodels.backend
import pymodels.backend_base

ROOT = Path(__file__).resolve().parent.parent
EXT = ROOT / "src" / "pymodels" / "ext"
PLUGIN = ROOT / "tests" / "plugins" / "pymodels_testbackend" / "src"


def module_name(path: Path, source_root: Path) -> str:
    parts = list(path.relative_to(source_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[int, str, str]]:
    """Every import of ``source``: line, the module resolved to an absolute name, what of it.

    ``import a.b`` gives ``(line, "a.b", "")``; ``from a import b, c`` gives
    ``(line, "a", "b")`` and ``(line, "a", "c")`` (``b`` may be a submodule).
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{target}" if target else base
            found += [(node.lineno, target, alias.name) for alias in node.names]
    return found


def own_package(module: str) -> str:
    """The backend a module belongs to: ``pymodels.ext.<name>`` or the plug-in's top package."""
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["pymodels", "ext"] else parts[0]


def allowed(target: str, module: str) -> bool:
    def within(prefix: str) -> bool:
        return target == prefix or target.startswith(prefix + ".")

    if target != "pymodels" and not target.startswith("pymodels."):
        return True  # not ours: the standard library, a driver, pydantic ...
    if target == "pymodels.backend" or within(own_package(module)):
        return True
    # A shared private backend package such as ext/_sql.
    return target.startswith("pymodels.ext._")


def violations(path: Path, source_root: Path) -> list[str]:
    module = module_name(path, source_root)
    source = path.read_text(encoding="utf-8")
    out = []
    for line, target, name in imported_names(source, module, path.name == "__init__.py"):
        if allowed(target, module):
            continue
        # ``from pymodels import backend``: the allowed module is the name imported.
        if name and allowed(f"{target}.{name}", module):
            continue
        what = f"{target}.{name}" if name else target
        out.append(f"{path.relative_to(source_root)}:{line}: imports {what}")
    return out


def backend_sources() -> list[tuple[Path, Path]]:
    ext = [(p, EXT.parent.parent) for p in sorted(EXT.rglob("*.py"))]
    plugin = [(p, PLUGIN) for p in sorted(PLUGIN.rglob("*.py"))]
    return ext + plugin


def test_the_sources_are_found() -> None:
    names = {module_name(p, root) for p, root in backend_sources()}
    for expected in (
        "pymodels.ext.memory",
        "pymodels.ext.sqlite",
        "pymodels.ext._sql.query",
        "pymodels.ext.tokyo_cabinet._storage",
        "pymodels_testbackend",
    ):
        assert expected in names


def test_backends_import_pymodels_only_through_pymodels_backend() -> None:
    problems = [v for path, root in backend_sources() for v in violations(path, root)]
    assert not problems, "backends must import pymodels names from pymodels.backend:\n" + (
        "\n".join(problems)
    )


@pytest.mark.parametrize(
    ("module", "source", "bad"),
    [
        ("pymodels.ext.mydb", "from ..storage import Change", ["pymodels.storage.Change"]),
        ("pymodels.ext.mydb", "import pymodels.values", ["pymodels.values"]),
        ("pymodels.ext.mydb", "from pymodels import Document", ["pymodels.Document"]),
        ("pymodels.ext.mydb", "from . import memory", ["pymodels.ext.memory"]),
        ("pymodels.ext.mydb._query", "from ..memory import Query", ["pymodels.ext.memory.Query"]),
        (
            "pymodels.ext.mydb._query",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ...query import Item",
            ["pymodels.query.Item"],
        ),
        ("thirdparty", "from pymodels.ext import memory", ["pymodels.ext.memory"]),
        ("thirdparty", "def f():\n    from pymodels.errors import E", ["pymodels.errors.E"]),
        ("pymodels.ext.mydb._query", "from ...backend import BaseQuery", []),
        ("pymodels.ext.mydb._query", "from ... import backend", []),
        ("pymodels.ext.mydb._query", "from .. import backend", ["pymodels.ext.backend"]),
        ("pymodels.ext.mydb._query", "from ._compiler import compile", []),
        ("pymodels.ext.mydb._query", "from . import _binding", []),
        ("pymodels.ext.mydb", "from ._sql.compiler import Compiler", []),
        ("thirdparty", "from pymodels.backend import BaseStorage\nimport json", []),
        ("thirdparty", "from pymodels import backend", []),
    ],
)
def test_the_rule_itself(tmp_path: Path, module: str, source: str, bad: list[str]) -> None:
    """The checker catches what it must and lets through what the rule allows."""
    path = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    found = [v.rpartition(" imports ")[2] for v in violations(path, tmp_path)]
    assert sorted(found) == sorted(bad)


def test_backend_base_is_the_same_contract() -> None:
    assert pymodels.backend_base.__all__ == pymodels.backend.__all__
    for name in pymodels.backend.__all__:
        assert getattr(pymodels.backend_base, name) is getattr(pymodels.backend, name)


def test_every_contract_name_exists() -> None:
    missing = [n for n in pymodels.backend.__all__ if not hasattr(pymodels.backend, n)]
    assert not missing
    assert pymodels.backend.__all__ == sorted(set(pymodels.backend.__all__), key=_ruff_order)


def _ruff_order(name: str) -> tuple[int, str]:
    # ruff sorts __all__ constants first, then classes, then the rest (RUF022).
    if name.isupper():
        return (0, name)
    return (1, name) if name[0].isupper() else (2, name)
