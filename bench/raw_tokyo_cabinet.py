"""Raw Tokyo Cabinet throughput through pymodels' own binding, with no pymodels types involved.

This is the floor the Tokyo Cabinet backend is measured against: the simplest correct binding
calls on bytes, nothing else. Workload (as in shared/notes/performance.md): N records of six
columns (name, unique email, age, score, city of 50 values, tags as text), primary keys
"1".."N"; lexical indexes on email and name. Ages run 18-90 independently of the city
(about 27 records of each age per city), so that ordering a city's records by age is
not a run of ties (``workload.py``'s ages are one per city).

Usage:
    python bench/raw_tokyo_cabinet.py            # N = 100k
    python bench/raw_tokyo_cabinet.py --n 1000000

What this floor does not do, and pymodels must (so part of every ratio is the contract,
not overhead): values come back as bytes, not typed values; an ordered query returns
Tokyo's order, whose runs of equal ages come in no defined order (pymodels breaks ties
by pk, so a page that ends inside a run needs the whole run's keys); nothing checks that
every ``age`` is a number Tokyo compares exactly, or that a matched ``email`` is a str
(pymodels proves such facts about a column with one full scan the first time a query
relies on them, then keeps them from its own writes: the ``*_first`` rows).

Each figure is the median of three runs in this process, each on a fresh file. The project-level
benchmark imports :func:`run` and gets the figures as a dict of operations per second.
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import tempfile
from pathlib import Path

from workload import rate

from pymodels.ext.tokyo_cabinet._binding import Cond, IndexType, OpenMode, Order, TableDB

Record = tuple[bytes, dict[bytes, bytes]]

#: What each figure measures (all in operations per second).
METRICS: dict[str, str] = {
    "put_tx": "bulk put, one transaction, no index",
    "put": "one put per record, no transaction, no index",
    "put_tx_indexed": "bulk put, one transaction, email + name lexical indexes maintained",
    "get": "get by primary key, random order",
    "email_eq": "indexed STREQ on email (1 hit), then get the record",
    "email_eq_first": "the first such query after the load (1 / its seconds)",
    "name_prefix": "indexed STRBW on name (100 hits), then get every record",
    "email_eq_keys": "indexed STREQ on email (1 hit), keys only",
    "name_prefix_keys": "indexed STRBW on name (100 hits), keys only",
    "ordered_limit": "indexed STREQ on city, ordered by age (NUMDESC) in the engine, 10 records",
    "ordered_limit_first": "the first such query after the city and age indexes are made",
    "count_age": "how many records have age > 50 (NUMGT on a decimal index, count only)",
}

#: Reference figures from shared/notes/tokyo.md section 6 and performance.md (ctypes, 100k).
REFERENCE: dict[str, str] = {
    "put_tx": "154k/s (put, no tx, no index; 3 columns)",
    "put": "154k/s (put, no tx, no index; 3 columns)",
    "put_tx_indexed": "88k/s (one tx, 2 indexes; 3 columns)",
    "get": "101k/s",
    "email_eq": "-",
    "email_eq_first": "-",
    "name_prefix": "-",
    "email_eq_keys": "52k/s",
    "name_prefix_keys": "~3.3k/s (0.3 ms per 100-hit STRBW)",
    "ordered_limit": "-",
    "ordered_limit_first": "-",
    "count_age": "20/s for 55k matches (performance.md)",
}

EMAIL_QUERIES = 20_000
PREFIX_QUERIES = 5_000
ORDERED_QUERIES = 2_000
COUNT_QUERIES = 50
COUNT_AGE = b"50"


def make_records(n: int) -> list[Record]:
    """The N records of the workload, as ready-to-store bytes."""
    return [
        (
            b"%d" % i,
            {
                b"name": b"name%07d" % i,  # name[:-2] is a prefix shared by exactly 100 names
                b"email": b"user%d@example.com" % i,
                b"age": b"%d" % (18 + i // 50 * 7 % 73),  # 18-90, ~27 per age within a city
                b"score": b"%.2f" % (i * 37 % 10_000 / 100),
                b"city": b"city%02d" % (i % 50),
                b"tags": b"t%d t%d" % (i % 10, i % 7),
            },
        )
        for i in range(n)
    ]


def _load(db: TableDB, records: list[Record]) -> None:
    put = db.put
    db.tranbegin()
    for pk, cols in records:
        put(pk, cols)
    db.trancommit()


def run_once(n: int, records: list[Record] | None = None, seed: int = 0) -> dict[str, float]:
    """One run of every measurement on fresh files; operations per second by metric."""
    records = records if records is not None else make_records(n)
    rng = random.Random(seed)
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="raw-tc-") as tmp:
        mode = OpenMode.WRITER | OpenMode.CREAT | OpenMode.TRUNC
        with TableDB().open(Path(tmp) / "plain.tct", mode) as db:
            result["put_tx"] = rate(n, lambda: _load(db, records))

        with TableDB().open(Path(tmp) / "single.tct", mode) as db:

            def puts() -> None:
                put = db.put
                for pk, cols in records:
                    put(pk, cols)

            result["put"] = rate(n, puts)

        with TableDB().open(Path(tmp) / "indexed.tct", mode) as db:
            db.setindex("email", IndexType.LEXICAL)
            db.setindex("name", IndexType.LEXICAL)
            result["put_tx_indexed"] = rate(n, lambda: _load(db, records))

            keys = [pk for pk, _ in records]
            rng.shuffle(keys)

            def gets() -> None:
                get = db.get
                for pk in keys:
                    get(pk)

            result["get"] = rate(len(keys), gets)

            # A query's result is its records: "email_eq" and "name_prefix" search and
            # get every hit, as a program using the result must; the "_keys" figures
            # stop at the keys (the work of a count).
            def search(col: bytes, op: int, exprs: list[bytes], fetch: bool) -> None:
                get = db.get
                for expr in exprs:
                    with db.query() as q:
                        q.addcond(col, op, expr)
                        keys = q.search()
                    if fetch:
                        for key in keys:
                            get(key)

            emails = [records[rng.randrange(n)][1][b"email"] for _ in range(EMAIL_QUERIES)]
            prefixes = [records[rng.randrange(n)][1][b"name"][:-2] for _ in range(PREFIX_QUERIES)]
            # The first query after the load apart (run.py reports pymodels' first one
            # apart too: pymodels proves facts about the columns then, see its docs).
            result["email_eq_first"] = rate(
                1, functools.partial(search, b"email", Cond.STREQ, emails[:1], True)
            )
            for suffix, fetch in (("", True), ("_keys", False)):
                result["email_eq" + suffix] = rate(
                    len(emails), functools.partial(search, b"email", Cond.STREQ, emails, fetch)
                )
                result["name_prefix" + suffix] = rate(
                    len(prefixes), functools.partial(search, b"name", Cond.STRBW, prefixes, fetch)
                )

            # city == X ordered by age descending, 10 records: what run.py asks of
            # pymodels (which indexes city and age as here). These indexes are made
            # after the load, so put_tx_indexed keeps measuring two indexes.
            db.setindex("city", IndexType.LEXICAL)
            db.setindex("age", IndexType.DECIMAL)
            cities = [records[rng.randrange(n)][1][b"city"] for _ in range(ORDERED_QUERIES)]

            def ordered(cities: list[bytes] = cities) -> None:
                get = db.get
                for city in cities:
                    with db.query() as q:
                        q.addcond(b"city", Cond.STREQ, city)
                        q.setorder(b"age", Order.NUMDESC)
                        q.setlimit(10)
                        keys = q.search()
                    for key in keys:
                        get(key)

            result["ordered_limit_first"] = rate(1, functools.partial(ordered, cities[:1]))
            result["ordered_limit"] = rate(len(cities), ordered)

            def counts() -> None:
                for _ in range(COUNT_QUERIES):
                    with db.query() as q:
                        q.addcond(b"age", Cond.NUMGT, COUNT_AGE)
                        q.searchcount()

            result["count_age"] = rate(COUNT_QUERIES, counts)
    return result


def run(n: int = 100_000, runs: int = 3) -> dict[str, float]:
    """Median over ``runs`` runs of every metric (operations per second), N records each."""
    records = make_records(n)
    samples = [run_once(n, records, seed=i) for i in range(runs)]
    return {name: statistics.median(s[name] for s in samples) for name in METRICS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of")
    args = parser.parse_args(argv)
    figures = run(args.n, args.runs)
    print(f"Tokyo Cabinet raw binding, N={args.n:,}, median of {args.runs} runs")
    for name, description in METRICS.items():
        print(f"  {name:15} {figures[name]:>12,.0f} ops/s  {description}")
        print(f"  {'':15} {'':>12}        reference: {REFERENCE[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
