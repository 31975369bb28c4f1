#!/usr/bin/env python3
"""Host-side reclaim throughput of a page-state sweep (patch 0002), no guest OS.

    python3 bench/qemu/bench_pstate_sweep.py --build-dir build [--mem 2048] [--pattern all|alt8]

QEMU runs with the qtest accelerator (tests/lib/blimp_ext.py's QtestVm): guest
RAM is backed by a host-side memset, the page-state array is filled with UNUSED (pattern
`all`: one run per RAM region; `alt8`: runs of 8 pages separated by one STABLE page), then one
QMP x-blimp-balloon-discard sweep is timed and QEMU's RSS is read before and after.
Prints GiB/s reclaimed and the sweep's own duration.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import blimp_ext as ext  # noqa: E402
from blimp_vm import find_patched_qemu  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--mem", type=int, default=2048)
    ap.add_argument("--pattern", default="all", choices=["all", "alt8"])
    a = ap.parse_args()
    qemu = find_patched_qemu(os.path.abspath(a.build_dir))
    if not qemu:
        print("patched QEMU not built")
        return 77
    npages = a.mem * 256
    vm = ext.QtestVm(qemu, "page-states=on", mem_mb=a.mem)
    try:
        dev, qt = vm.dev, vm.qt
        dev.init((1 << ext.F_STATS) | (1 << ext.F_VERSION_1) | (1 << ext.F_PAGE_STATES))
        arr = ext.ARRAY_GPA
        first_data = (arr + npages + 2 * ext.PAGE) // ext.PAGE   # data pages after the array
        t0 = time.monotonic()
        qt.cmd(f"memset 0x{first_data * ext.PAGE:x} 0x{(npages - first_data) * ext.PAGE:x} 0xa5")
        qt.cmd(f"memset 0x{arr:x} 0x{npages:x} 0x00")
        if a.pattern == "all":
            qt.cmd(f"memset 0x{arr + first_data:x} 0x{npages - first_data:x} 0x01")
        else:
            unit = bytes([1] * 8 + [0])
            body = unit * ((npages - first_data) // 9 + 1)
            qt.memwrite(arr + first_data, body[:npages - first_data])
        print(f"backed {a.mem} MiB in {time.monotonic() - t0:.1f}s")
        st, *_ = ext.register_array(dev, gpa=arr, npages=npages)
        assert st == ext.S_OK, st
        r0 = rss_kib(vm.pid())
        t0 = time.monotonic()
        res = vm.qmp.execute("x-blimp-balloon-discard", timeout=600)
        wall = time.monotonic() - t0
        r1 = rss_kib(vm.pid())
        gib = (r0 - r1) / (1024 * 1024)
        print(f"pattern {a.pattern}: sweep claimed {res['claimed']} pages in {res['runs']} runs, "
              f"discarded {res['discarded-unused']} unused; sweep {res['duration-us'] / 1e6:.3f}s "
              f"(QMP round trip {wall:.3f}s); RSS {r0 // 1024} -> {r1 // 1024} MiB: "
              f"{gib:.2f} GiB reclaimed, {gib / (res['duration-us'] / 1e6):.1f} GiB/s")
    finally:
        vm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
