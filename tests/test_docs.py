"""Every Python code block of the documentation runs, and the op table is complete.

Each page's fenced ``python`` blocks run in order, in one namespace, in a fresh
temporary directory (so ``sqlite:///library.db`` and friends are throwaway
files). A block that cannot run here (it needs a server, or it is a fragment of
a larger file) carries a marker on the line before it,
``<!-- not-run: the reason -->``; those are counted and reported as a warning
per page, never skipped silently. Pages that open ``sqlite:///library.db`` are
run once per embedded backend with that URL swapped, so the examples hold on
each of them.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from pymodels import registry
from pymodels.features import OPS

DOCS = Path(__file__).resolve().parent.parent / "docs"

# A fence may be indented (inside a list item): its body is dedented by the same amount.
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_NOT_RUN = re.compile(r"<!-- not-run: (.+?) -->\s*$")

#: The URL the learning pages open, and what it becomes on each embedded backend.
LIBRARY_URL = "sqlite:///library.db"
EMBEDDED = {
    "memory": "memory://",
    "shelve": "shelve:///library.shelf?dbm=dbm.gnu",
    "sqlite": LIBRARY_URL,
    "tokyo_cabinet": "tokyo-cabinet:///library.tct",
}


class DocBlockNotRun(UserWarning):
    """A documentation code block marked not-run (reported, never silent)."""


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    code: str
    not_run: str | None  # the reason, when marked


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _NOT_RUN.search(before)
        line = text.count("\n", 0, m.start()) + 1
        code = textwrap.dedent(m.group("body"))
        found.append(Block(page.name, line, code, marker.group(1) if marker else None))
    return found


PAGES = sorted(DOCS.glob("**/*.md"))


def _cases() -> list[object]:
    cases: list[object] = []
    for page in PAGES:
        if LIBRARY_URL in page.read_text(encoding="utf-8"):
            cases += [pytest.param(page, b, id=f"{page.name}-{b}") for b in EMBEDDED]
        else:
            cases.append(pytest.param(page, "sqlite", id=page.name))
    return cases


@pytest.mark.parametrize(("page", "backend"), _cases())
def test_page_code_blocks_run(
    page: Path, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = blocks(page)
    skipped = [b for b in found if b.not_run is not None]
    if skipped:
        listing = "; ".join(f"line {b.line}: {b.not_run}" for b in skipped)
        warnings.warn(
            f"{page.name}: {len(skipped)} of {len(found)} python blocks not run ({listing})",
            DocBlockNotRun,
            stacklevel=1,
        )
    monkeypatch.chdir(tmp_path)
    # A real module, so pydantic resolves the classes' annotations in it as in a user's file.
    module = types.ModuleType(f"docs_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    try:
        for block in found:
            if block.not_run is not None:
                # Not run, but still Python: a syntax error in it fails.
                compile(block.code, f"{page.name}:{block.line}", "exec")
                continue
            code = block.code.replace(LIBRARY_URL, EMBEDDED[backend])
            try:
                exec(compile(code, f"{page.name}:{block.line}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(
                    f"{page.name}, block at line {block.line} ({backend}): {e!r}"
                ) from e
    finally:
        for value in list(namespace.values()):
            close = getattr(value, "close", None)
            if callable(close) and type(value).__name__ == "Storage":
                close()


def test_not_run_markers_give_a_reason() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"<!-- not-run:?(.*?)-->", text):
            assert m.group(1).strip(), f"{page.name}: a not-run marker without a reason"
        # A marker must sit right before a python block, or it marks nothing.
        marked = text.count("<!-- not-run:")
        assert marked == sum(b.not_run is not None for b in blocks(page)), page.name


def test_every_page_has_its_blocks_found() -> None:
    # The extractor sees every ```python fence (a fence it missed would go untested).
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert text.count("```python") == len(blocks(page)), page.name


def test_op_table_lists_exactly_the_ops() -> None:
    text = (DOCS / "queries.md").read_text(encoding="utf-8")
    start = text.index("<!-- op-table -->")
    table = text[start : text.index("\n\n", text.index("|", start))]
    listed = re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE)
    assert sorted(listed) == sorted(OPS), set(listed) ^ set(OPS)
    assert len(listed) == len(set(listed)), "an op listed twice"
    # Each row shows the op in use: `field__op=` (or the plain `field=` for equals).
    for row in table.splitlines()[3:]:  # after the marker, the header and the rule
        op = re.match(r"^\| `([a-z_]+)` \|", row)
        assert op, row
        assert f"__{op.group(1)}=" in row or op.group(1) == "equals", row


def test_docs_do_not_send_readers_to_files_they_lack() -> None:
    for page in [*PAGES, DOCS.parent / "README.md"]:
        assert "API.md" not in page.read_text(encoding="utf-8"), page.name


def _hooks() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_builtin_backend_has_a_page_with_its_features_table() -> None:
    # The site build fails on a missing one too; this says so without building it.
    hooks = _hooks()
    assert hooks.builtin_backends() == list(registry.BUILTIN)
    for name in registry.BUILTIN:
        page = DOCS / f"{name}.md"
        assert page.exists(), f"no docs page for backend {name}"
        assert f"<!-- features: {name} -->" in page.read_text(encoding="utf-8"), page.name


def test_generated_features_table_is_the_backends_features() -> None:
    hooks = _hooks()
    for name in ("memory", "sqlite"):
        features = registry.load_backend(name).Storage.features
        table = hooks.backend_table(name)
        assert f"| transactions | {'yes' if features.transactions else 'no'} |" in table
        for op in OPS:
            assert f"| `{op}` | {hooks._OP_WORDS[features.op(op)]} |" in table, (name, op)
