"""``pymodels copy`` between two embedded backends: time and peak memory.

Fills a source storage with the shared workload (``workload.make_records``: six
fields per record), then runs the real console script, ``pymodels copy SRC DST``
(verification included), as a child process and reports its wall time, its rate
and its peak resident set size (``ru_maxrss`` of that child alone):

    python bench/cli_copy.py                           # 100k records, sqlite -> tokyo-cabinet
    python bench/cli_copy.py --n 10000,100000 --dst shelve

Copy streams: it reads the source through a plain ``query()`` in pk order
(every backend streams it) and writes batches, so neither records nor pks pile
up in memory. Giving several sizes (``--n 10000,100000``) shows how the peak
grows: the last column compares each peak with the first size's. What does grow
is the pages of the database files the engines map into memory (gdbm and Tokyo
Cabinet map their files; reading every record for the verification touches
every page, which counts in RSS although the kernel can drop it at will) and
SQLite's page cache as it fills. ``--no-verify`` leaves the destination unread.

Beside each figure, the raw drivers doing the same copy (``raw_stream.py``) in a child
process: a source file of the same records written by the raw driver, read in pk order
and written in batches of 1000 into the raw destination, each pair hashed, then the
destination read back and compared (count and hash), as ``pymodels copy`` does. Raw
writes no shadow columns, validates nothing and builds no documents.

Measured on this project's machine (2 cores, shared; six-field records; 2026-12-07,
main at ``7d7c0ed``), wall seconds and peak RSS, pymodels / raw:

    sqlite -> tokyo_cabinet   10k: 0.7-0.8 / 0.7 s, 43 / 43 MiB
                              100k: 4.4-4.9 / 4.1-4.3 s, 63 / 61 MiB
    sqlite -> shelve (gnu)    10k: 0.6 / 0.5 s, 41 / 40 MiB
                              100k: 4.1 / 3.6 s, 72 / 73 MiB

Two changes the same day, each measured with the builds alternated twice or three
times (wall seconds at 100k, before -> after): documents' mapping methods had read
pydantic's ``model_fields`` property on every key (``dict(doc)`` 8.4 -> 3.9 us;
``dbaf831`` -> ``e5f6402``: sqlite -> tokyo_cabinet 8.3, 9.3 -> 7.0, 6.0; shelve ->
sqlite 7.6, 6.4 -> 5.4, 5.9), and the content hash went through ``json.dumps`` (6.5 ->
2.9 us a record with msgspec; ``e5f6402`` -> ``7d7c0ed``: sqlite -> shelve 5.2, 4.7,
4.8 -> 4.1, 4.0, 4.5).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from raw_stream import RawStore, open_raw
from raw_stream import copy as raw_copy
from workload import make_records, pks

import pymodels

SCHEMES = {
    "sqlite": ("sqlite", "db"),
    "shelve": ("shelve", "shelf"),
    "tokyo_cabinet": ("tokyo-cabinet", "tct"),
}
EXE = Path(sys.executable).with_name("pymodels")


def url(backend: str, directory: str, name: str) -> str:
    scheme, suffix = SCHEMES[backend]
    return f"{scheme}:///{directory}/{name}.{suffix}"


def fill(target: str, n: int) -> None:
    """Fill ``target`` in a child process.

    The peak RSS a child reports includes what it inherited at fork, so this
    process stays small: the records are made and written elsewhere.
    """
    subprocess.run([sys.executable, __file__, "--fill", target, str(n)], check=True)


def _fill_here(target: str, n: int) -> None:
    with pymodels.get_storage(target) as storage:
        batch = 10_000
        keys = pks(n)
        records = make_records(n)
        for start in range(0, n, batch):
            chunk = zip(keys[start : start + batch], records[start : start + batch], strict=True)
            tx = storage.transaction() if storage.features.transactions else nullcontext()
            with tx:
                for pk, record in chunk:
                    storage.save(record, primary_key=pk)


def _raw_store(backend: str, path: str) -> RawStore:
    return open_raw(backend, {"path": path})


def _fill_raw_here(backend: str, path: str, n: int) -> None:
    store = _raw_store(backend, path)
    try:
        store.load(zip(pks(n), make_records(n), strict=True))
    finally:
        store.close()


def _copy_raw_here(src: str, src_path: str, dst: str, dst_path: str, verify: bool) -> None:
    source, target = _raw_store(src, src_path), _raw_store(dst, dst_path)
    try:
        copied = raw_copy(source, target, verify)
    finally:
        source.close()
        target.close()
    print(f"raw copy: {copied:,} records{'' if verify else ' (not verified)'}", file=sys.stderr)


def raw_files(tmp: str, src: str, dst: str) -> tuple[str, str]:
    return f"{tmp}/raw-src.{SCHEMES[src][1]}", f"{tmp}/raw-dst.{SCHEMES[dst][1]}"


def copy(src: str, dst: str, extra: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in KiB and the closing line of one ``pymodels copy``."""
    return timed([str(EXE), "copy", src, dst, *extra])


def timed(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in KiB and the last line of stderr of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{command[1]} failed ({proc.returncode}): {err}")
    return elapsed, usage.ru_maxrss, err.strip()


def main() -> None:
    if sys.argv[1:2] == ["--fill"]:
        _fill_here(sys.argv[2], int(sys.argv[3]))
        return
    if sys.argv[1:2] == ["--fill-raw"]:
        _fill_raw_here(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    if sys.argv[1:2] == ["--copy-raw"]:
        src, src_path, dst, dst_path, verify = sys.argv[2:7]
        _copy_raw_here(src, src_path, dst, dst_path, verify == "verify")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100000", help="record counts, comma-separated")
    parser.add_argument("--src", default="sqlite", choices=sorted(SCHEMES))
    parser.add_argument("--dst", default="tokyo_cabinet", choices=sorted(SCHEMES))
    parser.add_argument("--no-verify", action="store_true", help="pass --no-verify to copy")
    args = parser.parse_args()
    if args.src == args.dst:
        parser.error("--src and --dst must differ")
    sizes = [int(n) for n in args.n.split(",")]
    extra = ["--no-verify"] if args.no_verify else []
    print(f"pymodels copy {args.src} -> {args.dst}{' --no-verify' if extra else ''}")
    print(
        f"{'records':>10} {'seconds':>8} {'raw':>6} {'records/s':>10} {'raw':>8} "
        f"{'peak RSS':>10} {'raw':>10} {'vs first':>8}"
    )
    first_rss: int | None = None
    verify = "no-verify" if extra else "verify"
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = url(args.src, tmp, "src"), url(args.dst, tmp, "dst")
            fill(src, n)
            seconds, rss, line = copy(src, dst, extra)
            raw_src, raw_dst = raw_files(tmp, args.src, args.dst)
            subprocess.run(
                [sys.executable, __file__, "--fill-raw", args.src, raw_src, str(n)], check=True
            )
            raw_command = [sys.executable, __file__, "--copy-raw", args.src, raw_src]
            raw_seconds, raw_rss, _ = timed([*raw_command, args.dst, raw_dst, verify])
        first_rss = first_rss or rss
        print(
            f"{n:>10,} {seconds:>8.1f} {raw_seconds:>6.1f} {n / seconds:>10,.0f} "
            f"{n / raw_seconds:>8,.0f} {rss / 1024:>6.1f} MiB {raw_rss / 1024:>6.1f} MiB "
            f"{rss / first_rss:>7.2f}x"
        )
        print(f"{'':>10} {line}")


if __name__ == "__main__":
    main()
