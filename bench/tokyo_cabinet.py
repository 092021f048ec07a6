"""pymodels on Tokyo Cabinet next to raw binding calls on the same workload.

Runs the workload of ``raw_tokyo_cabinet.py`` (N records of six fields: name, unique
email, age, score, city of 50 values, two tags; lexical indexes on email and name)
through pymodels' public API, and the raw figures in the same process, and prints them
side by side:

    python bench/tokyo_cabinet.py                  # N = 100k, medians of 3 runs
    python bench/tokyo_cabinet.py --n 1000000

Each row names the raw figure it is compared with. A query returns its records, so
``email_eq`` and ``name_prefix`` compare with the raw search followed by a raw get of
every hit (bytes, no types): the least a program does to use what a query found. The
``count`` rows compare with the raw search alone (keys only), the work of a count.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from typing import Any

import raw_tokyo_cabinet as raw
from workload import each, rate

import pymodels

#: Metric -> (what it measures, the raw metric it compares with).
METRICS: dict[str, tuple[str, str]] = {
    "put_tx": ("save_many, one transaction (batch_size=N), no index", "put_tx"),
    "put_tx_indexed": (
        "save_many, one transaction, email + name lexical indexes",
        "put_tx_indexed",
    ),
    "put_batches": ("save_many, default batches of 1000, indexes", "put_tx_indexed"),
    "save": ("storage.save(doc, primary_key=...) per record, no index", "put"),
    "save_no_space_check": ("the same with min_free_space=None (no free-space check)", "put"),
    "get": ("storage.get(None, pk), random order", "get"),
    "email_eq": ("list(query.where(email=...)), 1 document", "email_eq"),
    "email_eq_count": ("query.where(email=...).count()", "email_eq_keys"),
    "name_prefix": ("list(query.where(name__startswith=...)), 100 documents", "name_prefix"),
    "name_prefix_count": ("query.where(name__startswith=...).count()", "name_prefix_keys"),
    "ordered_limit": (
        "list(query.where(city=...).order_by('-age')[:10]) (city, decimal age indexes)",
        "ordered_limit",
    ),
    "count_age": ("query.where(age__gt=50).count()", "count_age"),
}


def records(n: int) -> list[dict[str, Any]]:
    """The raw workload's records with their natural types (int, float, list)."""
    return [
        {
            "name": f"name{i:07d}",
            "email": f"user{i}@example.com",
            "age": 18 + i // 50 * 7 % 73,
            "score": i * 37 % 10_000 / 100,
            "city": f"city{i % 50:02d}",
            "tags": [f"t{i % 10}", f"t{i % 7}"],
        }
        for i in range(n)
    ]


def run_once(n: int, docs: list[dict[str, Any]], seed: int) -> dict[str, float]:
    """One run of every pymodels measurement on fresh files; operations per second."""
    rng = random.Random(seed)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pm-tc-") as tmp:
        with pymodels.get_storage({"backend": "tokyo_cabinet", "path": f"{tmp}/plain.tct"}) as s:
            out["put_tx"] = rate(n, lambda: s.save_many(docs, batch_size=n))
        # Single saves with and without the free-space check (issue 14), alternated
        # within the run so that both see the same machine.
        keys = [str(i) for i in range(n)]
        for metric, reserve in (("save", 8 * 2**20), ("save_no_space_check", None)):
            settings = {"path": f"{tmp}/{metric}.tct", "min_free_space": reserve}
            with pymodels.get_storage({"backend": "tokyo_cabinet", **settings}) as s:

                def saves(s: Any = s) -> None:
                    save = s.save
                    for doc, key in zip(docs, keys, strict=True):
                        save(doc, primary_key=key)

                out[metric] = rate(n, saves)
        with pymodels.get_storage({"backend": "tokyo_cabinet", "path": f"{tmp}/batch.tct"}) as s:
            s.create_index("email")
            s.create_index("name")
            out["put_batches"] = rate(n, lambda: s.save_many(docs))
        with pymodels.get_storage({"backend": "tokyo_cabinet", "path": f"{tmp}/idx.tct"}) as s:
            s.create_index("email")
            s.create_index("name")
            pks: list[str] = []
            out["put_tx_indexed"] = rate(n, lambda: pks.extend(s.save_many(docs, batch_size=n)))
            picks = [pks[rng.randrange(n)] for _ in range(n)]

            def gets() -> None:
                # The raw loop's shape (a bound method called in a loop): a lambda per
                # call would add a Python frame per get to this side only.
                get = s.get
                for pk in picks:
                    get(None, pk)

            out["get"] = rate(len(picks), gets)
            emails = [docs[rng.randrange(n)]["email"] for _ in range(raw.EMAIL_QUERIES)]
            q = s.query()
            out["email_eq"] = rate(
                len(emails), lambda: each(lambda e: list(q.where(email=e)), emails)
            )
            out["email_eq_count"] = rate(
                len(emails), lambda: each(lambda e: q.where(email=e).count(), emails)
            )
            prefixes = [docs[rng.randrange(n)]["name"][:-2] for _ in range(raw.PREFIX_QUERIES)]
            out["name_prefix"] = rate(
                len(prefixes), lambda: each(lambda p: list(q.where(name__startswith=p)), prefixes)
            )
            out["name_prefix_count"] = rate(
                len(prefixes), lambda: each(lambda p: q.where(name__startswith=p).count(), prefixes)
            )
            # As the raw side: city and a decimal age index made after the load.
            s.create_index("city")
            s.create_index("age", kind="decimal")
            cities = [docs[rng.randrange(n)]["city"] for _ in range(raw.ORDERED_QUERIES)]
            by_age = q.order_by("-age")
            out["ordered_limit"] = rate(
                len(cities), lambda: each(lambda c: list(by_age.where(city=c)[:10]), cities)
            )
            out["count_age"] = rate(
                raw.COUNT_QUERIES,
                lambda: each(lambda _: q.where(age__gt=50).count(), range(raw.COUNT_QUERIES)),
            )
    return out


def run(n: int = 100_000, runs: int = 3) -> dict[str, dict[str, float]]:
    """Medians over ``runs`` of pymodels and raw figures (operations per second)."""
    docs = records(n)
    recs = raw.make_records(n)
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    for seed in range(runs):
        # Alternated (A B A B), so that a change in the machine's load hits both sides.
        ours.append(run_once(n, docs, seed))
        theirs.append(raw.run_once(n, recs, seed))

    def median(samples: list[dict[str, float]]) -> dict[str, float]:
        return {k: statistics.median(s[k] for s in samples) for k in samples[0]}

    return {"pymodels": median(ours), "raw": median(theirs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of")
    args = parser.parse_args(argv)
    figures = run(args.n, args.runs)
    ours, theirs = figures["pymodels"], figures["raw"]
    print(f"Tokyo Cabinet, N={args.n:,}, medians of {args.runs} runs in one process (ops/s)")
    print(f"  {'metric':<18}{'pymodels':>10}{'raw':>10}{'ratio':>7}  {'raw metric':<17} measures")
    for name, (description, raw_name) in METRICS.items():
        a, b = ours[name], theirs[raw_name]
        print(f"  {name:<18}{a:>10,.0f}{b:>10,.0f}{b / a:>6.2f}x  {raw_name:<17} {description}")
    print("ratio = raw / pymodels: how many times faster the raw calls are (1.00x = parity)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
