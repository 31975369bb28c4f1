#!/usr/bin/env python3
"""Issue 20, the SQLite comparison (bench/sqlite/run.py), short: speedtest1 --size 10 in Blimp
(its own page cache and SQLite's pcache1) and in the Linux anchor guest, 128 MiB each, plain and
with the balloon squeezed to 48 MiB after test 180; one run per column, stock QEMU, TCG. Checks
behaviour, never timings: all six runs finished every test of speedtest1's main set and exited
0, all computed the same verification hash (Blimp on newlib and its in-memory VFS, Linux on glibc
and tmpfs, with and without the balloon), the balloon moved towards the target in every squeezed
run, and the JSON, CSV, table and plot were written."""
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import STOCK_QEMU, Skip, TestRunner, check  # noqa: E402
from speedtest1 import MAIN_TESTS  # noqa: E402

t = TestRunner()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "bench", "sqlite", "run.py")
MEM, SQUEEZE = 128, 48
COLUMNS = {(g, p, s) for s in ("plain", "squeeze")
           for g, p in (("blimp", "blimp"), ("linux", "sqlite"), ("blimp", "sqlite"))}


@t.test
def test_short_sqlite_blimp_vs_linux(build):
    if not os.access(STOCK_QEMU, os.X_OK):
        raise Skip(f"no stock QEMU at {STOCK_QEMU}")
    if not shutil.which("gnuplot"):
        raise Skip("gnuplot not installed (the bench's plot)")
    if not os.path.exists(os.path.join(build, "linux-guest", "vmlinuz")):
        raise Skip("no Linux anchor guest in the build (make build makes it)")
    tmp = tempfile.mkdtemp(prefix="exp-sqlite-")
    try:
        prefix = os.path.join(tmp, "short")
        r = subprocess.run(["timeout", "--kill-after=5", "840", sys.executable, SCRIPT,
                            "--build-dir", build, "--size", "10", "--mem", str(MEM),
                            "--squeeze", str(SQUEEZE), "--reps", "1", "--out", prefix],
                           capture_output=True, text=True)
        log = r.stdout[-4000:] + r.stderr[-2000:]
        check(r.returncode == 0, f"the bench exited {r.returncode}:\n{log}")
        for ext in (".json", ".csv", ".md", ".png"):
            check(os.path.getsize(prefix + ext) > 0, f"{prefix + ext} empty or missing\n{log}")
        with open(prefix + ".png", "rb") as f:
            check(f.read(8) == b"\x89PNG\r\n\x1a\n", "the plot is not a PNG")
        with open(prefix + ".json") as f:
            runs = json.load(f)["runs"]
        check({(x["guest"], x["pcache"], x["scenario"]) for x in runs} == COLUMNS
              and len(runs) == 6, f"runs: {[(x['guest'], x['pcache'], x['scenario']) for x in runs]}")
        hashes = set()
        for x in runs:
            label = f"{x['guest']}/{x['pcache']} {x['scenario']}"
            check(x.get("status") == 0 and "error" not in x, f"{label} failed: {x}")
            check(sorted(int(k) for k in x["tests_ms"]) == MAIN_TESTS,
                  f"{label}: tests finished {sorted(x['tests_ms'])}")
            check(x.get("total_ms") is not None and x.get("hash"), f"{label}: no total or hash")
            hashes.add(x["hash"])
            if x["scenario"] == "squeeze":
                # The request was made, and the balloon was seen below the guest's memory.
                seen = x.get("balloon_after_5s_mib")
                check(seen is not None and seen < MEM, f"{label}: balloon at {seen} MiB")
            if x["guest"] == "blimp":
                check(x.get("blimp_done", "").startswith("speedtest1: done status=0"),
                      f"{label}: {x.get('blimp_done')}")
        check(len(hashes) == 1, f"the runs computed different results: {hashes}")
        with open(prefix + ".csv", newline="") as f:
            rows = list(csv.DictReader(f))
        check(len(rows) == 6 * (len(MAIN_TESTS) + 1), f"{len(rows)} CSV rows")
        with open(prefix + ".md") as f:
            md = f.read()
        check("| **TOTAL (s), median** |" in md and "1 distinct over the 6 runs that finished" in md, md[-1500:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    t.main()
