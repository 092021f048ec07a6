"""The Tokyo Tyrant storage: settings, capabilities and the backend hooks."""

from __future__ import annotations

import contextlib
import functools
import heapq
import os
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl, urlsplit

import pydantic

from ...backend import (
    BATCH_SIZE,
    BaseQuery,
    BaseSettings,
    BulkWriteError,
    ConfigurationError,
    Features,
    KeySorter,
    PyModelsError,
    batch_has_documents,
    batch_records,
)
from .._tokyo._columns import TYPES_COLUMN, decode_record, encode_dump
from .._tokyo._compiler import Block, Plan, PlanBlock, TCCond, gates_hold
from .._tokyo._engine import OP_SUPPORT, TokyoStorage, decode_pk, scan_index_files
from .._tokyo._format import Cond, Order, parse_list
from .._tokyo._query import Query
from ._protocol import DEFAULT_HOST, DEFAULT_PORT, Client

__all__ = ["Query", "Settings", "Storage", "features"]

# The same file, the same compiler: ops run as they do on the Cabinet backend. What
# differs is what a server changes: no transactions (ttserver has none), several
# processes may share the database, and a storage survives fork() (connections are
# per process).
features = Features(
    ops=dict(OP_SUPPORT),
    transactions=False,
    indexes=True,
    unique_indexes=False,
    compound_indexes=False,
    index_kinds=frozenset({"lexical", "decimal", "token", "qgram"}),
    partial_update=False,
    thread_safe=True,
    fork_safe=True,
    concurrent_processes=True,
    # A version-field save is exact between the threads of one storage (it holds the
    # storage lock), not against other processes: ttserver has no conditional replace
    # (see _compare_and_store below).
    compare_and_swap_across_processes=False,
    persistent=True,
    networked=True,
    # Killing a client loses nothing the server acknowledged (the server has it).
    crash_safe=True,
)

#: ``misc setindex`` type numbers (``TDBIT*``) with the keep flag: an existing index is
#: left alone rather than rebuilt.
_KEEP: Final = 1 << 24
_INDEX_NUMBERS: Final = {"lexical": 0, "decimal": 1, "token": 2, "qgram": 3}
_SETORDER: Final = {int(o): b"\x00" + o.name.encode("ascii") for o in Order}
_OP_NAMES: Final = {int(c): c.name for c in Cond if c < Cond.NEGATE}
_HINT: Final = b"\x00\x00[[HINT]]\n"
#: An operator each index kind serves, to find out from Tokyo's hint which one exists.
_INDEX_PROBES: Final = (
    ("lexical", Cond.STREQ, b"(STREQ)"),
    ("decimal", Cond.NUMEQ, b"(NUMEQ)"),
    ("token", Cond.STROR, b"(STROR)"),
    ("qgram", Cond.FTSPH, b"(FTS)"),
)


