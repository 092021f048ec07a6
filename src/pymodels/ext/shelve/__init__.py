"""shelve backend: a seed backend over the standard library.

Engine: the :mod:`shelve` file format (pickled values in a :mod:`dbm` file) over
one explicitly chosen dbm module (``dbm.gnu``, ``dbm.ndbm``, ``dbm.dumb``, or
``dbm.sqlite3`` on Python 3.13+).
Dependencies: none beyond the standard library (``dbm.gnu`` needs the
interpreter's ``_gdbm`` module: Debian's ``python3-gdbm``).
Suits: small single-process data, scripts, tests. Records are plain pickled
dicts, so ``shelve.open(path)`` alone reads them (after a clean close).
Limits: no indexes; every query scans and filters in Python; no transactions;
one writer at a time (a lock file beside the data, waited on up to
``lock_timeout``).
Durability over ``dbm.gnu`` (``storage.features``: ``crash_safe`` and
``disk_full_safe`` True): every write is first appended to a CRC-checked redo
journal ``<path>.journal`` beside a consistent copy ``<path>.snapshot``, then
applied to the data file. A write that returned survives SIGKILL at any point
(with or without ``sync``), and the file always reopens: opening a file whose
writer was killed rebuilds the data file from snapshot and journal and logs a
WARNING saying so (``read_only`` rebuilds a private copy instead). On a full
disk a write raises a typed error and the store stays as it was. With
``sync=True`` each write also fsyncs the journal, so it survives a power loss
or an OS crash; with ``sync=False`` (the default) an OS crash can lose writes
made since the last close. Once the journal outgrows the data file (4 MiB at
least) a checkpoint copies the data file to the snapshot and empties it, so a
file takes about twice its size on disk.
Over ``dbm.ndbm`` and ``dbm.dumb`` (module-level ``features``: both False):
durable once ``close()`` returns; a writer killed mid-write or a write failed
part way (``dbm.ndbm`` can lose earlier records on a full disk) makes the next
opening for writing raise :class:`~pymodels.errors.CorruptData` until the user
accepts the file with ``recover=True``.
Trust: loading a record builds only the value domain's types; any other class
in a pickle raises ``CorruptData`` and runs nothing.

The module that wrote a file is recorded in the file and checked on every
open: a file is never opened through another dbm module (plain
``shelve.open`` would silently pick whichever module the interpreter has).
"""

from __future__ import annotations

from ._storage import GNU_FEATURES, META_KEY, Query, Settings, Storage, features

__all__ = ["GNU_FEATURES", "META_KEY", "Query", "Settings", "Storage", "features"]
