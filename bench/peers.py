"""pymodels beside the raw engines and its peer libraries, one workload, side by side.

    pip install -e ".[bench]"                  # dataset, sqlite-utils, TinyDB
    python bench/peers.py                      # 100k records, medians of 3
    python bench/peers.py --n 20000 --runs 3 --only pymodels-sqlite,raw-sqlite3,sqlite-utils

The workload is ``workload.make_records`` (name, unique email, age, score, one of 50
cities, two tags). Every library creates its indexes on ``email`` and on ``(city, -age)``
before the insert (where it has indexes: dataset and sqlite-utils index real columns,
Tokyo Cabinet indexes single columns so it gets ``email``, ``city`` and ``age``, shelve and
TinyDB have none), then runs the phases:

* ``insert``: every record, in batches of 1000 where the library batches;
* ``get``: a record by the key the insert gave it, random order;
* ``email``: the record with a given email (indexed equality);
* ``ordered``: ``city == X`` ordered by age descending, 10 records;
* ``count``: how many records have ``age > 50`` (about 55% of them);
* ``scan``: the record with a given name (no index: a full scan).

A query phase runs for about a second (two for ``count``), and at least 12 calls.

Each library runs in a fresh process for each run (``--runs``, default 3), the libraries
alternating within a run so that a noisy machine spreads over all of them; the table shows
medians in operations per second and the peak resident memory of the process. Before any
timing, each process answers a set of probe queries of every query phase, and the parent
compares them with answers computed from the records in plain Python: a library that
answers differently is reported and its figures are not shown.

Raw baselines (the engine driven directly, no pymodels): ``raw-dicts`` (Python dicts and
loops: the memory backend's floor), ``raw-shelve``, ``raw-sqlite3`` (a JSON text column with
``json_extract`` expression indexes, WAL and ``synchronous=NORMAL`` as pymodels sets them)
and ``raw-tokyo_cabinet`` (pymodels' own ctypes binding, as ``raw_tokyo_cabinet.py``). The
``vs raw`` table divides each pymodels figure's time by its engine's raw time (1.00x:
parity; above: slower than raw).

This is a measurement, never a test. Absolute figures move with the machine's load;
compare figures taken in one run. On a loaded machine, ``--cpu`` times every phase in CPU
seconds of the worker process (``time.process_time``: the library's Python and its engine
alike, since every engine here runs in the process) instead of wall-clock seconds, so
that time spent waiting for a core another program holds is not counted.
"""

from __future__ import annotations

import argparse
import dbm
import json
import os
import resource
import shelve
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import workload
from workload import CITIES, each, make_records, random_indices, rate, timed_loop

PHASES = ("insert", "get", "email", "ordered", "count", "scan")
GETS = 10_000
BATCH = 1000
#: Probe queries answered before timing, for the correctness check.
PROBES = 20
COUNT_AGE = 50
#: Each query phase times at least this many calls, past its time budget if need be:
#: a full scan of shelve takes about 0.3 s, and three of them would leave the figure to
#: where three matches happen to lie.
AT_LEAST = 12

Record = dict[str, Any]


# ----------------------------------------------------------------- libraries


