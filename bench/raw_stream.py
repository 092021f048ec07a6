"""The raw drivers streaming records in pk order: the baselines of stream.py and cli_copy.py.

Each class keeps ``(pk, record)`` pairs the way a program without pymodels would with
that driver, and offers the two things those scripts time:

* ``load(items)``: write pairs in batches of 1000 (one transaction each where the engine
  has them);
* ``stream(min_age)``: every pair in pk order, or only those whose ``age`` is above
  ``min_age``, as the plainest correct use of the driver gives them. Where the driver
  can only order by listing every key first (shelve, Tokyo Cabinet, Tokyo Tyrant), it
  does, and the memory that takes is part of the raw figure;
* ``by_age()``: every pair ordered by ``age`` descending, then pk, the same way: the
  engine's sort where it has one (Tokyo's has no pk tiebreak, so its ties come in its
  own order), else a sort of every pair in Python.

Records come back decoded where the engine stores JSON (SQLite, PostgreSQL, MongoDB) and
as the engine's own columns of bytes for Tokyo (``raw_tokyo_cabinet.py``'s floor: no
type decoding).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shelve
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

Pair = tuple[str, Any]
BATCH = 1000


class RawStore(Protocol):
    def load(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None: ...

    def stream(self, min_age: int | None = None) -> Iterator[Pair]: ...

    def by_age(self) -> Iterator[Pair]: ...

    def close(self) -> None: ...


def batches(items: Iterable[Any]) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(itertools.islice(it, BATCH)):
        yield batch


def _decoded(record: dict[Any, Any]) -> dict[str, Any]:
    # Tokyo's columns (bytes) as a JSON store keeps them: text values under text names.
    if all(type(k) is bytes for k in record):
        return {k.decode(): v.decode() for k, v in record.items()}
    return record


class RawMemory:
    """A dict filled in pk order: its insertion order is pk order."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def load(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        self.data.update((pk, _decoded(r)) for pk, r in items)

    def stream(self, min_age: int | None = None) -> Iterator[Pair]:
        if min_age is None:
            return iter(self.data.items())
        return ((pk, r) for pk, r in self.data.items() if r["age"] > min_age)

    def by_age(self) -> Iterator[Pair]:
        return iter(sorted(self.data.items(), key=_age_then_pk))

    def close(self) -> None:
        self.data.clear()


class RawSQLite:
    """``(pk TEXT PRIMARY KEY, body TEXT)``, WAL and ``synchronous=NORMAL``, json.loads per row."""

    def __init__(self, path: str) -> None:
        self.conn = conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS docs (pk TEXT PRIMARY KEY, body TEXT NOT NULL)")

    def load(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        dumps = json.dumps
        for batch in batches(items):
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "INSERT INTO docs (pk, body) VALUES (?, ?)",
                [(pk, dumps(_decoded(r))) for pk, r in batch],
            )
            self.conn.execute("COMMIT")

    def stream(self, min_age: int | None = None) -> Iterator[Pair]:
        loads = json.loads
        if min_age is None:
            rows = self.conn.execute("SELECT pk, body FROM docs ORDER BY pk")
        else:
            sql = "SELECT pk, body FROM docs WHERE json_extract(body, '$.age') > ? ORDER BY pk"
            rows = self.conn.execute(sql, (min_age,))
        return ((pk, loads(body)) for pk, body in rows)

    def by_age(self) -> Iterator[Pair]:
        loads = json.loads
        sql = "SELECT pk, body FROM docs ORDER BY json_extract(body, '$.age') DESC, pk"
        return ((pk, loads(body)) for pk, body in self.conn.execute(sql))

    def close(self) -> None:
        self.conn.close()


