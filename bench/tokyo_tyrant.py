"""pymodels on Tokyo Tyrant next to raw protocol round trips doing the same work.

Starts a throwaway server (:mod:`pymodels.testing.tyrant`: a real ``ttserver`` when
``PYMODELS_TEST_TTSERVER`` names one, else the project's test server; the header line
says which), loads the workload of ``workload.py`` (N records of six fields; lexical
index on email, lexical on name, decimal on age) and times, over one connection and from
4 threads sharing one storage (or one raw client):

* ``save``: ``save_many`` (batches of 1000) / raw pipelined ``misc putkeep`` of the same
  columns, 1000 per round trip;
* ``get``: ``storage.get(None, pk)`` / raw ``misc get`` (one round trip each);
* ``email_eq``: ``list(query.where(email=...))`` / raw ``misc search`` (indexed STREQ)
  then ``misc get`` of the hit (a query returns its records: two round trips);
* ``top10``: ``list(query.where(name__startswith=p).order_by("name")[:10])`` / raw
  search with ``setorder``/``setlimit`` then the 10 ``misc get`` pipelined;
* ``count_gt``: ``query.where(age__gt=a).count()`` / raw ``misc search`` with ``NUMGT``
  and ``count`` (decimal index on age; about half the records match).

    python bench/tokyo_tyrant.py                    # N = 20k, medians of 3 runs
    PYMODELS_TEST_TTSERVER=/path/to/ttserver python bench/tokyo_tyrant.py

Client and server share the machine's cores: figures are round-trip bound, and noisy on
a loaded machine. So each metric alternates the two sides within one run (A B, then
B A in the next run) over the same records (the reads run on what pymodels saved), the
ratio shown is the median of the per-run ratios, and next to it is each side's client
CPU per operation (``time.process_time``: this process only, not the server), which
the machine's load hardly moves. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
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


def timed(count: int, fn: Callable[[], object]) -> tuple[float, float]:
    """(operations per second, client CPU microseconds per operation) of ``fn``."""
    cpu = time.process_time()
    ops = rate(count, fn)
    return ops, (time.process_time() - cpu) / count * 1e6


Side = dict[str, Callable[[list[Any]], None]]


def threaded(fn: Callable[[list[Any]], None]) -> Callable[[list[Any]], None]:
    """``fn`` over the items split between :data:`THREADS` threads."""

    def run(items: list[Any]) -> None:
        parts = split(items, THREADS)
        in_threads(THREADS, lambda t: fn(parts[t]))

    return run


def pymodels_side(s: Any) -> Side:
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

    def count_gt(items: list[int]) -> None:
        for age in items:
            q.where(age__gt=age).count()

    return {"get": gets, "email_eq": email_eq, "top10": top10, "count_gt": count_gt}


def raw_side(c: Client) -> Side:
    def gets(items: list[str]) -> None:
        get = c.table_get
        for k in items:
            get(k.encode())

    def email_eq(items: list[str]) -> None:
        for e in items:
            found = c.search([b"addcond\x00email\x00STREQ\x00" + e.encode()])
            c.misc_many(b"get", [[k] for k in found], write=False)

    def top10(items: list[str]) -> None:
        for p in items:
            found = c.search(
                [
                    b"addcond\x00name\x00STRBW\x00" + p.encode(),
                    b"setorder\x00name\x00STRASC",
                    b"setlimit\x0010\x000",
                ]
            )
            c.misc_many(b"get", [[k] for k in found], write=False)

    def count_gt(items: list[int]) -> None:
        for age in items:
            c.search([b"addcond\x00age\x00NUMGT\x00%d" % age, b"count"])

    return {"get": gets, "email_eq": email_eq, "top10": top10, "count_gt": count_gt}


def raw_save(c: Client, args: list[list[bytes]]) -> None:
    for start in range(0, len(args), 1000):
        c.misc_many(b"putkeep", args[start : start + 1000], write=True)


Samples = dict[str, list[tuple[float, float, float, float]]]


def one_run(s: Any, c: Client, docs: list[dict[str, Any]], seed: int, out: Samples) -> None:
    """One run of every metric, each side once, in an order that flips with the seed."""
    rng = random.Random(seed)
    n = len(docs)
    flip = seed % 2 == 1
    # The same columns pymodels writes, encoded before timing: the raw side is the
    # protocol's cost alone.
    args = [[b"k%08d" % i, *columns_of(d)] for i, d in enumerate(docs)]
    arg_parts = split(args, THREADS)
    doc_parts = split(docs, THREADS)
    saves: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "save": (lambda: s.save_many(docs), lambda: raw_save(c, args)),
        "save_4t": (
            lambda: in_threads(THREADS, lambda t: s.save_many(doc_parts[t])),
            lambda: in_threads(THREADS, lambda t: raw_save(c, arg_parts[t])),
        ),
    }
    for name, (ours, theirs) in saves.items():
        got: dict[str, tuple[float, float]] = {}
        for side in ("raw", "pymodels") if flip else ("pymodels", "raw"):
            s.clear()
            got[side] = timed(n, ours if side == "pymodels" else theirs)
        out.setdefault(name, []).append((*got["pymodels"], *got["raw"]))
    s.clear()
    pks = s.save_many(docs)
    picks = [pks[rng.randrange(n)] for _ in range(QUERIES)]
    emails = [docs[rng.randrange(n)]["email"] for _ in range(QUERIES)]
    prefixes = [docs[rng.randrange(n)]["name"][:-2] for _ in range(QUERIES // 4)]
    ages = [rng.randrange(18, 91) for _ in range(QUERIES // 20)]
    items = {"get": picks, "email_eq": emails, "top10": prefixes, "count_gt": ages}
    a, b = pymodels_side(s), raw_side(c)
    for metric, work in items.items():
        for name, threads in ((metric, False), (f"{metric}_4t", True)):
            got = {}
            for side in ("raw", "pymodels") if flip else ("pymodels", "raw"):
                fn = (a if side == "pymodels" else b)[metric]
                got[side] = timed(len(work), partial(threaded(fn) if threads else fn, work))
            out.setdefault(name, []).append((*got["pymodels"], *got["raw"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000, help="records (default 20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of")
    args = parser.parse_args(argv)
    docs = make_records(args.n)
    samples: Samples = {}
    load_before = os.getloadavg()
    with TemporaryTyrant() as tt, pymodels.get_storage(tt.url) as s:
        s.create_index("email")
        s.create_index("name")
        s.create_index("age", kind="decimal")
        c = Client(tt.host, tt.port)
        for seed in range(args.runs):
            one_run(s, c, docs, seed, samples)
        c.close()
        kind = "real ttserver" if tt.real else "the project's test server"
    load_after = os.getloadavg()
    med = statistics.median
    print(f"Tokyo Tyrant ({kind}), N={args.n:,}, {args.runs} runs alternating A B / B A")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (1 min)")
    print(
        f"  {'metric':<12}{'pymodels/s':>11}{'raw/s':>9}{'ratio':>7}"
        f"{'cpu us/op pymodels':>20}{'raw':>6}"
    )
    for name, rows in samples.items():
        ratio = med(raw_ops / ours_ops for ours_ops, _, raw_ops, _ in rows)
        ours = med(r[0] for r in rows)
        raw = med(r[2] for r in rows)
        cpu_ours = med(r[1] for r in rows)
        cpu_raw = med(r[3] for r in rows)
        print(
            f"  {name:<12}{ours:>11,.0f}{raw:>9,.0f}{ratio:>6.2f}x"
            f"{cpu_ours:>20,.0f}{cpu_raw:>6,.0f}"
        )
    print("ratio = median over runs of raw/pymodels (1.00x = parity); _4t: 4 threads")
    print("sharing one storage/client; cpu: this process's CPU per operation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
