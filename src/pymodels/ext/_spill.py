"""An external merge sort of keys, for backends that stream a query in pk order.

A backend whose engine cannot hand out its keys in order (a dbm file, a Tokyo hash
table) would otherwise list and sort every matching key before the first record.
:class:`KeySorter` holds at most :data:`RUN_SIZE` keys: beyond that, keys are sorted in
runs spilled to a private temporary directory (pickled in blocks of :data:`RUN_BLOCK`)
and merged with :func:`heapq.merge`; a short slice keeps only its ``stop`` first keys
(:func:`heapq.nsmallest`). Small results never touch the disk.

Shared by the shelve and Tokyo Cabinet backends (a private module of ``pymodels.ext``,
allowed by the backend contract as ``ext/_sql`` and ``ext/_tokyo`` are).
"""

from __future__ import annotations

import heapq
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import IO, Any, Generic, TypeVar

from ..backend import PyModelsError

__all__ = ["RUN_BLOCK", "RUN_SIZE", "KeySorter"]

#: A sort holds at most this many keys in memory: more are sorted in runs of this
#: size, spilled to temporary files and merged.
RUN_SIZE = 50_000
#: Keys per block of a spilled run: what each run holds in memory while merging.
RUN_BLOCK = 1_000

K = TypeVar("K", str, bytes)


class KeySorter(Generic[K]):
    """Sorts keys with bounded memory; a context manager that removes its spilled runs.

    Use it around the whole iteration (``with KeySorter(what) as sorter: for key in
    sorter.sort(keys, ...)``), inside a generator so that its end, an error or the
    collection of a dropped iterator (the generator's ``finally``) removes the runs.
    """

    def __init__(self, what: str) -> None:
        #: What is sorted, for the error when the temporary directory fails.
        self.what = what
        self._directory: str | None = None
        self._runs: list[IO[bytes]] = []

    def __enter__(self) -> KeySorter[K]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close and remove the spilled runs (idempotent)."""
        runs, self._runs = self._runs, []
        for run in runs:
            run.close()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def sort(
        self, keys: Iterable[K], *, descending: bool = False, stop: int | None = None
    ) -> Iterable[K]:
        """``keys`` in order (the first ``stop`` of them if given).

        Consumes ``keys`` before returning (a caller holding a lock for the walk may
        release it then); the answer is read lazily from the runs while the sorter is
        open.
        """
        if stop is not None and stop <= RUN_SIZE:
            return (heapq.nlargest if descending else heapq.nsmallest)(stop, keys)
        chunk: list[K] = []
        for key in keys:
            chunk.append(key)
            if len(chunk) >= RUN_SIZE:
                self._spill(chunk, descending)
                chunk = []
        chunk.sort(reverse=descending)
        if not self._runs:
            return chunk
        readers = [_read_run(run) for run in self._runs]
        return heapq.merge(*readers, chunk, reverse=descending)

    def _spill(self, keys: list[K], descending: bool) -> None:
        try:
            if self._directory is None:
                self._directory = tempfile.mkdtemp(prefix="pymodels-sort-")
            self._runs.append(_write_run(self._directory, len(self._runs), keys, descending))
        except OSError as e:
            raise PyModelsError(
                f"cannot sort {self.what} in a temporary directory "
                f"({self._directory or tempfile.gettempdir()}): "
                f"{e.strerror or e} (TMPDIR chooses another)"
            ) from e


def _write_run(directory: str, number: int, keys: list[Any], descending: bool) -> IO[bytes]:
    """Sort ``keys`` into a run file in ``directory``; return it open for reading, at its start."""
    keys.sort(reverse=descending)
    handle = open(os.path.join(directory, f"run{number}"), "w+b")  # noqa: SIM115
    try:
        for start in range(0, len(keys), RUN_BLOCK):
            pickle.dump(keys[start : start + RUN_BLOCK], handle, pickle.HIGHEST_PROTOCOL)
        handle.seek(0)
    except BaseException:
        handle.close()
        raise
    return handle


class _KeysUnpickler(pickle.Unpickler):
    """Loads lists of str or bytes only: our own files, but nothing else runs all the same."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} in a run of keys")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id")


def _read_run(handle: IO[bytes]) -> Iterator[Any]:
    while True:
        try:
            block = _KeysUnpickler(handle).load()
        except EOFError:
            return
        yield from block
