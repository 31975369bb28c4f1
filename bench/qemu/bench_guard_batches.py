#!/usr/bin/env python3
"""Costs of the host-side safety nets of host/qemu patch 0008.

    python3 bench/qemu/bench_guard_batches.py --build-dir build [--reps 3] [--part sweep|inflate|all]
                                              [--pattern all|alt8]

sweep:   one page-state sweep over ~600 MiB of UNUSED pages (qtest accelerator, 1 GiB, RAM
         backed by a host-side memset first), with page-states-batch-pages=0 (one batch: the
         behaviour before patch 0008) and with the default 16384 (64 MiB); the array either all
         UNUSED (one run) or runs of 8 UNUSED pages (one discard call each). Reports the sweep's
         duration and max-batch-us: the longest any byte stayed DISCARDING (what a guest that
         touches such a page waits, at most).
inflate: the Blimp guest under TCG (q35, 1 GiB, memhog backs 700 MiB and frees it), balloon
         target 256 MiB (768 MiB inflate, coalesce-discard=on), timed from the QMP command
         until query-balloon reports it. Configurations: page states off; on (the STABLE guard
         claims on the vCPU thread, no pause); and both again with the inflate queue delayed
         1 ms by fault injection, which moves processing to the main loop, where the guard
         pauses the vCPUs once per 4096-PFN chunk.
Every QEMU runs under `timeout`.
"""
import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import blimp_ext as ext  # noqa: E402
from blimp_vm import BlimpVM, find_patched_qemu, wait_balloon  # noqa: E402
from qmp import Qmp  # noqa: E402

MiB = 1 << 20


def sweep(qemu, batch, reps, pattern):
    npages = 1024 * 256
    out = []
    vm = ext.QtestVm(qemu, f"page-states=on,page-states-batch-pages={batch}", mem_mb=1024)
    try:
        qt = vm.qt
        vm.dev.init((1 << ext.F_STATS) | (1 << ext.F_VERSION_1) | (1 << ext.F_PAGE_STATES))
        ext.register_array(vm.dev, npages=npages)
        first = 0x4000                      # 64 MiB, past the array
        n = 600 * 256                       # 600 MiB
        for _ in range(reps):
            qt.cmd(f"memset 0x{first * ext.PAGE:x} 0x{n * ext.PAGE:x} 0xa5")
            if pattern == "all":
                qt.cmd(f"memset 0x{ext.ARRAY_GPA + first:x} 0x{n:x} 0x01")
            else:   # runs of 8 UNUSED pages, one STABLE page between (one discard per run)
                body = (bytes([1] * 8 + [0]) * (n // 9 + 1))[:n]
                qt.memwrite(ext.ARRAY_GPA + first, body)
            r = vm.qmp.execute("x-blimp-balloon-discard", timeout=120)
            assert r["claimed"] == (n if pattern == "all" else n - n // 9), r
            out.append(r)
    finally:
        vm.stop()
    return out


def inflate(build, qemu, ps, delay, reps):
    times = []
    for _ in range(reps):
        dev = "virtio-balloon-pci,id=balloon0,coalesce-discard=on" + (",page-states=on" if ps else "")
        with BlimpVM(build, app="memhog", args=["steps=alloc:700M,free:all,wait:600s",
                                                "chunk=1020K"],
                     machine="q35", memory="1G", qmp=True, extra=["-device", dev], limit=600,
                     qemu=qemu, name="bench-guard") as vm:
            vm.wait_for(r"memhog: step 2 freed", 300)
            q = Qmp.connect(vm.qmp_path)
            if delay:
                q.execute("x-blimp-balloon-fault", queue="inflate", **{"delay-ms": delay})
            t0 = time.monotonic()
            q.execute("balloon", value=256 * MiB)
            while q.execute("query-balloon")["actual"] != 256 * MiB:   # ~1 ms per poll
                if time.monotonic() - t0 > 300:
                    wait_balloon(q, lambda a: a == 256 * MiB, 1, vm)      # fails with context
            times.append(time.monotonic() - t0)
            info = q.execute("x-blimp-balloon-info")
            q.close()
    return times, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--part", default="all", choices=["sweep", "inflate", "all"])
    ap.add_argument("--pattern", default="all", choices=["all", "alt8"],
                    help="sweep: all UNUSED (one run) or runs of 8 UNUSED pages")
    a = ap.parse_args()
    build = os.path.abspath(a.build_dir)
    qemu = find_patched_qemu(build)
    if not qemu:
        print("patched QEMU not built")
        return 77
    if a.part in ("sweep", "all"):
        print(f"pattern {a.pattern}")
        print("| page-states-batch-pages | batches | sweep duration (ms) | max-batch-us (longest DISCARDING) |")
        print("|---|---|---|---|")
        for batch in (0, 16384):
            rs = sweep(qemu, batch, a.reps, a.pattern)
            print(f"| {batch} | {rs[0]['batches']} | "
                  f"{', '.join('%.0f' % (r['duration-us'] / 1000) for r in rs)} | "
                  f"{', '.join(str(r['max-batch-us']) for r in rs)} |", flush=True)
    if a.part in ("inflate", "all"):
        print("\n| page states | inflate delay | 768 MiB inflate (s) | median | guard-discarded MiB | guard-pauses |")
        print("|---|---|---|---|---|---|")
        for ps, delay in ((False, 0), (True, 0), (False, 1), (True, 1)):
            ts, info = inflate(build, qemu, ps, delay, a.reps)
            print(f"| {'on' if ps else 'off'} | {delay} ms | {', '.join(f'{t:.3f}' for t in ts)} | "
                  f"{statistics.median(ts):.3f} | {info['guard-discarded'] * 4096 >> 20} | "
                  f"{info['guard-pauses']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
