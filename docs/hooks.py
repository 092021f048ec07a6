"""MkDocs hook: backend feature tables generated from the code at build time.

A backend page says where its table goes with a marker line,
``<!-- features: sqlite -->``, and ``features.md`` holds
``<!-- features: all -->`` for the side-by-side table. The tables are read
from each backend's ``Storage.features`` through the registry, so they cannot
drift from what the code declares. Every built-in backend the registry knows
must have a page with its marker; one without, or one that cannot be imported
here (its driver missing), is a warning, which ``mkdocs build --strict`` turns
into a failed build: no backend is left out silently.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from pymodels import registry
from pymodels.features import OPS, Features

log = logging.getLogger("mkdocs.plugins.pymodels")

# Docstrings use Sphinx roles (:class:`X`); the Markdown renderer leaves the role
# name in front of the code span, so the page drops it (and a leading ~).
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj):<code>~?([^<]*)</code>")

_MARKER = re.compile(r"^<!-- features: ([a-z_]+) -->$", re.MULTILINE)

#: The capability flags in the order the tables show them, with the question each answers.
_FLAGS: dict[str, str] = {
    f.name: f.name.replace("_", " ") for f in dataclasses.fields(Features) if f.name != "ops"
}
_OP_WORDS = {
    "native": "in the engine",
    "prefilter": "engine prefilter, re-checked in Python",
    "python": "in Python",
}


def builtin_backends() -> list[str]:
    """Every built-in backend the registry knows, installed here or not."""
    return list(registry.BUILTIN)


def backend_features(name: str) -> Features | None:
    """The backend's declared features, or None (with a warning) if it cannot load here."""
    try:
        module = registry.load_backend(name)
    except Exception as e:  # a driver missing: the build must say so
        log.warning("features table for backend %r not generated: %s", name, e)
        return None
    features = module.Storage.features
    assert isinstance(features, Features)
    return features


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, frozenset):
        return ", ".join(f"`{v}`" for v in sorted(value)) or "none"
    return f"`{value}`"


def backend_table(name: str) -> str:
    """Markdown for one backend: its capability flags, then how each lookup op runs."""
    features = backend_features(name)
    if features is None:
        return f"*The features of `{name}` could not be read when this page was built.*"
    lines = [
        f"Generated from `{name}`'s `Storage.features` when this site was built.",
        "",
        "| capability | |",
        "|---|---|",
    ]
    lines += [f"| {words} | {_cell(getattr(features, flag))} |" for flag, words in _FLAGS.items()]
    lines += ["", "| lookup op | runs |", "|---|---|"]
    lines += [f"| `{op}` | {_OP_WORDS[features.op(op)]} |" for op in OPS]
    return "\n".join(lines)


def all_table() -> str:
    """Markdown: every built-in backend side by side."""
    names = builtin_backends()
    loaded = {name: backend_features(name) for name in names}
    head = "| | " + " | ".join(f"[{n}]({n}.md)" for n in names) + " |"
    lines = [head, "|---" * (len(names) + 1) + "|"]

    def row(label: str, get: Any) -> str:
        cells = [get(f) if f is not None else "?" for f in loaded.values()]
        return f"| {label} | " + " | ".join(cells) + " |"

    for flag, words in _FLAGS.items():
        lines.append(row(words, lambda f, flag=flag: _cell(getattr(f, flag))))
    short = {"native": "engine", "prefilter": "prefilter", "python": "Python"}
    for op in OPS:
        lines.append(row(f"`{op}`", lambda f, op=op: short[f.op(op)]))
    return "\n".join(lines)


def on_files(files: Any, config: Any) -> Any:
    """Every built-in backend needs a page carrying its marker."""
    found: set[str] = set()
    for file in files.documentation_pages():
        with open(file.abs_src_path, encoding="utf-8") as f:
            found.update(_MARKER.findall(f.read()))
    for name in builtin_backends():
        if name not in found:
            log.warning(
                "backend %r has no docs page with a '<!-- features: %s -->' marker", name, name
            )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each marker with its generated table."""

    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "all":
            return all_table()
        if name not in builtin_backends():
            log.warning("%s: no built-in backend %r", page.file.src_path, name)
            return match.group(0)
        return backend_table(name)

    return _MARKER.sub(table, markdown)


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Show Sphinx cross-reference roles from the docstrings as plain code."""
    return _ROLE.sub(lambda m: f"<code>{m.group(1)}</code>", html)