class Library:
    """One library doing the workload.

    Each query returns what the library gives a program (a document, a row, a dict);
    :meth:`plain` turns one such answer into a plain record of the six fields for the
    correctness check, outside the timed loops.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def insert(self, records: list[Record]) -> list[Any]:
        """Store every record (indexes exist already); return each one's key, in order."""
        raise NotImplementedError

    def get(self, key: Any) -> Any:
        raise NotImplementedError

    def email(self, email: str) -> Any:
        raise NotImplementedError

    def ordered(self, city: str) -> list[Any]:
        raise NotImplementedError

    def count(self, age: int) -> int:
        raise NotImplementedError

    def scan(self, name: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def plain(self, answer: Any) -> Record | None:
        return None if answer is None else dict(answer)


class PyModels(Library):
    backend = ""
    #: The kind of the age index where indexes are single-column (None: the default).
    age_kind: str | None = None

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        import pymodels

        settings: dict[str, Any] = {"backend": self.backend}
        if self.backend != "memory":
            settings["path"] = str(tmp / f"bench.{self.backend}")
        self.storage = storage = pymodels.get_storage(settings)
        storage.create_index("email")
        if storage.features.compound_indexes:
            storage.create_index(("city", "-age"))
        else:
            storage.create_index("city")
            storage.create_index("age", kind=self.age_kind)
        self.q = storage.query()
        self.by_age = self.q.order_by("-age")

    def insert(self, records: list[Record]) -> list[Any]:
        return self.storage.save_many(records, batch_size=BATCH)

    def get(self, key: Any) -> Any:
        return self.storage.get(None, key)

    def email(self, email: str) -> Any:
        return self.q.where(email=email).first()

    def ordered(self, city: str) -> list[Any]:
        return list(self.by_age.where(city=city)[:10])

    def count(self, age: int) -> int:
        return self.q.where(age__gt=age).count()

    def scan(self, name: str) -> Any:
        return self.q.where(name=name).first()

    def close(self) -> None:
        self.storage.close()


class PyModelsMemory(PyModels):
    backend = "memory"


class PyModelsShelve(PyModels):
    backend = "shelve"


class PyModelsSQLite(PyModels):
    backend = "sqlite"


class PyModelsTokyo(PyModels):
    backend = "tokyo_cabinet"
    # Numbers index as numbers, as raw-tokyo_cabinet's age index (a lexical one cannot
    # serve age > 50 or order by age).
    age_kind = "decimal"


def _top10(hits: Iterable[tuple[Any, Any]]) -> list[Any]:
    """The 10 first by age descending, then key (what a plain program would write)."""
    return [r for _, r in sorted(hits, key=lambda h: (-h[1]["age"], h[0]))[:10]]


class RawDicts(Library):
    """Python dicts and loops: the memory backend's floor."""

    def insert(self, records: list[Record]) -> list[Any]:
        keys = [f"k{i:08}" for i in range(len(records))]
        self.data = dict(zip(keys, records, strict=True))
        return keys

    def get(self, key: Any) -> Record:
        return self.data[key]

    def email(self, email: str) -> Record | None:
        return next((r for r in self.data.values() if r["email"] == email), None)

    def ordered(self, city: str) -> list[Record]:
        return _top10((k, r) for k, r in self.data.items() if r["city"] == city)

    def count(self, age: int) -> int:
        return sum(1 for r in self.data.values() if r["age"] > age)

    def scan(self, name: str) -> Record | None:
        return next((r for r in self.data.values() if r["name"] == name), None)


class RawShelve(Library):
    """stdlib shelve over the dbm module pymodels picks first (dbm.gnu here)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        db = dbm.open(str(tmp / "raw.shelf"), "c")  # noqa: SIM115 - closed by the shelf
        self.shelf: shelve.Shelf[Any] = shelve.Shelf(db)  # type: ignore[arg-type]

    def insert(self, records: list[Record]) -> list[Any]:
        keys = [f"k{i:08}" for i in range(len(records))]
        shelf = self.shelf
        for key, record in zip(keys, records, strict=True):
            shelf[key] = record
        return keys

    def get(self, key: Any) -> Record:
        return self.shelf[key]  # type: ignore[no-any-return]

    def _items(self) -> Iterable[tuple[str, Record]]:
        shelf = self.shelf
        for key in shelf:
            yield key, shelf[key]

    def email(self, email: str) -> Record | None:
        return next((r for _, r in self._items() if r["email"] == email), None)

    def ordered(self, city: str) -> list[Record]:
        return _top10((k, r) for k, r in self._items() if r["city"] == city)

    def count(self, age: int) -> int:
        return sum(1 for _, r in self._items() if r["age"] > age)

    def scan(self, name: str) -> Record | None:
        return next((r for _, r in self._items() if r["name"] == name), None)

    def close(self) -> None:
        self.shelf.close()


class RawSQLite(Library):
    """sqlite3, a JSON text column, json_extract expression indexes (raw_sqlite.py's way)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.conn = conn = sqlite3.connect(tmp / "raw.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE docs (pk TEXT PRIMARY KEY, body TEXT NOT NULL)")
        conn.execute("CREATE INDEX ix_email ON docs (json_extract(body, '$.email'))")
        conn.execute(
            "CREATE INDEX ix_city_age ON docs "
            "(json_extract(body, '$.city'), json_extract(body, '$.age') DESC)"
        )

    def insert(self, records: list[Record]) -> list[Any]:
        keys = [f"k{i:08}" for i in range(len(records))]
        dumps, conn = json.dumps, self.conn
        for start in range(0, len(records), BATCH):
            stop = min(len(records), start + BATCH)
            rows = [(keys[i], dumps(records[i])) for i in range(start, stop)]
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO docs (pk, body) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
        return keys

    def get(self, key: Any) -> Record:
        row = self.conn.execute("SELECT body FROM docs WHERE pk = ?", (key,)).fetchone()
        return json.loads(row[0])  # type: ignore[no-any-return]

    def _first(self, sql: str, value: Any) -> Record | None:
        row = self.conn.execute(sql, (value,)).fetchone()
        return None if row is None else json.loads(row[0])

    def email(self, email: str) -> Record | None:
        sql = "SELECT body FROM docs WHERE json_extract(body, '$.email') = ? LIMIT 1"
        return self._first(sql, email)

    def ordered(self, city: str) -> list[Record]:
        sql = (
            "SELECT body FROM docs WHERE json_extract(body, '$.city') = ? "
            "ORDER BY json_extract(body, '$.age') DESC LIMIT 10"
        )
        return [json.loads(body) for (body,) in self.conn.execute(sql, (city,)).fetchall()]

    def count(self, age: int) -> int:
        sql = "SELECT count(*) FROM docs WHERE json_extract(body, '$.age') > ?"
        return int(self.conn.execute(sql, (age,)).fetchone()[0])

    def scan(self, name: str) -> Record | None:
        sql = "SELECT body FROM docs WHERE json_extract(body, '$.name') = ? LIMIT 1"
        return self._first(sql, name)

    def close(self) -> None:
        self.conn.close()


class RawTokyo(Library):
    """Tokyo Cabinet's table database through pymodels' ctypes binding, bytes in and out."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        from pymodels.ext.tokyo_cabinet._binding import IndexType, OpenMode, TableDB

        mode = OpenMode.WRITER | OpenMode.CREAT | OpenMode.TRUNC
        self.db = db = TableDB().open(tmp / "raw.tct", mode)
        db.setindex("email", IndexType.LEXICAL)
        db.setindex("city", IndexType.LEXICAL)
        db.setindex("age", IndexType.DECIMAL)

    @staticmethod
    def _decode(cols: dict[bytes, bytes]) -> Record:
        return {
            "name": cols[b"name"].decode(),
            "email": cols[b"email"].decode(),
            "age": int(cols[b"age"]),
            "score": float(cols[b"score"]),
            "city": cols[b"city"].decode(),
            "tags": cols[b"tags"].decode().split(" "),
        }

    def insert(self, records: list[Record]) -> list[Any]:
        keys = [b"%d" % i for i in range(len(records))]
        db = self.db
        for start in range(0, len(records), BATCH):
            db.tranbegin()
            for i in range(start, min(len(records), start + BATCH)):
                r = records[i]
                db.put(
                    keys[i],
                    {
                        b"name": r["name"].encode(),
                        b"email": r["email"].encode(),
                        b"age": b"%d" % r["age"],
                        b"score": repr(r["score"]).encode(),
                        b"city": r["city"].encode(),
                        b"tags": " ".join(r["tags"]).encode(),
                    },
                )
            db.trancommit()
        return keys

    def get(self, key: Any) -> Record:
        cols = self.db.get(key)
        assert cols is not None
        return self._decode(cols)

    def _search(
        self,
        col: bytes,
        op: int,
        expr: bytes,
        order: bool = False,
        limit: int = -1,
        by_key: bool = False,
    ) -> list[bytes]:
        from pymodels.ext.tokyo_cabinet._binding import Order

        with self.db.query() as q:
            q.addcond(col, op, expr)
            if order:
                q.setorder(b"age", Order.NUMDESC)
            elif by_key:
                # The primary key's column is the empty name.
                q.setorder(b"", Order.STRASC)
            if limit >= 0:
                q.setlimit(limit)
            return q.search()

    def _records(self, keys: list[bytes]) -> list[Record]:
        get = self.db.get
        return [self._decode(get(k)) for k in keys]  # type: ignore[arg-type]

    def email(self, email: str) -> Record | None:
        from pymodels.ext.tokyo_cabinet._binding import Cond

        found = self._records(self._search(b"email", Cond.STREQ, email.encode(), limit=1))
        return found[0] if found else None

    def ordered(self, city: str) -> list[Record]:
        from pymodels.ext.tokyo_cabinet._binding import Cond

        return self._records(self._search(b"city", Cond.STREQ, city.encode(), True, 10))

    def count(self, age: int) -> int:
        from pymodels.ext.tokyo_cabinet._binding import Cond

        with self.db.query() as q:
            q.addcond(b"age", Cond.NUMGT, b"%d" % age)
            return q.searchcount()

    def scan(self, name: str) -> Record | None:
        """The first match in key order, the work ``first()`` does: without the order
        Tokyo stops at the first hit it meets, which answers the same only because names
        are unique here (and took about half this time at 100k records)."""
        from pymodels.ext.tokyo_cabinet._binding import Cond

        keys = self._search(b"name", Cond.STREQ, name.encode(), limit=1, by_key=True)
        found = self._records(keys)
        return found[0] if found else None

    def close(self) -> None:
        self.db.close()


class Dataset(Library):
    """dataset (SQLAlchemy on SQLite), real columns, WAL and synchronous=NORMAL."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        import dataset

        self.db = db = dataset.connect(f"sqlite:///{tmp / 'dataset.db'}")
        db.query("PRAGMA journal_mode = WAL")
        db.query("PRAGMA synchronous = NORMAL")
        t = db.types
        self.table = table = db.create_table("docs", primary_id="id", primary_type=t.integer)
        for name, kind in (
            ("name", t.text),
            ("email", t.text),
            ("age", t.integer),
            ("score", t.float),
            ("city", t.text),
            ("tags", t.json),
        ):
            table.create_column(name, kind)
        table.create_index(["email"])
        table.create_index(["city", "age"])

    def insert(self, records: list[Record]) -> list[Any]:
        self.table.insert_many(records, chunk_size=BATCH)
        return list(range(1, len(records) + 1))

    def plain(self, answer: Any) -> Record | None:
        if answer is None:
            return None
        out = dict(answer)
        out.pop("id", None)
        return out

    def get(self, key: Any) -> Any:
        return self.table.find_one(id=key)

    def email(self, email: str) -> Any:
        return self.table.find_one(email=email)

    def ordered(self, city: str) -> list[Any]:
        return list(self.table.find(city=city, order_by=["-age"], _limit=10))

    def count(self, age: int) -> int:
        return int(self.table.count(age={"gt": age}))

    def scan(self, name: str) -> Any:
        return self.table.find_one(name=name)

    def close(self) -> None:
        self.db.close()


class SQLiteUtils(Library):
    """sqlite-utils, real columns (tags as JSON text), WAL and synchronous=NORMAL."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        import sqlite_utils
        from sqlite_utils.db import DescIndex

        self.db = db = sqlite_utils.Database(tmp / "sqlite-utils.db")
        db.enable_wal()
        db.execute("PRAGMA synchronous = NORMAL")
        self.table = table = db.table("docs")
        table.create(
            {"id": int, "name": str, "email": str, "age": int, "score": float, "city": str},
            pk="id",
        )
        table.add_column("tags", str)
        table.create_index(["email"])
        table.create_index(["city", DescIndex("age")])

    def insert(self, records: list[Record]) -> list[Any]:
        self.table.insert_all(records, batch_size=BATCH)
        return list(range(1, len(records) + 1))

    def plain(self, answer: Any) -> Record | None:
        if answer is None:
            return None
        out = dict(answer)
        out.pop("id", None)
        out["tags"] = json.loads(out["tags"])  # sqlite-utils stores lists as JSON text
        return out

    def get(self, key: Any) -> Any:
        return self.table.get(key)

    def email(self, email: str) -> Any:
        return next(self.table.rows_where("email = ?", [email], limit=1), None)

    def ordered(self, city: str) -> list[Any]:
        return list(self.table.rows_where("city = ?", [city], order_by="age desc", limit=10))

    def count(self, age: int) -> int:
        return int(self.table.count_where("age > ?", [age]))

    def scan(self, name: str) -> Any:
        return next(self.table.rows_where("name = ?", [name], limit=1), None)

    def close(self) -> None:
        self.db.close()


class TinyDBMemory(Library):
    """TinyDB on its in-memory storage (no indexes: every query scans; no result cache)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        from tinydb import Query, TinyDB
        from tinydb.storages import MemoryStorage

        self.db = TinyDB(storage=MemoryStorage)
        self.Q = Query()

    def insert(self, records: list[Record]) -> list[Any]:
        keys: list[Any] = []
        for start in range(0, len(records), BATCH):
            keys.extend(self.db.insert_multiple(records[start : start + BATCH]))
        return keys

    def get(self, key: Any) -> Any:
        return self.db.get(doc_id=key)

    def email(self, email: str) -> Any:
        return self.db.get(self.Q.email == email)

    def ordered(self, city: str) -> list[Any]:
        return _top10((d.doc_id, d) for d in self.db.search(self.Q.city == city))

    def count(self, age: int) -> int:
        # TinyDB caches query results until the next write: the same count asked
        # again would measure a dict lookup. Each count here counts.
        self.db.clear_cache()
        return int(self.db.count(self.Q.age > age))

    def scan(self, name: str) -> Any:
        return self.db.get(self.Q.name == name)


#: Library name -> class; also the order of the table's rows.
LIBRARIES: dict[str, type[Library]] = {
    "pymodels-memory": PyModelsMemory,
    "raw-dicts": RawDicts,
    "pymodels-shelve": PyModelsShelve,
    "raw-shelve": RawShelve,
    "pymodels-sqlite": PyModelsSQLite,
    "raw-sqlite3": RawSQLite,
    "pymodels-tokyo_cabinet": PyModelsTokyo,
    "raw-tokyo_cabinet": RawTokyo,
    "dataset": Dataset,
    "sqlite-utils": SQLiteUtils,
    "tinydb": TinyDBMemory,
}

#: Each pymodels row and the raw engine it is measured against.
RAW_OF = {
    "pymodels-memory": "raw-dicts",
    "pymodels-shelve": "raw-shelve",
    "pymodels-sqlite": "raw-sqlite3",
    "pymodels-tokyo_cabinet": "raw-tokyo_cabinet",
}


# -------------------------------------------------------------- one process


def probes(records: list[Record]) -> dict[str, list[Any]]:
    """The probe arguments of each query phase (the same for every library)."""
    n = len(records)
    picks = random_indices(n, PROBES, 12345)
    return {
        "get": picks,
        "email": [records[i]["email"] for i in picks] + ["nobody@example.com"],
        "ordered": [*CITIES[:5], "nowhere"],
        "count": [COUNT_AGE, 18, 86, 90],
        "scan": [records[i]["name"] for i in picks[:5]] + ["no such name"],
    }


def answer_probes(lib: Library, keys: list[Any], records: list[Record]) -> dict[str, Any]:
    p, plain = probes(records), lib.plain
    return {
        "get": [plain(lib.get(keys[i])) for i in p["get"]],
        "email": [plain(lib.email(e)) for e in p["email"]],
        "ordered": [[plain(r) for r in lib.ordered(c)] for c in p["ordered"]],
        "count": [lib.count(a) for a in p["count"]],
        "scan": [plain(lib.scan(s)) for s in p["scan"]],
    }


def reference_answers(records: list[Record]) -> dict[str, Any]:
    """What every library must answer, computed with plain Python over the records."""
    p = probes(records)

    def find(field: str, value: Any) -> Record | None:
        return next((r for r in records if r[field] == value), None)

    return {
        "get": [records[i] for i in p["get"]],
        "email": [find("email", e) for e in p["email"]],
        "ordered": [
            _top10((i, r) for i, r in enumerate(records) if r["city"] == c) for c in p["ordered"]
        ],
        "count": [sum(1 for r in records if r["age"] > a) for a in p["count"]],
        "scan": [find("name", s) for s in p["scan"]],
    }


def check_answers(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """How ``got`` differs from the reference (empty: identical).

    Records compare whole (JSON round trip on both sides). An ordered answer must give
    records of that city in the reference's ages, in order: records of equal age may
    come in any order, since the libraries' keys (the tiebreak) differ.
    """
    problems: list[str] = []
    for phase in ("get", "email", "count", "scan"):
        for i, (a, b) in enumerate(zip(got[phase], want[phase], strict=True)):
            if a != b:
                problems.append(f"{phase} probe {i}: got {a!r}, want {b!r}")
    for i, (a, b) in enumerate(zip(got["ordered"], want["ordered"], strict=True)):
        if [r["age"] for r in a] != [r["age"] for r in b]:
            problems.append(f"ordered probe {i}: ages {[r['age'] for r in a]}")
        for r in a:
            if r["city"] != (b[0]["city"] if b else None):
                problems.append(f"ordered probe {i}: a record of city {r['city']!r}")
    return problems


class _CPUClock:
    """Stands in for the time module in ``workload``'s timers: CPU seconds of this process."""

    perf_counter = staticmethod(time.process_time)


def worker(name: str, n: int, seed: int, cpu: bool = False) -> dict[str, Any]:
    """One run of one library in this process: probe answers, figures, peak RSS."""
    if cpu:
        workload.time = _CPUClock  # type: ignore[assignment,attr-defined]
    records = make_records(n)
    by_email = {r["email"]: r for r in records}
    with tempfile.TemporaryDirectory(prefix=f"peers-{name}-") as tmp:
        lib = LIBRARIES[name](Path(tmp))
        try:
            out: dict[str, float] = {}
            keys: list[Any] = []

            def insert() -> None:
                keys.extend(lib.insert(records))

            out["insert"] = rate(n, insert)
            answers = answer_probes(lib, keys, records)
            # An ordered answer's records must be stored records, field for field.
            stray = [
                r for rows in answers["ordered"] for r in rows if by_email.get(r["email"]) != r
            ]
            picks = random_indices(n, GETS, seed)
            out["get"] = rate(GETS, lambda: each(lambda i: lib.get(keys[i]), picks))
            emails = [records[i]["email"] for i in picks]
            out["email"] = timed_loop(lambda i: lib.email(emails[i]), GETS, at_least=AT_LEAST)
            cities = [records[i]["city"] for i in picks]
            out["ordered"] = timed_loop(lambda i: lib.ordered(cities[i]), 2000, at_least=AT_LEAST)
            out["count"] = timed_loop(
                lambda i: lib.count(COUNT_AGE), 200, budget=2.0, at_least=AT_LEAST
            )
            names = [records[i]["name"] for i in picks]
            out["scan"] = timed_loop(lambda i: lib.scan(names[i]), 200, at_least=AT_LEAST)
        finally:
            lib.close()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"figures": out, "answers": answers, "stray": stray[:3], "rss_mb": rss_kb / 1024}


# ------------------------------------------------------------------- parent


def run_worker(name: str, n: int, seed: int, cpu: bool = False) -> dict[str, Any]:
    """:func:`worker` in a fresh interpreter; its JSON answer."""
    cmd = [sys.executable, __file__, "--worker", name, "--n", str(n), "--seed", str(seed)]
    if cpu:
        cmd.append("--cpu")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per library")
    parser.add_argument("--only", default="", help="comma-separated libraries (default: all)")
    parser.add_argument(
        "--cpu", action="store_true", help="time phases in CPU seconds, not wall-clock seconds"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.seed, args.cpu)))
        return 0
    names = [x for x in args.only.split(",") if x] or list(LIBRARIES)
    unknown = [x for x in names if x not in LIBRARIES]
    if unknown:
        parser.error(f"unknown libraries {unknown}; known: {', '.join(LIBRARIES)}")
    taken = workload.provenance()
    want = json.loads(json.dumps(reference_answers(make_records(args.n))))
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    rss: dict[str, float] = {}
    failed: dict[str, str] = {}
    for seed in range(args.runs):
        for name in names:
            if name in failed:
                continue
            result = run_worker(name, args.n, seed, args.cpu)
            if "error" in result:
                failed[name] = result["error"]
                continue
            problems = check_answers(result["answers"], want)
            problems += [f"ordered: {r!r} is not a stored record" for r in result["stray"]]
            if problems:
                failed[name] = f"wrong answers: {'; '.join(problems[:3])}"
                continue
            samples[name].append(result["figures"])
            rss[name] = max(rss.get(name, 0.0), result["rss_mb"])
    medians = {
        name: {p: statistics.median(s[p] for s in runs) for p in PHASES}
        for name, runs in samples.items()
        if runs and name not in failed
    }
    _print(args, names, medians, rss, failed, taken)
    return 1 if failed else 0


