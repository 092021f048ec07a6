"""The backend contract holds: backends import pymodels only through ``pymodels.backend``.

The rule, read from each module's source (every import, including those under
``if TYPE_CHECKING:`` and inside functions):

* a backend module may import ``pymodels.backend``;
* it may import modules of its own backend (``ext/tokyo_cabinet/_storage.py``
  imports ``ext/tokyo_cabinet/_binding.py``);
* it may import a shared private backend package or module, ``pymodels.ext._<name>``
  (``ext/_sql``: code the SQL backends share, ``ext/_tokyo``: the two Tokyo backends',
  each itself a backend by this rule);
* it imports nothing else from pymodels: not ``pymodels`` itself, not
  ``pymodels.storage`` and the like, not another backend (``pymodels.ext.memory``).

The test plug-in (``tests/plugins/pymodels_testbackend``) stands for a
third-party backend and is held to the same rule.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import pymodels
import pymodels.backend
import pymodels.backend_base
import pymodels.registry
from pymodels.backend import BackendUnavailable, BaseQuery, BaseStorage, ConfigurationError
from pymodels.query import OPTIONAL_HOOKS as QUERY_HOOKS
from pymodels.storage import OPTIONAL_HOOKS as STORAGE_HOOKS
from pymodels.storage import REQUIRED_HOOKS

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
    # A shared private backend package such as ext/_sql or ext/_tokyo.
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
        ("pymodels.ext.mydb._storage", "from .._shared import helper", []),
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


# ---------------------------------------------------------------- the hooks

#: Every in-tree backend (each public module or package of ``pymodels/ext``) and the plug-in.
BACKENDS = [
    *sorted(
        f"pymodels.ext.{path.stem}"
        for path in EXT.iterdir()
        if not path.name.startswith("_")
        and (path.suffix == ".py" or (path / "__init__.py").is_file())
    ),
    "pymodels_testbackend",
]
DOCS = ROOT / "docs" / "backends.md"


def overridden(cls: type, base: type) -> set[str]:
    """Underscore names of ``base`` (not dunders) that ``cls`` or a class between redefines."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is base or not issubclass(klass, base):
            continue
        for name in vars(klass):
            if name.startswith("_") and not name.startswith("__") and hasattr(base, name):
                names.add(name)
    return names


def backend_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except (BackendUnavailable, ImportError) as e:  # pragma: no cover - a driver missing here
        # A module may let its driver's ImportError through: the registry
        # turns it into BackendUnavailable with what to install.
        pytest.skip(f"{name}: its driver is not installed here ({e})")


@pytest.mark.parametrize("name", BACKENDS)
def test_backends_override_only_listed_hooks(name: str) -> None:
    storage_class = backend_module(name).Storage
    hooks = set(REQUIRED_HOOKS) | set(STORAGE_HOOKS)
    # _abc_impl: what abc keeps on every subclass of an abstract class.
    assert overridden(storage_class, BaseStorage) - {"_abc_impl"} <= hooks
    assert overridden(storage_class.query_class, BaseQuery) <= set(QUERY_HOOKS)


def test_the_override_check_covers_every_backend() -> None:
    # A backend added under ext/ is checked without editing BACKENDS.
    assert {"pymodels.ext.tokyo_tyrant", "pymodels.ext.mongodb", "pymodels.ext.memory"} <= set(
        BACKENDS
    )


def test_the_checker_sees_an_override_off_the_list() -> None:
    class Sneaky(BaseQuery[Any]):
        def _items(self, limit: Any = "query") -> Any:  # the executor's, not a hook
            return iter(())

        def _engine_fetch(self, *args: Any) -> Any:  # a hook
            return iter(())

    assert overridden(Sneaky, BaseQuery) == {"_items", "_engine_fetch"}
    assert not overridden(Sneaky, BaseQuery) <= set(QUERY_HOOKS)


def test_hooks_exist_and_required_ones_are_abstract() -> None:
    assert BaseStorage.__abstractmethods__ == frozenset(REQUIRED_HOOKS)
    for name in (*REQUIRED_HOOKS, *STORAGE_HOOKS):
        assert callable(getattr(BaseStorage, name)), name
    for name in QUERY_HOOKS:
        assert callable(getattr(BaseQuery, name)), name
    assert not set(REQUIRED_HOOKS) & set(STORAGE_HOOKS)


def documented_hooks(section: str) -> set[str]:
    """The hooks named in the ``### `...` `` headings of one ``## section`` of docs/backends.md."""
    text = DOCS.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for heading in re.findall(r"^### (.+)$", body, flags=re.M):
        names.update(re.findall(r"`(_[a-z_]+)\(", heading))
    return names


def test_docs_describe_exactly_the_listed_hooks() -> None:
    assert documented_hooks("Optional storage hooks") == set(STORAGE_HOOKS)
    assert documented_hooks("Query hooks") == set(QUERY_HOOKS)
    required = DOCS.read_text(encoding="utf-8").split("\n## Required hooks\n", 1)[1]
    required = required.split("\n## ", 1)[0]
    assert set(re.findall(r"^- `(_[a-z_]+)\(", required, flags=re.M)) == set(REQUIRED_HOOKS)


