"""Raw Python dicts doing the benchmark workload (the memory backend's baseline)."""

from __future__ import annotations

from workload import each, make_records, median_of, pks, random_indices, rate, timed_loop

GETS = 10_000


def run(n: int, runs: int = 3) -> dict[str, float]:
    """Median ops/s of bulk save, get by pk, equality scan and ordered limited scan."""
    records, keys = make_records(n), pks(n)

    def once(seed: int) -> dict[str, float]:
        data: dict[str, dict[str, object]] = {}
        out = {"bulk_save": rate(n, lambda: data.update(zip(keys, records, strict=True)))}
        picks = random_indices(n, GETS, seed)
        out["get"] = rate(GETS, lambda: each(lambda i: data[keys[i]], picks))
        emails = [records[i]["email"] for i in picks]
        out["equality"] = timed_loop(
            lambda i: [k for k, r in data.items() if r["email"] == emails[i]], 1000
        )

        def ordered(i: int) -> object:
            city = records[picks[i]]["city"]
            hits = [(r["age"], k) for k, r in data.items() if r["city"] == city]
            return sorted(hits, key=lambda h: (-h[0], h[1]))[:10]  # type: ignore[operator]

        out["ordered_limit"] = timed_loop(ordered, 200)
        return out

    return median_of(runs, once)