def _fmt(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.3g}" if value < 10 else f"{value:.0f}"


def _print(
    args: argparse.Namespace,
    names: list[str],
    medians: dict[str, dict[str, float]],
    rss: dict[str, float],
    failed: dict[str, str],
    taken: str,
) -> None:
    print(f"taken {taken}; load average at the end {workload.load_average()}")
    print(
        f"N={args.n:,}, medians of {args.runs} fresh processes per library, "
        f"ops per {'CPU ' if args.cpu else ''}second "
        f"(SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]})"
    )
    print(f"| library | {' | '.join(PHASES)} | peak RSS |")
    print(f"|---|{'---:|' * len(PHASES)}---:|")
    for name in names:
        if name in medians:
            cells = " | ".join(_fmt(medians[name][p]) for p in PHASES)
            print(f"| {name} | {cells} | {rss[name]:.0f} MB |")
        else:
            print(f"| {name} | {failed.get(name, 'no result')} |")
    rows = [(n, RAW_OF[n]) for n in names if n in RAW_OF and n in medians and RAW_OF[n] in medians]
    if rows:
        print("\nvs raw (raw ops/s / pymodels ops/s: 1.00x is parity, above is slower than raw)")
        print(f"| pymodels on | {' | '.join(PHASES)} |")
        print(f"|---|{'---:|' * len(PHASES)}")
        for name, raw in rows:
            cells = " | ".join(f"{medians[raw][p] / medians[name][p]:.2f}x" for p in PHASES)
            print(f"| {name.removeprefix('pymodels-')} vs {raw} | {cells} |")
    for name, why in failed.items():
        print(f"FAILED {name}: {why}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