class Settings(BaseSettings):
    """Settings of the Tokyo Tyrant backend."""

    #: The server's host name or address.
    host: str = DEFAULT_HOST
    #: The server's TCP port.
    port: int = DEFAULT_PORT
    #: A unix socket to connect to instead of host and port (``ttserver -host PATH -port 0``).
    socket: str | None = None
    #: Seconds to wait for a connection and for each reply; None waits forever.
    timeout: float | None = 10.0
    #: Connections kept open for reuse (one per thread working at once is enough).
    pool_size: int = 8

    @pydantic.field_validator("port")
    @classmethod
    def _valid_port(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("must be between 0 and 65535")
        return value

    @pydantic.field_validator("timeout")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be more than 0, or None to wait forever")
        return value


class Storage(TokyoStorage):
    """Records in a table database served by Tokyo Tyrant, one column per top-level field."""

    features: ClassVar[Features] = features
    query_class: ClassVar[type[BaseQuery[Any]]] = Query
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("tokyo-tyrant", "tokyo_tyrant")
    settings: Settings
    # Each key a search returns costs the server a record read (the kind gates) and the
    # wire a transfer: a top 10 asking for 75 keys took 4x the server time of one asking
    # for 21 (docs/tokyo_tyrant.md, Performance).
    _ties_ahead: ClassVar[int] = 0
    # ... and the kind gates of an ordered slice are checked on the records loaded
    # rather than by the server reading each candidate (see TokyoStorage._top_keys).
    _gates_on_loaded_top: ClassVar[bool] = True
    # An empty value under a lexical or decimal index makes Tokyo Cabinet abort the
    # process holding the file: here that is ttserver.
    _aborted_by_empty_values: ClassVar[str] = "the server"

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        """``tokyo-tyrant://host:port?timeout=5`` (query parameters are settings)."""
        parts = urlsplit(url)
        settings: dict[str, Any] = {}
        if parts.hostname:
            settings["host"] = parts.hostname
        if parts.port is not None:
            settings["port"] = parts.port
        for key, value in parse_qsl(parts.query):
            settings[key] = None if value.lower() == "none" and key == "timeout" else value
        return settings

    # ------------------------------------------------------------------ lifecycle

    def _open(self) -> None:
        s = self.settings
        self._client = Client(
            s.host, s.port, timeout=s.timeout, path=s.socket, pool_size=s.pool_size
        )
        self._known_indexes: dict[bytes, str] = {}
        self._indexes_lock = threading.Lock()
        stat = self._client.stat()
        kind = stat.get("type")
        if kind != "table":
            self._client.close()
            raise ConfigurationError(
                f"Tokyo Tyrant at {self._client.address} serves a {kind or 'unknown'!r} "
                f"database, not a table database: start ttserver on a file ending in .tct "
                f"(for example: ttserver storage.tct); a name without that suffix gives a "
                f"database without columns, which nothing could be queried in"
            )
        self._server_path = stat.get("path", "")
        self._known_indexes.update(_scan_indexes(self._server_path))

    def _close(self) -> None:
        self._client.close()

    @property
    def location(self) -> str | None:
        """The server (``host:port`` or its unix socket) and the file it serves."""
        where = self._client.address
        return f"{where} ({self._server_path})" if self._server_path else where

    @property
    def client(self) -> Client:
        """The protocol client (after ``fork()``, it holds none of the parent's sockets)."""
        return self._client

    # ---------------------------------------------------------------- records

    def _load(self, pk: str) -> dict[str, Any] | None:
        columns = self.client.table_record(pk.encode("utf-8"))
        return None if columns is None else decode_record(columns)

    def _load_many(self, pks: list[str]) -> list[dict[str, Any] | None]:
        raw = self._load_raw([pk.encode("utf-8") for pk in pks])
        return [None if c is None else decode_record(c) for c in raw]

    def _load_raw(self, keys: list[bytes]) -> list[dict[bytes, bytes] | None]:
        # Pipelined misc get: binary-safe (mget joins columns with NUL, which values
        # may hold) and still one round trip per batch.
        if len(keys) <= BATCH_SIZE:
            return self.client.table_records(keys)
        out: list[dict[bytes, bytes] | None] = []
        for start in range(0, len(keys), BATCH_SIZE):
            out.extend(self.client.table_records(keys[start : start + BATCH_SIZE]))
        return out

    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        return self.client.table_put(pk.encode("utf-8"), columns_of(record), keep=not overwrite)

    def _save_batch(self, start: int, batch: list[Any], written: list[str]) -> None:
        # Plain mappings go in one pipelined round trip per batch; without transactions
        # the records before a failing one stay written (as the contract says).
        if batch_has_documents(batch):
            super()._save_batch(start, batch, written)
            return
        records, failure = batch_records(start, batch)
        pks = self._new_pks(len(records))
        # Encoded lazily: the first requests are on their way while the rest are made.
        args = (
            [pk.encode("utf-8"), *columns_of(record)]
            for pk, record in zip(pks, records, strict=True)
        )
        replies = self.client.misc_many(b"putkeep", args, write=True, count=len(records))
        for (ok, _), pk, record in zip(replies, pks, records, strict=True):
            while not ok:
                # A generated pk that clashes (however unlikely) is replaced, never
                # written over the record that has it.
                pk = self._new_pk()
                ok = self.client.table_put(pk.encode("utf-8"), columns_of(record), keep=True)
            written.append(pk)
        if failure is not None:
            index, error = failure
            raise BulkWriteError(
                f"save_many failed at item {index}: {error}", index=index, written_pks=written
            ) from error

    def _remove(self, pk: str) -> bool:
        return self.client.table_out(pk.encode("utf-8"))

    def _keys(self) -> Iterator[str]:
        # In pk order, sorted in bounded memory (see _sorted_keys): no list of every key.
        return (decode_pk(k) for k in self._sorted_keys(None, False))

    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with contextlib.closing(self._sorted_keys(None, False)) as keys:
            yield from self._streamed_records(keys)

    def _records(
        self, keys: list[bytes], gates: tuple[TCCond, ...] = ()
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        if len(keys) <= BATCH_SIZE:
            # One batch (the usual lookup): a list, without a generator's frame.
            return iter(
                [
                    (decode_pk(key), decode_record(columns))
                    for key, columns in zip(keys, self._load_raw(keys), strict=True)
                    if columns is not None
                    and (not gates or gates_hold(gates, columns.get(TYPES_COLUMN)))
                ]
            )
        return self._batched_records(keys, gates)

    def _batched_records(
        self, keys: list[bytes], gates: tuple[TCCond, ...]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        for start in range(0, len(keys), BATCH_SIZE):
            batch = keys[start : start + BATCH_SIZE]
            for key, columns in zip(batch, self._load_raw(batch), strict=True):
                if columns is None:
                    continue
                if gates and not gates_hold(gates, columns.get(TYPES_COLUMN)):
                    continue
                yield decode_pk(key), decode_record(columns)

    def _count(self) -> int:
        return self.client.rnum()

    def _contains(self, pk: str) -> bool:
        return self.client.vsiz(pk.encode("utf-8")) >= 0

    def _clear(self) -> None:
        if not self.client.vanish():
            raise PyModelsError(f"Tokyo Tyrant at {self.client.address}: vanish failed")

    # _compare_and_store stays the base class's, and features say
    # compare_and_swap_across_processes=False. Creating (expected None) is atomic on the
    # server: it is a putkeep. Replacing is exact between the threads of one storage
    # (the base class holds the storage lock), not against other processes: a stock
    # ttserver has no conditional replace (no transactions; misc offers put, putkeep,
    # putcat, out and search ... out, none of which replaces a record only if a column
    # still holds a value; only a Lua extension, in a ttserver built with Lua and started
    # with -ext, could run the check and the put under one record lock). Deleting the
    # matching version with search ... out and then putting the new one would be atomic
    # among such writers, but readers would meanwhile see no record, and a client dying
    # between the two would lose an acknowledged record. docs/tokyo_tyrant.md says so.

    # ----------------------------------------------------------------- indexes

    def _index_column(self, col: bytes, kind: str | None, name: str) -> None:
        with self._indexes_lock:
            current = self._known_indexes.get(col)
            wanted = kind or current or "lexical"
            if current == wanted:
                return
            self._refuse_empty_values(col, wanted)
            number = _INDEX_NUMBERS[wanted]
            if current is not None:
                # Another kind is asked for than the file has: drop it, then build.
                self.client.setindex(col, b"void")
                if not self.client.setindex(col, b"%d" % number):
                    raise PyModelsError(f"Tokyo Tyrant: setindex {col!r} failed")
            else:
                # With the keep flag an index the server has already (one this storage
                # could not see: the server runs elsewhere) is left as it is rather than
                # rebuilt on every open; its kind changes which conditions Tokyo can
                # answer from it, never the results.
                self.client.setindex(col, b"%d" % (number | _KEEP))
            self._known_indexes[col] = wanted

    def _stored_index_kind(self, col: bytes) -> str | None:
        return self.server_index_kind(col)

    def server_index_kind(self, column: bytes) -> str | None:
        """The kind of the served file's index on ``column``, or None.

        Read from the index files beside the file when the server runs on this machine;
        otherwise asked of the server: Tokyo's hint names the index a condition of each
        kind's operator would use (Tyrant has no command that lists indexes).
        """
        path = self._server_path
        if path and os.path.isabs(path) and os.path.exists(path):
            return _scan_indexes(path).get(column)
        for kind, op, served in _INDEX_PROBES:
            args = [*_cond_args([TCCond(column, op, b"0")]), b"setlimit\x001\x000", b"hint"]
            used = b'using an index: "' + column + b'"'
            for element in self.client.search(args):
                # 'using an index: "col" asc (STREQ)' when the index serves the operator
                # ('(FTS)' for q-grams); '(all)' when another kind only orders or scans.
                if element.startswith(_HINT) and used in element and served in element:
                    return kind
        return None

    def _count_empty(self, col: bytes) -> int:
        (count,) = self.client.search([*_cond_args([TCCond(col, Cond.STREQ, b"")]), b"count"])
        return int(count)

    def _index_map(self) -> Mapping[bytes, str]:
        return self._known_indexes

    # ------------------------------------------------------------ query support

    def _search(
        self,
        blocks: Sequence[Block],
        order: tuple[bytes, int] | None,
        limit: int,
        skip: int,
        tail: Sequence[bytes] = (),
    ) -> list[bytes]:
        """One ``misc search`` (a metasearch for several blocks); ``tail`` adds
        sub-commands (``count``, ``out``, ``hint``), whose elements come back instead."""
        args = _search_args(blocks, order, limit, skip, tail)
        return self.client.search(args, write=b"out" in tail)

    def _pk_ordered_keys(self, plan: Plan, descending: bool) -> Generator[bytes, None, None] | None:
        """The plan's keys in pk order, read in one request and sorted in bounded memory.

        Every key (no blocks) or one search block is :meth:`_sorted_keys`. A union with
        blocks checked in Python is :meth:`_merged_keys`: the checked blocks' keys pass
        their checks on their records before they join.
        """
        blocks = plan.blocks
        if blocks is None:
            return self._sorted_keys(None, descending)
        if all(b.check is None for b in blocks):
            return self._sorted_keys([b.conds for b in blocks], descending)
        return self._merged_keys(blocks, descending)

    def _sorted_keys(
        self, blocks: Sequence[Block] | None, descending: bool
    ) -> Generator[bytes, None, None]:
        """Keys of the union of ``blocks`` (None: every key) in pk order, each once.

        One request lists them: ``fwmkeys`` with the empty prefix for every key (the
        key list alone, no record read), else one search, a metasearch for a union
        (which merges the blocks' keys on the server). Its reply goes into a
        :class:`~pymodels.spill.KeySorter` as it is read off the socket, so the client holds
        at most a run of keys whatever the result's length, and the server searches
        once: paging a sorted search instead made it search and sort the whole result
        again for every page. The keys are those of the moment of the search; records
        are loaded as the stream reaches them (one deleted meanwhile is left out).
        """
        with KeySorter[bytes]("the pks of a query") as sorter:

            def consume(keys: Iterator[bytes]) -> Iterable[bytes]:
                sorter.close()  # a search sent again on a fresh connection starts over
                return sorter.sort(keys, descending=descending)

            client = self.client
            if blocks is None:
                ordered = client.fwmkeys_each(b"", consume)
            else:
                ordered = client.search_each(_search_args(blocks, None, -1, 0), consume)
            yield from ordered

    def _column_ordered_keys(self, plan: Plan, order: tuple[bytes, int]) -> Iterator[bytes]:
        """The keys of one search ordered by a column, spooled in bounded memory: the
        reply goes into a :class:`~pymodels.spill.KeySorter` as it is read, each key
        with its place in the reply (so the runs keep the server's order and merge by
        it), and comes back out as the stream goes."""
        if plan.nothing:
            return iter(())
        blocks = [()] if plan.blocks is None else [b.conds for b in plan.blocks]
        return self._spooled_keys(_search_args(blocks, order, -1, 0))

    def _spooled_keys(self, args: list[bytes]) -> Generator[bytes, None, None]:
        with KeySorter[tuple[int, bytes]]("the keys of a query") as sorter:

            def consume(keys: Iterator[bytes]) -> Iterable[tuple[int, bytes]]:
                sorter.close()  # a search sent again on a fresh connection starts over
                return sorter.sort(enumerate(keys))

            for _, key in self.client.search_each(args, consume):
                yield key

    def _merged_keys(
        self, blocks: Sequence[PlanBlock], descending: bool
    ) -> Generator[bytes, None, None]:
        """Keys of the union of ``blocks`` in pk order, each once: the blocks without a
        check as :meth:`_sorted_keys`, each checked block's keys filtered by its check
        (:meth:`_passing`), merged; a key found by two streams comes out once (equal
        keys meet side by side in a merge of ordered streams)."""
        sure = [b.conds for b in blocks if b.check is None]
        streams = [self._sorted_keys(sure, descending)] if sure else []
        streams.extend(
            self._passing(self._sorted_keys([b.conds], descending), b.check)
            for b in blocks
            if b.check is not None
        )
        last: bytes | None = None
        for key in heapq.merge(*streams, reverse=descending):
            if key != last:
                yield key
                last = key

    def _count_union(self, blocks: Sequence[PlanBlock]) -> int:
        if any(b.check is not None for b in blocks):
            return sum(1 for _ in self._merged_keys(blocks, False))
        # One metasearch, its keys counted as they arrive: a union's keys are each once
        # in its reply, and none is kept.
        args = _search_args([b.conds for b in blocks], None, -1, 0)
        return self.client.search_each(args, _count)

    def _count_checked(self, plan: Plan) -> int:
        assert plan.blocks is not None
        return self._count_union([b for b in plan.blocks if b.check is not None])

    def _count_block(self, conds: Block) -> int:
        # One round trip: nothing but the number comes back.
        (count,) = self._search([conds], None, -1, 0, tail=[b"count"])
        return int(count)

    def _delete_block(self, conds: Block) -> int:
        # search ... out: the server deletes under its lock (a metasearch would not
        # delete at all) and reports how many it took.
        (count,) = self._search([conds], None, -1, 0, tail=[b"out", b"count"])
        return int(count)

    def _delete_keys(self, keys: list[bytes]) -> int:
        replies = self.client.misc_many(b"out", [[k] for k in keys], write=True)
        return sum(1 for ok, _ in replies if ok)

    def _hints(
        self, blocks: Sequence[Block], order: tuple[bytes, int] | None, limit: int, skip: int
    ) -> list[str]:
        elements = self._search(blocks, order, limit, skip, tail=[b"hint"])
        hints = [e[len(_HINT) :] for e in elements if e.startswith(_HINT)]
        return [h.decode("utf-8", "replace").strip() for h in hints[:1]]


# --------------------------------------------------------------------------- helpers


def _search_args(
    blocks: Sequence[Block],
    order: tuple[bytes, int] | None,
    limit: int,
    skip: int,
    tail: Sequence[bytes] = (),
) -> list[bytes]:
    """The arguments of one ``misc search``: the blocks joined by ``next`` (a
    metasearch), the first block's order and limit, then ``tail``."""
    args: list[bytes] = []
    for i, block in enumerate(blocks):
        if i:
            args.append(b"next")
        args.extend(_cond_args(block))
        if i == 0:
            if order is not None:
                args.append(b"setorder\x00" + order[0] + _SETORDER[order[1]])
            if limit >= 0 or skip:
                args.append(b"setlimit\x00%d\x00%d" % (limit, skip))
    args.extend(tail)
    return args


def _count(keys: Iterator[bytes]) -> int:
    return sum(1 for _ in keys)


def columns_of(record: Mapping[str, Any]) -> list[bytes]:
    """A record's columns as ``misc put`` arguments: name, value, name, value, ...

    The same columns, in the same text, as the Cabinet backend writes (one encoder:
    :func:`~pymodels.ext._tokyo._columns.encode_dump`).
    """
    return parse_list(encode_dump(record))


def _cond_args(conds: Iterable[TCCond]) -> list[bytes]:
    # Every query sends the same few columns and operators: their part is made once.
    return [_cond_head(c.col, c.op, c.negate, c.noidx) + c.expr for c in conds]


@functools.lru_cache(maxsize=1024)
def _cond_head(col: bytes, op: int, negate: bool, noidx: bool) -> bytes:
    """``addcond``, the column and the operator of a condition, up to its operand."""
    name = ("~" if negate else "") + ("+" if noidx else "") + _OP_NAMES[op]
    return b"addcond\x00" + col + b"\x00" + name.encode("ascii") + b"\x00"


def _scan_indexes(path: str) -> dict[bytes, str]:
    """Indexed columns of the served file, from the index files beside it, when the
    server runs on this machine (else none are known until this storage makes some)."""
    if not path or not os.path.isabs(path):
        return {}
    return scan_index_files(*os.path.split(path))
