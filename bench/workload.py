"""The benchmark workload shared by pymodels and the raw-driver baselines.

N records of six fields (``shared/notes/performance.md``): a name, a unique
email, an age, a score, a city out of 50 and two tags. Deterministic, so every
engine sees the same data.
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

CITIES = [f"city{i:02}" for i in range(50)]


def make_records(n: int) -> list[dict[str, Any]]:
    """The workload's records (pk ``"k<i>"`` is kept outside the record)."""
    return [
        {
            "name": f"name{i:07}",
            "email": f"user{i}@example.com",
            # 18-90 and independent of the city (i % 50): about 27 records per age in a
            # city, so an ordered page of a city is not one run of ties.
            "age": 18 + i // 50 * 7 % 73,
            "score": (i * 7919 % 10_000) / 100,
            "city": CITIES[i % 50],
            "tags": [f"t{i % 7}", f"u{i % 11}"],
        }
        for i in range(n)
    ]


def pks(n: int) -> list[str]:
    """The workload's primary keys."""
    return [f"k{i:08}" for i in range(n)]


def rate(count: int, fn: Callable[[], object]) -> float:
    """Operations per second of ``fn`` doing ``count`` operations."""
    _settle()
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def each(fn: Callable[[Any], object], args: Iterable[Any]) -> None:
    """Call ``fn`` on every arg and keep no result, as a program reading records one by one.

    Every bench discards what it reads: a list of 10,000 results kept alive on
    one side only is work for the allocator and the garbage collector that
    the other side does not do (seen here: pymodels gets took 11 us kept in a
    list, 7.5 us discarded, while raw discarded its own).
    """
    for arg in args:
        fn(arg)


def timed_loop(
    fn: Callable[[int], object], limit: int, budget: float = 1.0, at_least: int = 1
) -> float:
    """Call ``fn(i)`` up to ``limit`` times or for ``budget`` seconds, but at least
    ``at_least`` times; return calls per second.

    Scanning engines answer a query in tens of milliseconds: a time budget keeps
    their rows from dominating the run while still measuring them. Where one call
    takes a good part of the budget, ``at_least`` keeps a handful of calls from
    deciding the figure (a scan's cost depends on where its match lies).
    """
    _settle()
    start = time.perf_counter()
    done = 0
    while done < limit:
        fn(done)
        done += 1
        if done >= at_least and time.perf_counter() - start > budget:
            break
    return done / (time.perf_counter() - start)


def _settle() -> None:
    """Collect garbage before a timed phase, for raw and pymodels alike.

    The collector stays on while timing, so each side pays for what it
    allocates; but a full collection is triggered by what earlier phases left
    behind, and without this one it lands in whichever phase comes next (seen
    here: the same gets took 9 or 15 us depending on the setup before them).
    """
    gc.collect()


def median_of(runs: int, once: Callable[[int], dict[str, float]]) -> dict[str, float]:
    """The per-metric median of ``runs`` calls of ``once(seed)``."""
    samples = [once(seed) for seed in range(runs)]
    return {name: statistics.median(s[name] for s in samples) for name in samples[0]}


def random_indices(n: int, count: int, seed: int) -> list[int]:
    """``count`` random indices below ``n`` (repeatable by seed)."""
    rng = random.Random(seed)
    return [rng.randrange(n) for _ in range(count)]


def provenance() -> str:
    """When, on what code and on how loaded a machine a run was taken, in one line.

    Every figure the docs quote names its commit and the load beside it: printing
    them with the figures saves copying them by hand. The commit is marked
    ``+changes`` when tracked files differ from it (the figures are then of code no
    commit holds).
    """
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        changed = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        code = "code of no known commit"
    else:
        code = f"commit {commit}{' +changes' if changed else ''}"
    return (
        f"{now}, {code}, {os.cpu_count()} CPUs ({platform.machine()}), "
        f"load average {load_average()}"
    )


def _git(*args: str) -> str:
    """What ``git`` prints for ``args`` in the checkout holding this script."""
    here = Path(__file__).resolve().parent
    done = subprocess.run(
        ["git", "-C", str(here), *args], capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
