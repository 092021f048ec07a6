"""The README's example runs as written, on a fresh working directory, and does what it says."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def run_block(code: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    # A real module, as a script is: pydantic resolves annotations in the class's module.
    module = types.ModuleType("readme_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, str(README), "exec"), module.__dict__)
    return module


def test_the_30_second_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the example opens sqlite:///app.db here
    (code,) = BLOCKS  # one example; a new one gets its own test
    ex = run_block(code, monkeypatch)
    assert (tmp_path / "app.db").exists()
    john = ex.storage.get(ex.Person, ex.pk)
    assert john.first_name == "John" and john.birth_place.name == "Finland"
    assert ex.Country.objects(ex.storage).count() == 1  # saved first, by john.save
    assert ex.q.count() == 0  # nobody is called Sm...
    assert [p.pk for p in ex.Person.objects(ex.storage).where(ex.Q(first_name="John"))] == [ex.pk]
    ex.storage.close()