def test_docs_minimal_backend_is_the_plugin() -> None:
    text = DOCS.read_text(encoding="utf-8")
    listing = text.split("\n## A minimal backend\n", 1)[1].split("```python\n", 1)[1]
    listing = listing.split("```\n", 1)[0]
    source = (PLUGIN / "pymodels_testbackend" / "__init__.py").read_text(encoding="utf-8")
    assert listing == source
    assert len(source.splitlines()) < 80


def test_a_backend_missing_required_hooks_fails_at_instantiation() -> None:
    class Partial(BaseStorage):
        def _open(self) -> None:
            pass

        def _load(self, pk: str) -> dict[str, Any] | None:
            return None

        def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
            return True

        def _remove(self, pk: str) -> bool:
            return False

        def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
            return iter(())

    with pytest.raises(TypeError) as info:
        Partial()  # type: ignore[abstract]
    message = str(info.value)
    assert "Partial" in message and "_clear" in message and "_close" in message
    assert "_open" not in message


def test_the_registry_needs_only_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "contract_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "only_storage.py").write_text(
        "from pymodels_testbackend import Storage\n", encoding="utf-8"
    )
    (package / "half.py").write_text(
        "from pymodels.backend import BaseStorage\n\n"
        "class Storage(BaseStorage):\n"
        "    def _open(self): pass\n",
        encoding="utf-8",
    )
    (package / "not_storage.py").write_text("Storage = dict\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = pymodels.registry.load_backend("contract_pkg.only_storage")
        assert not hasattr(module, "Query") and not hasattr(module, "features")
        with pymodels.get_storage({"backend": "contract_pkg.only_storage"}) as s:
            assert type(s.query()) is BaseQuery
            assert s.features.persistent is False
            s.save({"a": 1}, primary_key="k")
            assert s.query().where(a=1).count() == 1
        with pytest.raises(TypeError, match=r"_clear.*_close|_close.*_clear"):
            pymodels.get_storage({"backend": "contract_pkg.half"})
        with pytest.raises(ConfigurationError, match="not a subclass"):
            pymodels.get_storage({"backend": "contract_pkg.not_storage"})
    finally:
        for name in ("only_storage", "half", "not_storage", ""):
            sys.modules.pop(f"contract_pkg.{name}".rstrip("."), None)


# ---------------------------------------------------------------- the seams

SRC = ROOT / "src" / "pymodels"
#: Modules whose queries reach a storage, and where they do it.
QUERY_MODULES = [
    "query.py",
    "ext/memory.py",
    "ext/_sql/query.py",
    "ext/_tokyo/_query.py",
    "ext/mongodb/_query.py",
]
#: Private names of its own engine a query module may call besides the hooks, each with
#: why. Tokyo's query and engine are one private package (``ext/_tokyo``): which orders
#: Tokyo can run depends on facts about the columns that only the engine keeps, proved
#: and retracted as records are written, so the order planning asks the engine for them.
ENGINE_PRIVATE: dict[str, frozenset[str]] = {
    "ext/_tokyo/_query.py": frozenset({"_proved", "_refined"}),
}
#: What storage.py and query.py call documents (their variables' names).
DOCUMENT_NAMES = {"doc", "doc_or_pk", "cls", "doc_class", "d", "ref", "write"}


def private_uses(source: str) -> list[tuple[int, str, str]]:
    """``(line, receiver, name)`` for every ``receiver._name`` (not dunder) in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append((node.lineno, ast.unparse(node.value), node.attr))
    return found


def storage_receiver(receiver: str) -> bool:
    return receiver in ("self.storage", "storage", "backend")


@pytest.mark.parametrize("module", QUERY_MODULES)
def test_queries_call_only_storage_hooks(module: str) -> None:
    hooks = set(REQUIRED_HOOKS) | set(STORAGE_HOOKS) | ENGINE_PRIVATE.get(module, frozenset())
    source = (SRC / module).read_text(encoding="utf-8")
    calls = [(line, r, n) for line, r, n in private_uses(source) if storage_receiver(r)]
    bad = [f"{module}:{line}: {r}.{n}" for line, r, n in calls if n not in hooks]
    assert not bad, "queries reach storages through hooks only:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", ["storage.py", "query.py"])
def test_storages_and_queries_use_no_private_name_of_documents(module: str) -> None:
    source = (SRC / module).read_text(encoding="utf-8")
    bad = [
        f"{module}:{line}: {receiver}.{name}"
        for line, receiver, name in private_uses(source)
        if receiver.split(".")[-1] in DOCUMENT_NAMES or receiver.startswith("type(doc")
    ]
    assert not bad, "documents are reached through documents.from_record & co:\n" + "\n".join(bad)


def test_the_seam_checks_see_a_breach() -> None:
    source = (
        "def f(self, doc, storage):\n"
        "    self.storage._fetch_records('x')\n"
        "    storage._load('k')\n"
        "    doc._set_saved(storage, 'k')\n"
        "    type(doc)._meta()\n"
    )
    uses = private_uses(source)
    assert [(r, n) for _, r, n in uses] == [
        ("self.storage", "_fetch_records"),
        ("storage", "_load"),
        ("doc", "_set_saved"),
        ("type(doc)", "_meta"),
    ]
    assert [n for _, r, n in uses if storage_receiver(r)] == ["_fetch_records", "_load"]
