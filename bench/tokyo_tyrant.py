"""pymodels on Tokyo Tyrant next to raw protocol round trips doing the same work.

Starts a throwaway server (:mod:`pymodels.testing.tyrant`: a real ``ttserver`` when
``PYMODELS_TEST_TTSERVER`` names one, else the project's test server; the header line
says which), loads the workload of ``workload.py`` (N records of six fields; lexical
index on email, lexical on name) and times, over one connection and from 4 threads
sharing one storage (or one raw client):

* ``save``: ``save_many`` (batches of 1000) / raw pipelined ``misc putkeep`` of the same
  columns, 1000 per round trip;
* ``get``: ``storage.get(None, pk)`` / raw ``misc get`` (one round trip each);
* ``email_eq``: ``list(query.where(email=...))`` / raw ``misc search`` (indexed STREQ)
  then ``misc get`` of the hit (a query returns its records: two round trips);
* ``top10``: ``list(query.where(name__startswith=p).order_by("name")[:10])`` / raw
  search with ``setorder``/``setlimit`` then the 10 ``misc get`` pipelined.

    python bench/tokyo_tyrant.py                    # N = 20k, medians of 3 runs
    PYMODELS_TEST_TTSERVER=/path/to/ttserver python bench/tokyo_tyrant.py

Client and server share the machine's cores: figures are round-trip bound.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
from collections.abc import Callable
from typing import Any

from workload import make_records, rate

import pymodels
from pymodels.ext.tokyo_tyrant._protocol import Client
from pymodels.ext.tokyo_tyrant._storage import columns_of
from pymodels.testing.tyrant import TemporaryTyrant

QUERIES = 2000
THREADS = 4


def in_threads(count: int, work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(t,)) for t in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def measure(
    out: dict[str, float], name: str, fn: Callable[[list[Any]], None], items: list[Any]
) -> None:
    """``name``: ``fn`` over every item in this thread; ``name_4t``: split over 4 threads."""
    out[name] = rate(len(items), lambda: fn(items))
    parts = split(items, THREADS)

    def part(t: int) -> None:
        fn(parts[t])

    out[f"{name}_4t"] = rate(len(items), lambda: in_threads(THREADS, part))


def pymodels_once(url: str, docs: list[dict[str, Any]], seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    n = len(docs)
    out: dict[str, float] = {}
    with pymodels.get_storage(url) as s:
        s.clear()
        s.create_index("email")
        s.create_index("name")
        pks: list[str] = []
        out["save"] = rate(n, lambda: pks.extend(s.save_many(docs)))
        picks = [pks[rng.randrange(n)] for _ in range(QUERIES)]
        emails = [docs[rng.randrange(n)]["email"] for _ in range(QUERIES)]
        prefixes = [docs[rng.randrange(n)]["name"][:-2] for _ in range(QUERIES // 4)]
        q = s.query()

        def gets(items: list[str]) -> None:
            get = s.get
            for pk in items:
                get(None, pk)

        def email_eq(items: list[str]) -> None:
            for e in items:
                list(q.where(email=e))

        def top10(items: list[str]) -> None:
            for p in items:
                list(q.where(name__startswith=p).order_by("name")[:10])

        measure(out, "get", gets, picks)
        measure(out, "email_eq", email_eq, emails)
        measure(out, "top10", top10, prefixes)
        s.clear()
        doc_parts = split(docs, THREADS)

        def save_part(t: int) -> None:
            s.save_many(doc_parts[t])

        out["save_4t"] = rate(n, lambda: in_threads(THREADS, save_part))
    return out


def raw_once(host: str, port: int, docs: list[dict[str, Any]], seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    n = len(docs)
    out: dict[str, float] = {}
    c = Client(host, port)
    c.vanish()
    keys = [b"k%08d" % i for i in range(n)]
    # The same columns pymodels writes, encoded before timing: the raw side is the
    # protocol's cost alone.
    cols = [columns_of(d) for d in docs]
    args = [[k, *cs] for k, cs in zip(keys, cols, strict=True)]

    def save(items: list[list[bytes]]) -> None:
        for start in range(0, len(items), 1000):
            c.misc_many(b"putkeep", items[start : start + 1000], write=True)

    out["save"] = rate(n, lambda: save(args))
    picks = [keys[rng.randrange(n)] for _ in range(QUERIES)]
    emails = [docs[rng.randrange(n)]["email"].encode() for _ in range(QUERIES)]
    prefixes = [docs[rng.randrange(n)]["name"][:-2].encode() for _ in range(QUERIES // 4)]

    def gets(items: list[bytes]) -> None:
        get = c.table_get
        for k in items:
            get(k)

    def email_eq(items: list[bytes]) -> None:
        for e in items:
            found = c.search([b"addcond\x00email\x00STREQ\x00" + e])
            c.misc_many(b"get", [[k] for k in found], write=False)

    def top10(items: list[bytes]) -> None:
        for p in items:
            found = c.search(
                [
                    b"addcond\x00name\x00STRBW\x00" + p,
                    b"setorder\x00name\x00STRASC",
                    b"setlimit\x0010\x000",
                ]
            )
            c.misc_many(b"get", [[k] for k in found], write=False)

    measure(out, "get", gets, picks)
    measure(out, "email_eq", email_eq, emails)
    measure(out, "top10", top10, prefixes)
    c.vanish()
    arg_parts = split(args, THREADS)

    def save_part(t: int) -> None:
        save(arg_parts[t])

    out["save_4t"] = rate(n, lambda: in_threads(THREADS, save_part))
    c.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000, help="records (default 20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of")
    args = parser.parse_args(argv)
    docs = make_records(args.n)
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    with TemporaryTyrant() as tt:
        # Alternating runs (A B A B): both sides see the same drift of a shared machine.
        for seed in range(args.runs):
            ours.append(pymodels_once(tt.url, docs, seed))
            theirs.append(raw_once(tt.host, tt.port, docs, seed))
        kind = "real ttserver" if tt.real else "the project's test server"

    def median(samples: list[dict[str, float]]) -> dict[str, float]:
        return {k: statistics.median(s[k] for s in samples) for k in samples[0]}

    a, b = median(ours), median(theirs)
    print(f"Tokyo Tyrant ({kind}), N={args.n:,}, medians of {args.runs} alternating runs (ops/s)")
    print(f"  {'metric':<12}{'pymodels':>10}{'raw':>10}{'ratio':>7}")
    for name in (
        "save",
        "save_4t",
        "get",
        "get_4t",
        "email_eq",
        "email_eq_4t",
        "top10",
        "top10_4t",
    ):
        print(f"  {name:<12}{a[name]:>10,.0f}{b[name]:>10,.0f}{b[name] / a[name]:>6.2f}x")
    print("ratio = raw / pymodels (1.00x = parity); _4t: 4 threads sharing one storage/client")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
