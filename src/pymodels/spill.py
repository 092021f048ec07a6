"""An external merge sort, for streams whose order the engine cannot give.

A backend whose engine cannot hand out its keys in order (a dbm file, a Tokyo hash
table), or a query ordered by fields its engine cannot sort by, would otherwise list and
sort every match before the first record. :class:`KeySorter` holds at most
:data:`RUN_SIZE` items: beyond that, items are sorted in runs spilled to a private
temporary directory (pickled in blocks of :data:`RUN_BLOCK`) and merged with
:func:`heapq.merge`; a short slice keeps only its ``stop`` first keys
(:func:`heapq.nsmallest`). Small results never touch the disk.

Used by the query layer (``BaseQuery``'s sort of orders the engine cannot give) and by
backends through :mod:`pymodels.backend` (shelve, Tokyo Cabinet and Tokyo Tyrant stream
in pk order with it).
"""

from __future__ import annotations

import heapq
import itertools
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Final, Generic, TypeVar

from .errors import PyModelsError

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

__all__ = ["RUN_BLOCK", "RUN_SIZE", "KeySorter"]

#: A sort holds at most this many keys in memory: more are sorted in runs of this
#: size, spilled to temporary files and merged.
RUN_SIZE = 50_000
#: Keys per block of a spilled run: what each run holds in memory while merging.
RUN_BLOCK = 1_000

K = TypeVar("K", bound="SupportsRichComparison")


class KeySorter(Generic[K]):
    """Sorts keys (or items of plain values: see :meth:`sort`) with bounded memory; a
    context manager that removes its spilled runs.

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
        self,
        keys: Iterable[K],
        *,
        descending: bool = False,
        stop: int | None = None,
        sort_run: Callable[[list[K]], object] | None = None,
        merge_key: Callable[[K], Any] | None = None,
    ) -> Iterable[K]:
        """``keys`` in order (the first ``stop`` of them if given).

        Consumes ``keys`` before returning (a caller holding a lock for the walk may
        release it then); the answer is read lazily from the runs while the sorter is
        open.

        Items that are not plain keys (the sort keys of records, with directions per
        field) take ``sort_run``, which sorts a run in place, and ``merge_key``, whose
        ascending order is the same and which only merges spilled runs: several stable
        passes over a run are cheaper than a key object per item, which the merge needs
        (once per item, not per comparison). Without them items sort as themselves,
        reversed when ``descending``. Spilled items hold str, bytes, numbers, bools,
        Decimals, dates, datetimes, None and tuples of them.
        """
        if stop is not None and stop <= RUN_SIZE and sort_run is None:
            return (heapq.nlargest if descending else heapq.nsmallest)(stop, keys)
        if sort_run is None:

            def sort_run(run: list[K]) -> None:
                run.sort(reverse=descending)

        chunk = self._spill_runs(keys, sort_run)
        sort_run(chunk)
        if not self._runs:
            return chunk
        readers = [_read_run(run) for run in self._runs]
        if merge_key is not None:
            return heapq.merge(*readers, chunk, key=merge_key)
        return heapq.merge(*readers, chunk, reverse=descending)

    def spool(self, items: Iterable[K]) -> Iterable[K]:
        """``items`` in the order they came, holding at most :data:`RUN_SIZE` of them.

        For a walk whose order does not matter but which must end before its first item
        is used (a walk under a lock): the same runs as :meth:`sort`, neither sorted
        nor merged, read back one after the other. Consumes ``items`` before returning.
        """
        chunk = self._spill_runs(items, lambda run: None)
        if not self._runs:
            return chunk
        return itertools.chain(*map(_read_run, self._runs), chunk)

    def _spill_runs(self, items: Iterable[K], arrange: Callable[[list[K]], object]) -> list[K]:
        """Spill ``items`` in full runs of :data:`RUN_SIZE`, each ``arrange``d first (in
        place); return the last run, shorter and not spilled."""
        walk = iter(items)
        chunk = list(itertools.islice(walk, RUN_SIZE))
        while len(chunk) >= RUN_SIZE:
            arrange(chunk)
            self._spill(chunk)
            chunk = list(itertools.islice(walk, RUN_SIZE))
        return chunk

    def _spill(self, run: list[K]) -> None:
        try:
            if self._directory is None:
                self._directory = tempfile.mkdtemp(prefix="pymodels-sort-")
            self._runs.append(_write_run(self._directory, len(self._runs), run))
        except OSError as e:
            raise PyModelsError(
                f"cannot sort {self.what} in a temporary directory "
                f"({self._directory or tempfile.gettempdir()}): "
                f"{e.strerror or e} (TMPDIR chooses another)"
            ) from e


def _write_run(directory: str, number: int, run: list[Any]) -> IO[bytes]:
    """Write ``run`` to a file in ``directory``; return it open for reading, at
    its start."""
    handle = open(os.path.join(directory, f"run{number}"), "w+b")  # noqa: SIM115
    try:
        for start in range(0, len(run), RUN_BLOCK):
            pickle.dump(run[start : start + RUN_BLOCK], handle, pickle.HIGHEST_PROTOCOL)
        handle.seek(0)
    except BaseException:
        handle.close()
        raise
    return handle


#: The classes a run may name: those of the values records hold (a datetime's UTC
#: zone is a timezone of a timedelta). Nothing else is loaded.
_RUN_CLASSES: Final = frozenset(
    {
        ("decimal", "Decimal"),
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "timezone"),
        ("datetime", "timedelta"),
    }
)


class _KeysUnpickler(pickle.Unpickler):
    """Loads lists of plain values only: our own files, but nothing else runs all the same."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _RUN_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} in a run of keys")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id")


def _read_run(handle: IO[bytes]) -> Iterator[Any]:
    # Flattened in C: a Python generator frame per item was a tenth of a shelve count.
    return itertools.chain.from_iterable(_read_blocks(handle))


def _read_blocks(handle: IO[bytes]) -> Iterator[list[Any]]:
    while True:
        try:
            yield _KeysUnpickler(handle).load()
        except EOFError:
            return
