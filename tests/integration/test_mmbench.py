#!/usr/bin/env python3
"""app=mmbench, the page allocator's benchmark and self-test in the guest (docs/mm.md; the
README's allocator figure): it boots, every benchmark run prints its figures for 4 KiB and 2 MiB
blocks, the self-test over all free RAM passes, and the app exits 0.

The multi-CPU form (issue 17, bench/mm/smp_scaling.py): `mmbench threads=2` on q35 -smp 2 under
MTTCG runs a worker on each CPU against the one allocator, every block tagged and checked: one
line per CPU and a total per run, no bad tag, no failed allocation, the allocator's invariants
intact afterwards; also with 2 MiB blocks (order=9); threads= beyond the CPUs online is an error.
The Linux anchor's counterpart (`mmscale 2 1` in image/linux's guest at -smp 2) prints the same
kind of lines with every tag read back (skipped when the Linux guest is not built).
Timings are printed, never asserted (TCG on a shared host)."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import (STOCK_QEMU, BlimpVM, Skip, TestRunner, check,  # noqa: E402
                      requested_accel)
from linux_guest import LinuxGuest, guest_files  # noqa: E402

t = TestRunner()

# "mm bench 4 KiB: 81920 blocks: alloc 345.1 ns (2897 k/s), free 280.4 ns (3566 k/s), alloc+free
# pair 499.0 ns"
FIGURES_RE = r"mm bench {}: (\d+) blocks: alloc \d+\.\d ns \(\d+ k/s\), free \d+\.\d ns " \
             r"\(\d+ k/s\), alloc\+free pair \d+\.\d ns"
SELF_TEST_RE = re.compile(r"mm self-test: (\d+) MiB in (\d+) blocks: (\w+)")


@t.test
def test_mmbench_figures_and_self_test(build):
    with BlimpVM(build, app="mmbench", args=["repeat=2"], machine="microvm", memory="256M",
                 limit=300) as vm:
        status = vm.wait_exit(timeout=280)
        out = vm.output
    check(status == 0, f"mmbench exited with {status}\n{out}")
    for size in ("4 KiB", "2 MiB"):
        runs = re.findall(FIGURES_RE.format(size), out)
        check(len(runs) == 2, f"{len(runs)} runs of the {size} benchmark, not 2\n{out}")
        check(all(int(blocks) > 0 for blocks in runs), f"a {size} run measured no block\n{out}")
    m = SELF_TEST_RE.search(out)
    check(m is not None, f"no self-test verdict\n{out}")
    print(f"  self-test: {m.group(1)} MiB in {m.group(2)} blocks: {m.group(3)}", flush=True)
    check(m.group(3) == "ok", f"self-test failed\n{out}")
    check(int(m.group(1)) >= 200, f"self-test covered only {m.group(1)} MiB of 256\n{out}")
    check("mmbench: PASS" in out, out)


# "mm bench threads=2 4 KiB: cpu 1: 612345 ops in 2000.1 ms, 306172 ops/s, 3266.3 ns/op, 0 bad
# tags, 0 failed" and the same with "total " in place of "cpu 1: "
THREADS_RE = re.compile(r"^mm bench threads=(\d+) (4 KiB|2 MiB): (cpu (\d+): |total )(\d+) ops in "
                        r"\d+\.\d ms, (\d+) ops/s, \d+\.\d ns/op, (\d+) bad tags, (\d+) failed$",
                        re.M)


def mmbench_threads(build, cpus, args):
    accel = "tcg,thread=multi" if requested_accel() == "tcg" else None
    with BlimpVM(build, app="mmbench", args=args, machine="q35", memory="256M", accel=accel,
                 extra=["-smp", str(cpus)], limit=300) as vm:
        status = vm.wait_exit(timeout=280)
        return status, vm.output


@t.test
def test_mmbench_threads_2(build):
    for order, size in ((0, "4 KiB"), (9, "2 MiB")):
        status, out = mmbench_threads(build, 2, ["threads=2", "duration=1s", "repeat=2",
                                                 f"order={order}", "selftest=16M"])
        check(status == 0, f"mmbench threads=2 order={order} exited with {status}\n{out}")
        check("mmbench: 2 threads, on cpus 0,1" in out, out)
        lines = THREADS_RE.findall(out)
        check(all(l[0] == "2" and l[1] == size for l in lines), f"wrong lines\n{out}")
        totals = [l for l in lines if l[2] == "total "]
        per_cpu = [l for l in lines if l[2] != "total "]
        check(len(totals) == 2, f"{len(totals)} total lines, not 2\n{out}")
        check(sorted(int(l[3]) for l in per_cpu) == [0, 0, 1, 1], f"per-CPU lines wrong\n{out}")
        check(all(int(l[4]) > 0 for l in lines), f"a worker did no op\n{out}")
        check(all(l[6] == "0" and l[7] == "0" for l in lines), f"bad tags or failures\n{out}")
        for tot, (a, b) in zip(totals, zip(per_cpu[0::2], per_cpu[1::2])):
            check(int(tot[4]) == int(a[4]) + int(b[4]), f"total is not the sum\n{out}")
        check("mmbench: allocator invariants hold" in out, out)
        check("mm self-test: 16 MiB" in out and "mmbench: PASS" in out, out)
        print(f"  {size}: totals {[int(l[5]) for l in totals]} ops/s", flush=True)


@t.test
def test_mmbench_threads_beyond_online_cpus(build):
    status, out = mmbench_threads(build, 2, ["threads=3"])
    check(status == 2, f"mmbench threads=3 at -smp 2 exited with {status}\n{out}")
    check("mmbench: threads=3 but 2 CPUs are online (threads=1..2)" in out, out)


@t.test
def test_linux_anchor_mmscale_2(build):
    files = guest_files(build)
    if not files or not os.access(STOCK_QEMU, os.X_OK):
        raise Skip("Linux guest or stock QEMU missing")
    g = LinuxGuest(STOCK_QEMU, build, mem_mb=256, machine="q35", smp=2, accel="tcg,thread=multi",
                   name="mmscale", timeout_s=300)
    try:
        g.start(ready_timeout=240)
        start = len(g.lines)
        m = g.command("mmscale 2 1", r"BLIMP-LINUX: (done mmscale rc=(\d+)|unknown command)",
                      timeout=120)
        if "unknown" in m.group(1):
            raise Skip("this Linux guest has no mmscale command (image/linux/build.sh BUILD)")
        out = "\n".join(g.lines[start:])
    finally:
        g.stop()
    check(m.group(2) == "0", f"mmscale exited {m.group(2)}\n{out}")
    rx = re.compile(r"BLIMP-LINUX: mmscale (cpu=(\d)|total procs=2) ops=(\d+) ns=\d+ "
                    r"ops_per_s=(\d+) ns_per_op=[\d.]+ bad=(\d+)")
    lines = rx.findall(out)
    check(sorted(l[1] for l in lines if l[1]) == ["0", "1"], f"per-CPU lines wrong\n{out}")
    check(len([l for l in lines if not l[1]]) == 1, f"no total line\n{out}")
    check(all(int(l[2]) > 0 and l[4] == "0" for l in lines), f"no ops or bad tags\n{out}")
    print(f"  linux total {[int(l[3]) for l in lines if not l[1]][0]} ops/s", flush=True)


if __name__ == "__main__":
    t.main()