class RawShelve:
    """``shelve.open``: pk order means sorting the list of every key."""

    def __init__(self, path: str) -> None:
        # Kept open across calls; close() closes it.
        self.shelf: shelve.Shelf[Any] = shelve.open(path)  # noqa: SIM115

    def load(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for batch in batches(items):
            self.shelf.update((pk, _decoded(r)) for pk, r in batch)

    def stream(self, min_age: int | None = None) -> Iterator[Pair]:
        shelf = self.shelf
        pairs = ((pk, shelf[pk]) for pk in sorted(shelf.keys()))
        if min_age is None:
            return pairs
        return ((pk, r) for pk, r in pairs if r["age"] > min_age)

    def by_age(self) -> Iterator[Pair]:
        shelf = self.shelf
        return iter(sorted(((pk, shelf[pk]) for pk in shelf), key=_age_then_pk))

    def close(self) -> None:
        self.shelf.close()


def _columns(record: dict[str, Any]) -> dict[bytes, bytes]:
    # Tokyo's columns are text: numbers as their digits, the tags list as JSON.
    return {
        k.encode(): (json.dumps(v) if isinstance(v, list) else str(v)).encode()
        for k, v in record.items()
    }


class RawTokyoCabinet:
    """pymodels' ctypes binding on bytes: a search ordered by the pk lists every key."""

    def __init__(self, path: str) -> None:
        from pymodels.ext.tokyo_cabinet._binding import OpenMode, TableDB

        mode = OpenMode.WRITER | OpenMode.CREAT
        self.db = TableDB().open(path, mode)

    def load(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        db = self.db
        for batch in batches(items):
            db.tranbegin()
            for pk, record in batch:
                db.put(pk.encode(), _columns(record))
            db.trancommit()

    def stream(self, min_age: int | None = None) -> Iterator[Pair]:
        from pymodels.ext.tokyo_cabinet._binding import Cond, Order

        with self.db.query() as q:
            if min_age is not None:
                q.addcond(b"age", Cond.NUMGT, str(min_age).encode())
            q.setorder(b"", Order.STRASC)
            keys = q.search()
        get = self.db.get
        return ((key.decode(), get(key)) for key in keys)

    def by_age(self) -> Iterator[Pair]:
        from pymodels.ext.tokyo_cabinet._binding import Order

        with self.db.query() as q:
            q.setorder(b"age", Order.NUMDESC)
            keys = q.search()
        get = self.db.get
        return ((key.decode(), get(key)) for key in keys)

    def close(self) -> None:
        self.db.close()


class RawTyrant:
    """pymodels' protocol client: ``misc search`` ordered by pk, then ``get`` in batches."""

    def __init__(self, host: str, port: int) -> None:
        from pymodels.ext.tokyo_tyrant._protocol import Client

        self.client = Client(host, port)

    def load(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for batch in batches(items):
            args = [[pk.encode(), *_flat(_columns(r))] for pk, r in batch]
            self.client.misc_many(b"put", args, write=True)

    def stream(self, min_age: int | None = None) -> Iterator[Pair]:
        args = [b"setorder\x00\x00STRASC"]
        if min_age is not None:
            args.insert(0, b"addcond\x00age\x00NUMGT\x00%d" % min_age)
        return self._records(self.client.search(args))

    def by_age(self) -> Iterator[Pair]:
        return self._records(self.client.search([b"setorder\x00age\x00NUMDESC"]))

    def _records(self, keys: list[bytes]) -> Iterator[Pair]:
        for batch in batches(keys):
            records = self.client.table_records(batch)
            yield from ((k.decode(), r) for k, r in zip(batch, records, strict=True))

    def close(self) -> None:
        self.client.close()


def _flat(columns: dict[bytes, bytes]) -> list[bytes]:
    return [part for pair in columns.items() for part in pair]


class RawPostgres:
    """psycopg, ``(pk TEXT PRIMARY KEY, body JSONB)``, a server-side cursor of 1000 rows."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = conn = psycopg.connect(url, autocommit=True)
        conn.execute("CREATE TABLE IF NOT EXISTS raw_stream (pk TEXT PRIMARY KEY, body JSONB)")

    def load(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        dumps = json.dumps
        sql = "INSERT INTO raw_stream (pk, body) VALUES (%s, %s::jsonb)"
        for batch in batches(items):
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.executemany(sql, [(pk, dumps(_decoded(r))) for pk, r in batch])

    def stream(self, min_age: int | None = None) -> Iterator[Pair]:
        where = "" if min_age is None else "WHERE (body->'age')::numeric > %s "
        sql = f"SELECT pk, body FROM raw_stream {where}ORDER BY pk"
        return self._rows(sql, () if min_age is None else (min_age,))

    def by_age(self) -> Iterator[Pair]:
        sql = "SELECT pk, body FROM raw_stream ORDER BY (body->'age')::numeric DESC, pk"
        return self._rows(sql, ())

    def _rows(self, sql: str, params: tuple[Any, ...]) -> Iterator[Pair]:
        with self.conn.transaction(), self.conn.cursor(name="raw_stream") as cur:
            cur.itersize = BATCH
            cur.execute(sql, params)
            yield from cur

    def close(self) -> None:
        self.conn.execute("DROP TABLE IF EXISTS raw_stream")
        self.conn.close()


class RawMongo:
    """pymongo, the pk as ``_id``, a cursor sorted by ``_id`` in batches of 1000."""

    def __init__(self, url: str) -> None:
        import pymongo

        self.client: Any = pymongo.MongoClient(url)
        self.coll = self.client.bench_raw.raw_stream

    def load(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for batch in batches(items):
            self.coll.insert_many([{"_id": pk, **_decoded(r)} for pk, r in batch])

    def stream(self, min_age: int | None = None) -> Iterator[Pair]:
        query = {} if min_age is None else {"age": {"$gt": min_age}}
        cursor = self.coll.find(query).sort("_id", 1).batch_size(BATCH)
        return ((doc.pop("_id"), doc) for doc in cursor)

    def by_age(self) -> Iterator[Pair]:
        cursor = self.coll.find().sort([("age", -1), ("_id", 1)]).batch_size(BATCH)
        return ((doc.pop("_id"), doc) for doc in cursor)

    def close(self) -> None:
        self.coll.drop()
        self.client.close()


def _age_then_pk(pair: Pair) -> tuple[int, str]:
    return -pair[1]["age"], pair[0]


def open_raw(backend: str, where: dict[str, Any]) -> RawStore:
    """The raw store for ``backend``: ``where`` holds ``path`` (a file) or a server's settings."""
    if backend == "memory":
        return RawMemory()
    if backend == "sqlite":
        return RawSQLite(where["path"])
    if backend == "shelve":
        return RawShelve(where["path"])
    if backend == "tokyo_cabinet":
        return RawTokyoCabinet(where["path"])
    if backend == "tokyo_tyrant":
        return RawTyrant(where["host"], int(where["port"]))
    if backend == "postgresql":
        return RawPostgres(where["url"])
    if backend == "mongodb":
        return RawMongo(where["url"])
    raise ValueError(f"no raw store for {backend!r}")


def digest(pk: str, record: dict[Any, Any]) -> int:
    """One pair's share of an order-independent hash, alike for a record read from any
    raw store (Tokyo's columns of bytes and a decoded dict of the same values agree)."""
    columns = record if all(type(k) is bytes for k in record) else _columns(record)
    text = repr((pk, sorted(columns.items())))
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


def copy(src: RawStore, dst: RawStore, verify: bool = True) -> int:
    """Copy every pair of ``src`` into ``dst`` (in pk order, batches of 1000), then read
    ``dst`` back and compare count and hash, as ``pymodels copy`` does; the count."""
    total = count = 0

    def hashed() -> Iterator[Pair]:
        nonlocal total, count
        for pk, record in src.stream():
            total = (total + digest(pk, record)) % MODULUS
            count += 1
            yield pk, record

    dst.load(hashed())
    if verify:
        back = seen = 0
        for pk, record in dst.stream():
            back = (back + digest(pk, record)) % MODULUS
            seen += 1
        if (seen, back) != (count, total):
            raise SystemExit(f"raw copy differs: {count} records copied, {seen} read back")
    return count


MODULUS = 1 << 256
