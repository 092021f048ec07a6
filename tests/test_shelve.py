"""shelve-specific behaviour: the recorded dbm module, plain-shelve readability, read-only."""

from __future__ import annotations

import dbm
import errno
import gc
import importlib
import os
import pickle
import random
import shelve
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pymodels
from pymodels import ConfigurationError, Document
from pymodels.ext.shelve import META_KEY
from pymodels.query import BaseQuery
from pymodels.storage import BaseStorage


def _has(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


needs_gnu = pytest.mark.skipif(not _has("dbm.gnu"), reason="dbm.gnu is not importable here")


class Thing(Document):
    name: str

    class Meta:
        indexes = ["name"]


def open_shelf(path: Path, **settings: object) -> pymodels.storage.BaseStorage:
    return pymodels.get_storage({"backend": "shelve", "path": str(path), **settings})


def test_records_are_plain_dicts_that_plain_shelve_reads(tmp_path: Path) -> None:
    path = tmp_path / "data"
    with open_shelf(path, dbm="dbm.dumb") as s:
        s.save({"a": 1, "nested": {"b": [1, 2]}}, primary_key="k")
    with shelve.open(str(path)) as raw:
        assert raw["k"] == {"a": 1, "nested": {"b": [1, 2]}}
        assert raw[META_KEY] == {"format": 1, "dbm": "dbm.dumb"}


@needs_gnu
def test_the_module_that_wrote_a_file_is_recorded_and_enforced(tmp_path: Path) -> None:
    path = tmp_path / "data"
    with open_shelf(path, dbm="gnu") as s:
        assert s.dbm_module == "dbm.gnu"  # type: ignore[attr-defined]
        s.save({"a": 1}, primary_key="k")
    assert dbm.whichdb(str(path)) == "dbm.gnu"
    with pytest.raises(ConfigurationError, match=r"dbm\.gnu.*dbm\.dumb"):
        open_shelf(path, dbm="dbm.dumb")
    with open_shelf(path) as again:  # no setting: the file's own module
        assert again.dbm_module == "dbm.gnu"  # type: ignore[attr-defined]
        assert again.get(None, "k")["a"] == 1


def test_unknown_dbm_module_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'dbm'"):
        open_shelf(tmp_path / "x", dbm="dbm.berkeley")


def test_metadata_is_invisible(tmp_path: Path) -> None:
    with open_shelf(tmp_path / "data", dbm="dbm.dumb") as s:
        assert len(s) == 0 and list(s) == [] and s.query().count() == 0
        s.save({"a": 1}, primary_key="k")
        s.clear()
        assert len(s) == 0
    with shelve.open(str(tmp_path / "data")) as raw:
        assert list(raw) == [META_KEY]  # clear() keeps the library's own key


def test_read_only_skips_indexes_and_needs_the_file(tmp_path: Path) -> None:
    # Reads and refused writes are the conformance suite's.
    path = tmp_path / "data"
    with open_shelf(path, dbm="dbm.dumb") as s:
        s.save({"name": "x"}, primary_key="k")
    with open_shelf(path, read_only=True) as ro:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ro.ensure_indexes(Thing)
        assert any("read-only" in str(w.message) for w in caught)
    with pytest.raises(ConfigurationError, match="does not exist"):
        open_shelf(tmp_path / "missing", read_only=True)


def test_features_say_scan() -> None:
    from pymodels.ext.shelve import features

    assert set(features.ops.values()) == {"python"}
    assert not features.transactions and not features.indexes


# ------------------------------------------------------------- reliability (#14)

DBMS = [
    pytest.param(n, marks=pytest.mark.skipif(not _has(n), reason=f"{n} is not importable here"))
    for n in ("dbm.gnu", "dbm.ndbm", "dbm.dumb")
]
#: The modules without a journal: an unclean close is refused until recovered.
UNJOURNALED = DBMS[1:]


class _Planted:
    """A pickle whose loading would call a function: what an attacker plants."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.marker), "the planted pickle ran"))  # type: ignore[return-value]


@pytest.mark.parametrize("module", DBMS)
def test_a_planted_pickle_raises_corrupt_data_and_runs_nothing(tmp_path: Path, module: str) -> None:
    path = tmp_path / "shelf"
    marker = tmp_path / "PWNED"
    with open_shelf(path, dbm=module) as s:
        s.save({"ok": 1}, primary_key="good")
    # Plant records the way someone handing over a file would: with plain shelve.
    db = importlib.import_module(module).open(str(path), "w")
    raw: shelve.Shelf[object] = shelve.Shelf(db)
    with raw:
        raw["bad"] = {"x": _Planted(str(marker))}
        raw["worse"] = _Planted(str(marker))
    for read_only in (False, True):
        with open_shelf(path, dbm=module, read_only=read_only) as s:
            assert s.get(None, "good")["ok"] == 1
            for pk in ("bad", "worse"):
                with pytest.raises(pymodels.CorruptData, match=pk) as info:
                    s.get(None, pk)
                assert info.value.pk == pk and info.value.path == str(path)
            with pytest.raises(pymodels.CorruptData):
                list(s.query())
            with pytest.raises(pymodels.CorruptData):
                s.query().where(ok=1).count()
            with pytest.raises(pymodels.CorruptData):
                s.get_many(None, ["good", "bad"])
            assert "bad" in s and len(s) == 3 and sorted(s) == ["bad", "good", "worse"]
    assert not marker.exists()


@pytest.mark.parametrize("module", DBMS)
def test_one_writer_per_file_others_wait_then_lock_timeout(tmp_path: Path, module: str) -> None:
    path = tmp_path / "shelf"
    with open_shelf(path, dbm=module) as first:
        first.save({"n": 1}, primary_key="a")
        started = time.monotonic()
        with pytest.raises(pymodels.LockTimeout, match="lock_timeout"):
            open_shelf(path, dbm=module, lock_timeout=0.3)
        assert time.monotonic() - started >= 0.3
        with pytest.raises(pymodels.LockTimeout):
            open_shelf(path, dbm=module, read_only=True)  # no reader beside a writer
        # Another process waits the same way.
        code = subprocess.run(
            [sys.executable, "-c", _OTHER_PROCESS, str(path), module],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert code.stdout.strip() == "LockTimeout", code.stderr
        first.save({"n": 2}, primary_key="b")
    # The lock is gone with the writer: readers share, and see both writes.
    with open_shelf(path, read_only=True) as r1, open_shelf(path, read_only=True) as r2:
        assert sorted(r1) == sorted(r2) == ["a", "b"]
    # A writer waiting with a longer timeout gets the file once the first closes.
    holder = open_shelf(path, dbm=module)
    threading.Timer(0.2, holder.close).start()
    with open_shelf(path, dbm=module, lock_timeout=5) as second:
        second.save({"n": 3}, primary_key="c")
        assert sorted(second) == ["a", "b", "c"]


_OTHER_PROCESS = """
import sys, pymodels
try:
    pymodels.get_storage({"backend": "shelve", "path": sys.argv[1], "dbm": sys.argv[2],
                          "lock_timeout": 0.2})
except pymodels.LockTimeout:
    print("LockTimeout")
"""


@pytest.mark.parametrize("module", UNJOURNALED)
def test_a_file_its_writer_never_closed_is_refused_until_recovered(
    tmp_path: Path, module: str
) -> None:
    path = tmp_path / "shelf"
    with open_shelf(path, dbm=module) as s:
        s.save({"n": 1}, primary_key="a")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child is killed
        s = open_shelf(path, dbm=module)
        s.save({"n": 2}, primary_key="b")
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    with pytest.raises(pymodels.CorruptData, match=r"not closed cleanly.*recover=True"):
        open_shelf(path, dbm=module)
    with open_shelf(path, dbm=module, read_only=True) as r:  # reading is how one checks
        assert r.get(None, "a")["n"] == 1
    with open_shelf(path, dbm=module, recover=True) as s:
        s.save({"n": 3}, primary_key="c")
    with open_shelf(path, dbm=module) as s:  # closed cleanly again
        assert {"a", "c"} <= set(s)


def test_dropped_storage_closes_cleanly_at_garbage_collection(tmp_path: Path) -> None:
    path = tmp_path / "shelf"
    s = open_shelf(path)
    s.save({"n": 1}, primary_key="a")
    del s
    gc.collect()
    with open_shelf(path) as again:
        assert again.get(None, "a")["n"] == 1


@pytest.mark.parametrize("module", DBMS)
def test_damage_raises_corrupt_data_naming_the_file(tmp_path: Path, module: str) -> None:
    path = tmp_path / "shelf"
    with open_shelf(path, dbm=module) as s:
        s.save({"n": 1}, primary_key="a")
    db = importlib.import_module(module).open(str(path), "w")
    db[b"\xff\xfe"] = pickle.dumps({"n": 2})  # a key that is no pk
    db[b"trunc"] = pickle.dumps({"n": 3})[:-3]  # a record cut short
    db.close()
    with open_shelf(path, dbm=module) as s:
        with pytest.raises(pymodels.CorruptData, match="not UTF-8"):
            list(s)
        # A query skipping records that lack its text still reads every key.
        with pytest.raises(pymodels.CorruptData, match="not UTF-8"):
            s.query().where(name="zzz").count()
        with pytest.raises(pymodels.CorruptData, match="trunc") as info:
            s.get(None, "trunc")
        assert isinstance(info.value.__cause__, (EOFError, pickle.UnpicklingError))


def test_garbage_file_raises_corrupt_data(tmp_path: Path) -> None:
    path = tmp_path / "shelf"
    path.write_bytes(b"\x13\x57\x9a\xce" + os.urandom(4096))  # gdbm's magic, then garbage
    with pytest.raises(pymodels.CorruptData) as info:
        open_shelf(path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_a_read_only_file_is_refused_for_writing_and_clear_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shelf"
    with open_shelf(path, dbm="dbm.dumb") as s:
        s.save_many({"n": i} for i in range(100))
    for f in tmp_path.iterdir():
        f.chmod(0o444)
    with pytest.raises(pymodels.PyModelsError, match="read_only"):
        open_shelf(path)
    with open_shelf(path, read_only=True) as r:
        assert len(r) == 100


def test_a_failed_clear_leaves_memory_as_the_file(tmp_path: Path) -> None:
    """A write that fails part way reopens the dbm: len() is what the file holds."""
    path = tmp_path / "shelf"
    with open_shelf(path, dbm="dbm.dumb") as s:
        s.save_many({"n": i} for i in range(100))
        calls = 0
        real = s._db.__class__.__delitem__  # type: ignore[attr-defined]

        def failing(db: object, key: bytes) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise PermissionError(13, "Permission denied")
            real(db, key)

        s._db.__class__.__delitem__ = failing  # type: ignore[attr-defined]
        try:
            with pytest.raises(pymodels.PyModelsError, match="permission denied"):
                s.clear()
        finally:
            s._db.__class__.__delitem__ = real  # type: ignore[attr-defined]
        # dbm.dumb writes each delete to its index at once: two deletes landed.
        assert len(s) == len(list(s)) == 98
    with open_shelf(path) as again:
        assert len(again) == 98


def test_bad_settings(tmp_path: Path) -> None:
    for bad in ({"protocol": 99}, {"protocol": 2}, {"lock_timeout": float("nan")}):
        with pytest.raises(ConfigurationError):
            open_shelf(tmp_path / "shelf", **bad)
    assert list(tmp_path.iterdir()) == []


@needs_gnu
def test_gdbm_needs_recovery_says_how_to_recover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shelf"
    with open_shelf(path, dbm="dbm.gnu") as s:
        s.save({"n": 1}, primary_key="a")
    gnu = importlib.import_module("dbm.gnu")

    def needs_recovery(*args: object) -> None:
        raise gnu.error("Database needs recovery")

    monkeypatch.setattr(gnu, "open", needs_recovery)
    with pytest.raises(pymodels.CorruptData, match=r"gdbmtool .* recover") as info:
        open_shelf(path)
    assert info.value.path == str(path) and isinstance(info.value.__cause__, gnu.error)
    monkeypatch.undo()
    with open_shelf(path) as s:  # the lock was released with the failure
        assert s.get(None, "a")["n"] == 1


def test_a_write_that_failed_part_way_is_remembered_past_close(tmp_path: Path) -> None:
    """A full disk can make dbm.ndbm drop old records: the next opening is told, not fooled."""
    path = tmp_path / "shelf"
    with open_shelf(path, dbm="dbm.dumb") as s:
        s.save({"n": 1}, primary_key="a")
        cls = s._db.__class__  # type: ignore[attr-defined]
        real = cls.__setitem__

        def disk_full(db: object, key: bytes, value: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        cls.__setitem__ = disk_full
        try:
            with pytest.raises(pymodels.PyModelsError, match="disk full") as info:
                s.save({"n": 2}, primary_key="b")
            assert not isinstance(info.value, pymodels.CorruptData)
        finally:
            cls.__setitem__ = real
        assert sorted(s) == ["a"]
    with pytest.raises(pymodels.CorruptData, match="a write failed"):
        open_shelf(path)
    with open_shelf(path, read_only=True) as r:
        assert sorted(r) == ["a"]
    with open_shelf(path, recover=True) as s:
        s.save({"n": 3}, primary_key="c")
    with open_shelf(path) as s:  # accepted and closed cleanly: no longer refused
        assert sorted(s) == ["a", "c"]


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("nodir/x.db", "directory nodir does not exist"),
        ("afile/x.db", "afile is not a directory"),
    ],
)
def test_file_errors_name_the_path_and_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, cause: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    with pytest.raises(pymodels.PyModelsError, match=f"cannot open {name}: {cause}"):
        pymodels.get_storage(f"shelve:///{name}")


def test_repr_shows_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pymodels.get_storage("shelve:///data.shelf") as s:
        assert repr(s) == "<pymodels.ext.shelve.Storage at 'data.shelf'>"


# ------------------------------------------------------- dbm.gnu's journal (#14)


def _killed_writer(path: Path, work: object, **settings: object) -> None:
    """Fork a child that opens ``path``, runs ``work(storage)`` and is SIGKILLed with it open."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child is killed
        s = open_shelf(path, dbm="dbm.gnu", **settings)
        work(s)  # type: ignore[operator]
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@needs_gnu
def test_gnu_features_are_crash_and_disk_full_safe(tmp_path: Path) -> None:
    from pymodels.ext.shelve import GNU_FEATURES, features

    assert not features.crash_safe and not features.disk_full_safe  # every module
    assert GNU_FEATURES.crash_safe and GNU_FEATURES.disk_full_safe
    with open_shelf(tmp_path / "g", dbm="dbm.gnu") as s:
        assert s.features is GNU_FEATURES
    for module in ("dbm.dumb",):
        with open_shelf(tmp_path / "d", dbm=module) as s:
            assert not s.features.crash_safe and not s.features.disk_full_safe


@needs_gnu
def test_a_killed_gnu_writer_is_repaired_at_the_next_opening(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "shelf"
    with open_shelf(path, dbm="dbm.gnu") as s:
        s.save({"n": 1}, primary_key="a")

    def work(s: pymodels.storage.BaseStorage) -> None:
        s.save({"n": 2}, primary_key="b")
        s.save_many([{"n": i} for i in range(50)])
        s.delete("a")
        s.save({"n": 3}, primary_key="c")

    _killed_writer(path, work)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with caplog.at_level("WARNING"), open_shelf(path, read_only=True) as r:
        # A reader may not write beside the file: it reads a repaired private copy.
        assert {"b", "c"} <= set(r) and len(r) == 52 and "a" not in r
        scratch = Path(r._scratch)  # type: ignore[attr-defined]
        assert scratch.is_dir()
    assert "read_only: into a private copy" in caplog.text
    assert not scratch.exists()  # removed at close
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    caplog.clear()
    with caplog.at_level("WARNING"), open_shelf(path) as s:
        assert {"b", "c"} <= set(s) and len(s) == 52 and "a" not in s
    assert "repaired from its snapshot and journal" in caplog.text
    # 53 writes, plus the first session's: a small journal outlives a clean close.
    assert "54 writes replayed" in caplog.text
    with open_shelf(path, read_only=True) as r:  # closed cleanly by the repairing opener
        assert len(r) == 52
    # Closed cleanly, the data file is a plain gdbm shelf again.
    gnu = importlib.import_module("dbm.gnu")
    plain: shelve.Shelf[object] = shelve.Shelf(gnu.open(str(path), "r"))
    with plain:
        assert plain["c"] == {"n": 3}


@needs_gnu
def test_a_torn_journal_tail_is_dropped_and_never_hides_later_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "shelf"
    _killed_writer(path, lambda s: s.save({"n": 1}, primary_key="a"))
    with open(f"{path}.journal", "ab") as journal:  # a write the kill cut short
        journal.write(b"PMJ\x01\x40\x00\x00\x00garbage")
    with caplog.at_level("WARNING"), open_shelf(path) as s:
        assert sorted(s) == ["a"]
        s.save({"n": 2}, primary_key="b")  # appended where the torn frame began
    assert "dropped 15 bytes" in caplog.text
    _killed_writer(path, lambda s: s.save({"n": 3}, primary_key="c"))
    with open_shelf(path) as s:
        assert sorted(s) == ["a", "b", "c"]


@needs_gnu
def test_a_repair_or_checkpoint_killed_half_way_is_redone(tmp_path: Path) -> None:
    path = tmp_path / "shelf"
    _killed_writer(path, lambda s: s.save_many([{"n": i} for i in range(20)]))
    os.unlink(path)  # a repair killed after deleting the damaged data file
    Path(f"{path}.rebuild").write_bytes(b"half a copy")
    Path(f"{path}.snapshot.tmp").write_bytes(b"half a checkpoint")
    with open_shelf(path) as s:
        assert len(s) == 20
    assert not Path(f"{path}.rebuild").exists() and not Path(f"{path}.snapshot.tmp").exists()


@needs_gnu
def test_checkpoints_empty_the_journal_and_survive_kills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymodels.ext.shelve import _storage

    monkeypatch.setattr(_storage, "CHECKPOINT_BYTES", 2000)
    path = tmp_path / "shelf"
    journal = Path(f"{path}.journal")

    def work(s: pymodels.storage.BaseStorage) -> None:
        for i in range(400):  # overwrites: the journal outgrows the data file
            s.save({"i": i, "pad": "x" * 300}, primary_key=f"k{i % 5}")

    _killed_writer(path, work)
    size = Path(path).stat().st_size
    assert journal.stat().st_size <= size + 400  # checkpointed along the way
    with open_shelf(path) as s:
        assert sorted(s) == [f"k{i}" for i in range(5)]
        assert s.get(None, "k4")["i"] == 399
        for i in range(400):
            s.save({"i": i}, primary_key=f"k{i % 5}")
    assert journal.stat().st_size <= size + 400


@needs_gnu
def test_a_gnu_file_from_before_the_journal_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "shelf"
    gnu = importlib.import_module("dbm.gnu")
    plain: shelve.Shelf[object] = shelve.Shelf(gnu.open(str(path), "c"))
    with plain:
        plain["old"] = {"n": 1}
    with open_shelf(path) as s:
        s.save({"n": 2}, primary_key="new")
    assert Path(f"{path}.snapshot").exists()
    _killed_writer(path, lambda s: s.save({"n": 3}, primary_key="newer"))
    with open_shelf(path) as s:
        assert sorted(s) == ["new", "newer", "old"]


@needs_gnu
def test_gnu_sync_fsyncs_the_journal_on_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    with open_shelf(tmp_path / "fast", dbm="dbm.gnu") as s:
        s.save({"n": 1})
    assert calls == []
    with open_shelf(tmp_path / "synced", dbm="dbm.gnu", sync=True) as s:
        s.save({"n": 1})
        s.save_many([{"n": 2}, {"n": 3}])
        s.delete(s.save({"n": 4}))
    assert len(calls) == 4  # save_many's batch is one journal frame


@needs_gnu
@pytest.mark.parametrize("fails", ["journal", "data file"])
def test_a_gnu_write_that_fails_changes_nothing_and_save_many_names_what_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    from pymodels.ext.shelve import _journal

    path = tmp_path / "shelf"
    with open_shelf(path, dbm="dbm.gnu") as s:
        s.save({"n": 0}, primary_key="a")
        writes = 0
        real_pwrite, real_apply = os.pwrite, _journal.apply

        def full_disk() -> None:
            nonlocal writes
            writes += 1
            if writes > 3:
                raise OSError(errno.ENOSPC, "No space left on device")

        def pwrite(fd: int, data: bytes, offset: int) -> int:
            full_disk()
            return real_pwrite(fd, data, offset)

        def apply(*args: object) -> int:
            full_disk()
            return real_apply(*args)  # type: ignore[arg-type]

        if fails == "journal":
            monkeypatch.setattr(os, "pwrite", pwrite)
        else:
            monkeypatch.setattr(_journal, "apply", apply)
        with pytest.raises(pymodels.BulkWriteError, match="disk full") as info:
            s.save_many([{"n": i} for i in range(1, 10)], batch_size=2)
        # One journal frame per batch: three batches written, the fourth not at all.
        assert len(info.value.written_pks) == 6 and info.value.index == 6
        written = info.value.written_pks
        monkeypatch.undo()
        if fails == "journal":  # nothing else changed: the storage goes on
            s.save({"n": 10}, primary_key="b")
            expected = sorted(["a", "b", *written])
        else:  # the data file is in doubt: this storage stops, the next opening repairs
            with pytest.raises(pymodels.PyModelsError, match="open the file again"):
                s.save({"n": 10}, primary_key="b")
            expected = sorted(["a", *written])
    with open_shelf(path) as s:
        assert sorted(s) == expected


@needs_gnu
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_tmpfs_keeps_every_acknowledged_gnu_write(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        path = mount / "shelf"
        acked: dict[str, dict[str, object]] = {}
        errors: list[pymodels.PyModelsError] = []
        with open_shelf(path, dbm="dbm.gnu") as s:
            for i in range(3000):
                record = {"i": i, "pad": "x" * 2000}
                try:
                    acked[s.save(record)] = record
                except pymodels.PyModelsError as e:
                    errors.append(e)
                    if len(errors) >= 5:
                        break
        assert errors and "disk full" in str(errors[0])
        with open_shelf(path) as s:
            stored = {str(d.pk): dict(d) for d in s.query()}
        assert stored == acked
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@needs_gnu
def test_a_gnu_file_written_by_plain_shelve_after_a_clean_close_keeps_that_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "shelf"
    with open_shelf(path, dbm="dbm.gnu") as s:
        s.save({"n": 1}, primary_key="a")
    gnu = importlib.import_module("dbm.gnu")
    plain: shelve.Shelf[object] = shelve.Shelf(gnu.open(str(path), "w"))
    with plain:
        plain["plain"] = {"n": 2}
    with caplog.at_level("WARNING"), open_shelf(path) as s:
        assert sorted(s) == ["a", "plain"]
    assert "took a new snapshot" in caplog.text
    _killed_writer(path, lambda s: s.save({"n": 3}, primary_key="b"))
    with open_shelf(path) as s:  # the repair starts from a snapshot with plain's write
        assert sorted(s) == ["a", "b", "plain"]


@needs_gnu
@pytest.mark.parametrize("stage", ["copying", "after the rename", "after the cut"])
def test_a_kill_inside_a_checkpoint_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    from pymodels.ext.shelve import _journal, _storage

    path = tmp_path / "shelf"
    with open_shelf(path, dbm="dbm.gnu") as s:
        s.save_many([{"n": i} for i in range(30)])
    monkeypatch.setattr(_storage, "_checkpoint_threshold", lambda path: 1)
    real_copy, real_cut = _storage._copy_durably, _journal.Journal.cut

    marker = tmp_path / "killed in the checkpoint"

    def die() -> None:
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)

    def copy(source: str, target: str) -> None:
        if stage == "copying":
            Path(f"{target}.tmp").write_bytes(Path(source).read_bytes()[:100])
            die()
        real_copy(source, target)
        if stage == "after the rename":  # new snapshot, old journal: replayed harmlessly
            die()

    def cut(journal: _journal.Journal, size: int, cause: BaseException | None = None) -> None:
        real_cut(journal, size, cause)
        if stage == "after the cut" and size == 0:
            die()

    monkeypatch.setattr(_storage, "_copy_durably", copy)
    monkeypatch.setattr(_journal.Journal, "cut", cut)

    def work(s: pymodels.storage.BaseStorage) -> None:
        s.save({"n": 100}, primary_key="acked")  # journaled; its checkpoint is killed

    _killed_writer(path, work)
    assert marker.exists()
    monkeypatch.undo()
    with open_shelf(path) as s:
        assert len(s) == 31 and s.get(None, "acked")["n"] == 100
    assert not Path(f"{path}.snapshot.tmp").exists()
    with open_shelf(path) as s:  # and again, after a clean close
        assert len(s) == 31


# ---------------------------------------------------------------- streaming in pk order


@pytest.fixture
def small_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs of 7 pks in blocks of 3 (so a few dozen records spill), in a directory to watch."""
    from pymodels import spill

    monkeypatch.setattr(spill, "RUN_SIZE", 7)
    monkeypatch.setattr(spill, "RUN_BLOCK", 3)
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def _random_records(seed: int, n: int) -> dict[str, dict[str, object]]:
    rng = random.Random(seed)
    alphabet = "abAB09_-é€\U0001f600 z"
    records: dict[str, dict[str, object]] = {}
    while len(records) < n:
        pk = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
        records[pk] = {"age": rng.randint(0, 9), "name": rng.choice(["x", "y", "z"])}
    return records


@pytest.mark.parametrize("module", DBMS)
@pytest.mark.parametrize("seed", range(4))
def test_pk_order_spilled_to_runs_answers_as_the_memory_backend(
    tmp_path: Path, small_runs: Path, module: str, seed: int
) -> None:
    records = _random_records(seed, 5 + seed * 23)  # 5 (no spill) up to 74 (ten runs)
    reference = pymodels.get_storage({"backend": "memory"})
    with open_shelf(tmp_path / "shelf", dbm=module) as s, reference:
        for pk, record in records.items():
            s.save(record, primary_key=pk)
            reference.save(record, primary_key=pk)
        pks = sorted(records)
        mid = pks[len(pks) // 2]
        queries: list[Callable[[BaseStorage], BaseQuery[Any]]] = [
            lambda st: st.query(),
            lambda st: st.query()[2:6],  # a short slice: the bounded heap, not runs
            lambda st: st.query().order_by("-pk")[:5],
            lambda st: st.query().where(age__gt=4),
            lambda st: st.query().order_by("-pk"),
            lambda st: st.query().where(name="y").order_by("-pk")[2:9],
            lambda st: st.query()[3:20],
            lambda st: st.query()[6:],
            lambda st: st.query()[:100],
            lambda st: st.query().order_by("pk").after(mid),
            lambda st: st.query().order_by("age", "-pk"),  # not streamed: the generic sort
        ]
        for make in queries:
            got = [(d.pk, d["age"]) for d in make(s)]
            assert got == [(d.pk, d["age"]) for d in make(reference)]
        assert [d.pk for d in s.query()] == pks
        assert s.query().first().pk == pks[0]  # type: ignore[union-attr]
        assert s.query().where(age__gt=4).count() == sum(r["age"] > 4 for r in records.values())  # type: ignore[operator]
    assert list(small_runs.iterdir()) == []


@pytest.mark.parametrize("module", DBMS)
def test_spilled_runs_are_removed_when_iteration_ends_stops_or_fails(
    tmp_path: Path, small_runs: Path, module: str
) -> None:
    path = tmp_path / "shelf"
    with open_shelf(path, dbm=module) as s:
        s.save_many({"n": i} for i in range(40))
        it = iter(s.query())
        first = next(it)
        assert list(small_runs.iterdir()) != []  # spilled while the iterator lives
        assert len(list(it)) == 39 and first.pk == min(s.query().values("pk"))
        assert list(small_runs.iterdir()) == []
        abandoned = iter(s.query().where(n__gte=0))
        next(abandoned)
        assert list(small_runs.iterdir()) != []
        del abandoned  # a dropped iterator is closed: its generator's finally runs
        gc.collect()
        assert list(small_runs.iterdir()) == []
    db = importlib.import_module(module).open(str(path), "w")
    db[b"trunc"] = pickle.dumps({"n": 3})[:-3]  # a record cut short
    db.close()
    with (
        open_shelf(path, dbm=module, recover=True) as s,
        pytest.raises(pymodels.CorruptData, match="trunc"),
    ):
        list(s.query())
    assert list(small_runs.iterdir()) == []


@pytest.mark.parametrize("module", DBMS)
def test_records_removed_or_added_while_streaming(
    tmp_path: Path, small_runs: Path, module: str
) -> None:
    with open_shelf(tmp_path / "shelf", dbm=module) as s:
        for i in range(30):
            s.save({"n": i}, primary_key=f"k{i:02}")
        seen = []
        for doc in s.query():
            seen.append(doc.pk)
            if doc.pk == "k05":
                s.delete("k20")  # not read yet (batches of 4, 16, 64 keys): skipped
                s.delete("k03")  # already yielded
                s.save({"n": -1}, primary_key="k99")  # after the keys were read: not seen
        assert seen == [f"k{i:02}" for i in range(30) if i != 20]
        assert [d.pk for d in s.query()][-1] == "k99"


def test_a_read_failing_mid_walk_names_its_record_after_those_before(tmp_path: Path) -> None:
    """Records are read a batch at a time; a dbm error still comes at its own record."""
    with open_shelf(tmp_path / "shelf") as s:
        for i in range(30):
            s.save({"n": i}, primary_key=f"k{i:02}")
        real = s._db  # type: ignore[attr-defined]

        class Failing:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def get(self, key: bytes) -> Any:
                if key == b"k09":
                    raise OSError(errno.EIO, "Input/output error")
                return real.get(key)

        s._db = Failing()  # type: ignore[attr-defined]
        try:
            seen = []
            with pytest.raises(pymodels.PyModelsError, match=r"'k09'.*Input/output") as info:
                for doc in s.query():
                    seen.append(doc.pk)
            assert isinstance(info.value.__cause__, OSError)
            assert seen == [f"k{i:02}" for i in range(9)]
        finally:
            s._db = real  # type: ignore[attr-defined]


def test_needles_come_from_conjunctions_of_safe_ascii_text() -> None:
    from pymodels import Q
    from pymodels.ext.shelve._storage import needles

    assert needles(Q(name="Ada")) == (b"Ada",)
    assert set(needles(Q(name="Ada", city__startswith="Lon", tags__contains="x"))) == {
        b"Ada",
        b"Lon",
        b"x",
    }
    assert needles(Q(tags__contains_all=["x", "yyy"]) & Q(name__endswith="da")) == (
        b"yyy",
        b"da",
        b"x",
    )
    # Nothing is needed by an OR, a NOT, another operator or kind, or an empty text;
    # nor by text an old pickle may not write as it is (non-ASCII, control
    # characters, backslashes and quotes).
    for condition in (
        Q(name="Ada") | Q(name="Bo"),
        ~Q(name="Ada"),
        Q(name__iequals="ada"),
        Q(name__in=["Ada"]),
        Q(age=3),
        Q(name=""),
        Q(name="Zoë"),
        Q(name="a\\b"),
        Q(name="two\nlines"),
        Q(name="tab\there"),
        Q(name="it's"),  # Python 2 pickled a str as its repr: quotes may be escaped
        Q(name='say "hi"'),
    ):
        assert needles(condition) == (), condition


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_records_without_a_needed_text_are_not_unpickled(
    tmp_path: Path, protocol: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymodels import Q
    from pymodels.ext.shelve import _storage

    path = tmp_path / "shelf"
    with open_shelf(path, dbm="dbm.dumb") as s:
        s.save({"name": "first"}, primary_key="a")
    cities = ["Oslo", "Lima", "Köln", "a\\b"]
    records: dict[str, dict[str, Any]] = {
        f"k{i:02}": {"name": f"n{i}", "city": cities[i % 4], "tags": ["t", f"u{i % 3}"]}
        for i in range(30)
    }
    records["a"] = {"name": "first"}
    # Written as another program may have: plain shelve, any protocol (0 escapes
    # backslashes and writes non-ASCII text as \uXXXX).
    db = dbm.open(str(path), "w")  # noqa: SIM115 - closed by the shelf
    raw: shelve.Shelf[Any] = shelve.Shelf(db, protocol=protocol)  # type: ignore[arg-type]
    with raw:
        for pk, record in records.items():
            raw[pk] = record
    with dbm.open(str(path), "r") as db:
        stored = [db[pk.encode()] for pk in records]
    unpickled: list[bytes] = []
    loads = _storage._loads

    def counted(data: bytes, path: str, pk: str) -> dict[str, Any]:
        unpickled.append(data)
        return loads(data, path, pk)

    monkeypatch.setattr(_storage, "_loads", counted)
    conditions = [
        Q(name="n7"),
        Q(city="Oslo"),
        Q(city__startswith="Li", tags__contains="u1"),
        Q(name__endswith="7"),
        Q(city="Köln"),  # no needle: every record is read
        Q(city="a\\b"),  # no needle
        Q(name="n7") | Q(city="Lima"),  # no needle
    ]
    with open_shelf(path) as s:
        for condition in conditions:
            expected = sorted(pk for pk, r in records.items() if condition.matches(r))
            wanted = _storage.needles(condition)
            holding = sorted(d for d in stored if all(n in d for n in wanted))
            for ask in ("pk order", "count", "other order"):
                unpickled.clear()
                if ask == "pk order":
                    assert [d.pk for d in s.query().where(condition)] == expected, condition
                elif ask == "count":
                    assert s.query().where(condition).count() == len(expected)
                else:
                    top = s.query().where(condition).order_by("-name").first()
                    want = max(expected, key=lambda pk: records[pk]["name"], default=None)
                    assert (top and top.pk) == want
                    if want is not None:
                        # Sorted by name in Python, then the chosen record read again.
                        holding = sorted([*holding, stored[list(records).index(want)]])
                # Exactly the records holding every needed text were unpickled.
                assert sorted(unpickled) == holding, (condition, ask)
        unpickled.clear()
        assert s.query().where(name="n7").first().pk == "k07"  # type: ignore[union-attr]
        assert unpickled == [stored[list(records).index("k07")]]
        assert "unpickling only records holding b'n7'" in s.query().where(name="n7").explain()


def test_a_python2_pickle_is_found_by_text_it_writes_escaped(tmp_path: Path) -> None:
    from pymodels import Q

    path = tmp_path / "shelf"
    with open_shelf(path, dbm="dbm.dumb") as s:
        s.save({"name": "other"}, primary_key="b")
    # Python 2 pickled {"name": 'it\'s "q"'} (a str, protocol 0) as the str's repr.
    planted = b"(dp0\nS'name'\np1\nS'it\\'s \"q\"'\np2\ns."
    assert pickle.loads(planted) == {"name": 'it\'s "q"'}
    with dbm.open(str(path), "w") as db:
        db[b"a"] = planted
    with open_shelf(path) as s:
        for condition in (Q(name='it\'s "q"'), Q(name__startswith="it"), Q(name__endswith='q"')):
            assert [d.pk for d in s.query().where(condition)] == ["a"], condition
