"""Tokyo Tyrant backend: a seed backend over a ``ttserver`` serving a ``.tct`` table file.

Engine: Tokyo Tyrant 1.1 (``ttserver``) serving a Tokyo Cabinet table database, reached
over its binary protocol by the project's own pure-Python client (:mod:`._protocol`).
Dependencies: none in Python and no C library on the client; a running ``ttserver``.
Suits: the Tokyo Cabinet story past one process: test against ``storage.tct`` with the
Cabinet backend, run ``ttserver storage.tct``, change the settings to this backend. Both
backends share the column format, the query compiler and the query class
(:mod:`pymodels.ext._tokyo`), so one file reads identically through either, and through
``tctmgr``/``tcrmgr``.
Queries: as the Cabinet backend's, each a ``misc search`` round trip (unions are one
metasearch; ``count`` and ``delete`` send no records back).
Limits: **no transactions** (``ttserver`` has none: ``transaction()`` raises
NotSupported, a failed ``save_many`` keeps the records before the failing one); no
compound or unique indexes; a ``Meta.version_field`` compare-and-swap is exact between
threads, not across processes (``features.compare_and_swap_across_processes`` is
False: ttserver has no conditional replace); after ``ConnectionFailed`` during a write,
its outcome is unknown (never retried by itself). A server on a file without the ``.tct`` suffix
serves no table and is refused at open. See ``docs/tokyo_tyrant.md``.
"""

from __future__ import annotations

from ._storage import Query, Settings, Storage, features

__all__ = ["Query", "Settings", "Storage", "features"]
