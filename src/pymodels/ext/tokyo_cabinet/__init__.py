"""Tokyo Cabinet backend: a seed backend over real ``.tct`` table database files.

Engine: Tokyo Cabinet 1.4 table databases (``tctdb*``) through the project's own ctypes
binding (:mod:`._binding`); the same file can later be served by ``ttserver`` and read by
Tokyo's own tools (``tctmgr``).
Dependencies: the C library only (Debian: ``apt-get install libtokyocabinet9``); no
compiler, headers or Python package. Importing this module without the library raises
:class:`~pymodels.errors.BackendUnavailable` saying what to install.
Suits: one process owning a file on local disk, data later served by Tokyo Tyrant, and
interchange with Tokyo's tools: every field is a plain text column (numbers as decimal
text, dates as ``YYYYMMDD``), with exact types kept in one extra column, ``_types``.
Queries: compiled to Tokyo's table query; equality, ``in``, prefixes and suffixes, case-
insensitive matches, date parts and date ranges run exactly in the engine; number and
datetime ranges and ``contains`` run there as prefilters; regexes run in Python. Indexes:
lexical, decimal, token and q-gram, one per column; the planner uses them.
Limits: one writer process per file (Tokyo locks the file: a second process waits or
fails at once, setting ``lock_timeout``); no compound or unique indexes; no multi-key
ordering in the engine (such queries sort in Python); ``kind`` must be ``"TABLE"``.
Reliability: after a crash, opening the file repairs it (indexes rebuilt, with a log
warning); writes that would fill the disk are refused (``min_free_space``); damage raises
``CorruptData``. A ``.tct`` file is parsed by C code: opening an untrusted one is not safe.
See ``docs/tokyo_cabinet.md``.
"""

from __future__ import annotations

from ...backend import BackendUnavailable

try:
    from . import _binding
except ImportError as _e:  # TokyoCabinetUnavailable is an ImportError
    raise BackendUnavailable(
        f"the Tokyo Cabinet backend needs the C library libtokyocabinet.so.9: "
        f"apt-get install libtokyocabinet9 ({_e})"
    ) from _e

from .._tokyo._query import Query
from ._storage import Settings, Storage, features

__all__ = ["Query", "Settings", "Storage", "features"]

del _binding
