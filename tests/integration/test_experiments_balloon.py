#!/usr/bin/env python3
"""Issue 20, experiment 2 (bench/experiments/ballooned_vs_born_small.py), short: one M (256 MiB),
one workload (kvcache with a small fixed amount of work), one repetition, stock QEMU, TCG. Checks
behaviour, never timings: the ballooned VM (booted with 1 GiB) really was at M when its app
started (QMP `actual` and the guest's own "balloon holds 768 MiB" line before "starting app"), the
born-small VM was booted with M, both runs ended with kvcache's success line and the same
results, and the CSV, table and plot were written."""
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import STOCK_QEMU, Skip, TestRunner, check  # noqa: E402

t = TestRunner()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "bench", "experiments", "ballooned_vs_born_small.py")
M = 256


@t.test
def test_short_ballooned_vs_born_small(build):
    if not os.access(STOCK_QEMU, os.X_OK):
        raise Skip(f"no stock QEMU at {STOCK_QEMU}")
    if not shutil.which("gnuplot"):
        raise Skip("gnuplot not installed (the experiment's plot)")
    tmp = tempfile.mkdtemp(prefix="exp-balloon-")
    try:
        prefix = os.path.join(tmp, "short")
        r = subprocess.run(["timeout", "--kill-after=5", "300", sys.executable, SCRIPT,
                            "--build-dir", build, "--mems", str(M), "--reps", "1",
                            "--workloads", "kvcache", "--kv-keys", "4096", "--kv-ops", "300000",
                            "--kv-work", "200", "--vm-limit", "240", "--out", prefix],
                           capture_output=True, text=True)
        log = r.stdout[-3000:] + r.stderr[-2000:]
        check(r.returncode == 0, f"the experiment exited {r.returncode}:\n{log}")
        for ext in (".csv", ".md", ".png", ".meta.json"):
            check(os.path.getsize(prefix + ext) > 0, f"{prefix + ext} empty or missing\n{log}")
        with open(prefix + ".png", "rb") as f:
            check(f.read(8) == b"\x89PNG\r\n\x1a\n", "the plot is not a PNG")
        with open(prefix + ".csv", newline="") as f:
            rows = {row["variant"]: row for row in csv.DictReader(f)}
        check(set(rows) == {"ballooned", "born-small"}, f"runs: {sorted(rows)}\n{log}")
        b, s = rows["ballooned"], rows["born-small"]
        for row in (b, s):
            check(row["ok"] == "1" and row["status"] == "0" and not row["error"],
                  f"{row['variant']} run failed: {row}")
            check(float(row["app_s"]) > 0 and row["cpu_s"] != "", f"no times: {row}")
            check(row["mem_mib"] == str(M), row)
        # The ballooned VM: 1 GiB, the balloon at M (QMP actual) when the app started, and the
        # guest waited for it (its own line, 1024 - M MiB held).
        check(b["boot_mib"] == "1024", b)
        check(int(b["actual_mib"]) == M, f"ballooned VM's actual {b['actual_mib']} MiB, not {M}")
        held = re.fullmatch(r"blimp: balloon holds (\d+) MiB \(start_after_balloon=768M\) "
                            r"after \d+ ms", b["guest_balloon_line"])
        check(held and int(held.group(1)) == 1024 - M, f"guest line: {b['guest_balloon_line']!r}")
        # The born-small VM: booted with M, the balloon untouched.
        check(s["boot_mib"] == str(M) and int(s["actual_mib"]) == M, s)
        check(s["guest_balloon_line"] == "", s)
        # Same work in both: kvcache's ops, hit rate, nothing shrunk.
        check(b["result"] == s["result"] and "shrunk=0" in b["result"]
              and b["result"].startswith("ops=300000 "),
              f"results differ: {b['result']!r} vs {s['result']!r}")
        with open(prefix + ".md") as f:
            md = f.read()
        check(re.search(rf"^\| kvcache \| {M} \| 1\+1 \| ", md, re.M), md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    t.main()
