#!/usr/bin/env python3
"""Inflate throughput and discard calls: stock QEMU 7.2 vs Blimp's patched QEMU, Linux guest.

    python3 bench/qemu/bench_inflate.py --build-dir build [--reps 3] [--mem 1024] [--fill 768]
                                         [--target 256] [--out bench/qemu/RESULTS.md]

Per configuration (stock; patched with coalesce-discard off; patched with it on):
  * timing runs (no tracer): boot the anchor Linux guest (free page reporting off so freed
    pages stay backed), write FILL MiB to tmpfs and delete it (the guest's free memory is now
    backed on the host), then set the balloon target to TARGET MiB and time until
    query-balloon reports it: inflate MiB/s. Then deflate back, timed the same way. Host RSS
    before/after inflate gives the memory actually returned.
  * a counting run under `strace -f --seccomp-bpf -e trace=madvise,fallocate -c`: the same
    steps, and a baseline run without the inflate; the difference is the discard syscalls the
    inflate cost: discards per GiB inflated.
All QEMUs run under `timeout`; everything runs on TCG.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from linux_guest import LinuxGuest, STOCK_QEMU, find_qemu, guest_files  # noqa: E402


def run(qemu, bd, args, extra, inflate=True, strace_out=None):
    wrapper = []
    if strace_out:
        wrapper = ["strace", "-f", "--seccomp-bpf", "-e", "trace=madvise,fallocate", "-c",
                   "-o", strace_out]
    g = LinuxGuest(qemu, bd, mem_mb=args.mem, balloon=extra, name="bench", timeout_s=600,
                   wrapper=wrapper)
    res = {}
    try:
        g.start(ready_timeout=300)
        g.command(f"fill {args.fill}", r"BLIMP-LINUX: done fill", timeout=300)
        g.command("drop", r"BLIMP-LINUX: done drop", timeout=60)
        time.sleep(1)
        res["rss_before"] = g.rss_kib()
        if inflate:
            res["inflate_s"] = g.balloon_target(args.target, timeout=300, tolerance_mb=0)
            time.sleep(0.5)
            res["rss_after"] = g.rss_kib()
            res["deflate_s"] = g.balloon_target(args.mem, timeout=300, tolerance_mb=0)
            if "patched" in qemu or qemu != STOCK_QEMU:
                res["info"] = g.qmp.execute("x-blimp-balloon-info")
    finally:
        g.stop()
    return res


def strace_calls(path):
    """{syscall: (calls, seconds)} from `strace -c` output."""
    calls = {}
    with open(path) as f:
        for ln in f:
            m = re.match(r"\s*[\d.]+\s+([\d.]+)\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", ln)
            if m:
                calls[m.group(3)] = (int(m.group(2)), float(m.group(1)))
    return calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mem", type=int, default=1024)
    ap.add_argument("--fill", type=int, default=768)
    ap.add_argument("--target", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    bd = os.path.abspath(args.build_dir)
    patched = find_qemu(bd, patched=True)
    if not patched or not guest_files(bd) or not shutil.which("strace"):
        print("need the patched QEMU, the Linux guest and strace")
        return 77
    configs = [("stock QEMU 7.2", STOCK_QEMU, ""),
               ("patched, coalesce-discard=off", patched, ""),
               ("patched, coalesce-discard=on", patched, "coalesce-discard=on")]
    inflated_mib = args.mem - args.target
    rows = []
    tmp = tempfile.mkdtemp(prefix="blimp-bench-")
    try:
        for label, qemu, extra in configs:
            times, dtimes, returned = [], [], []
            info = None
            for i in range(args.reps):
                r = run(qemu, bd, args, extra)
                times.append(r["inflate_s"])
                dtimes.append(r["deflate_s"])
                returned.append((r["rss_before"] - r["rss_after"]) / 1024)
                info = r.get("info", info)
                print(f"{label} rep {i}: inflate {inflated_mib} MiB in {r['inflate_s']:.3f}s, "
                      f"deflate {r['deflate_s']:.3f}s, RSS returned {returned[-1]:.0f} MiB",
                      flush=True)
            so = os.path.join(tmp, "with.txt")
            sb = os.path.join(tmp, "base.txt")
            run(qemu, bd, args, extra, inflate=True, strace_out=so)
            run(qemu, bd, args, extra, inflate=False, strace_out=sb)
            cw, cb = strace_calls(so), strace_calls(sb)
            z = (0, 0.0)
            disc = (cw.get("madvise", z)[0] - cb.get("madvise", z)[0] +
                    cw.get("fallocate", z)[0] - cb.get("fallocate", z)[0])
            secs = (cw.get("madvise", z)[1] - cb.get("madvise", z)[1] +
                    cw.get("fallocate", z)[1] - cb.get("fallocate", z)[1])
            # the deflate path does one MADV_WILLNEED per page in every configuration
            deflate_calls = inflated_mib * 256
            row = {
                "label": label,
                "inflate_mibs": inflated_mib / statistics.median(times),
                "inflate_s": statistics.median(times),
                "deflate_s": statistics.median(dtimes),
                "returned": statistics.median(returned),
                "syscalls": disc,
                "syscall_s": secs,
                "discards": disc - deflate_calls,
                "info": info,
            }
            row["discards_per_gib"] = row["discards"] * 1024 / inflated_mib
            rows.append(row)
            print(f"{label}: {row['inflate_mibs']:.0f} MiB/s, madvise+fallocate during "
                  f"inflate+deflate {disc} (deflate WILLNEED {deflate_calls}) -> discards/GiB "
                  f"{row['discards_per_gib']:.0f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [f"| configuration | inflate MiB/s (median of {args.reps}) | inflate s | deflate s | "
             "host RSS returned MiB | discard syscalls per GiB inflated (strace) | "
             "syscall time (inflate+deflate), s | "
             "x-blimp-balloon-info discard-calls / pages |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        i = r["info"]
        qi = f"{i['discard-calls']} / {i['discard-pages']}" if i else "n/a (stock)"
        lines.append(f"| {r['label']} | {r['inflate_mibs']:.0f} | {r['inflate_s']:.3f} | "
                     f"{r['deflate_s']:.3f} | {r['returned']:.0f} | "
                     f"{r['discards_per_gib']:.0f} | {r['syscall_s']:.3f} | {qi} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"<!-- generated by bench/qemu/bench_inflate.py on {time.ctime()} -->\n")
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
