#!/usr/bin/env python3
"""Reclaim through page states vs through the balloon, same guest, same VM (patched QEMU, TCG).

One q35 guest (1 GiB, virtio-balloon-pci with page-states=on) runs memhog in cycles: allocate
and touch SIZE, free it all, wait. After each free the host reclaims the freed memory, in
alternation:

  page states  one QMP x-blimp-balloon-discard: the device claims every UNUSED page and discards
               the runs; no guest round trip.
  balloon      QMP balloon to (RAM - SIZE): the guest takes SIZE of free pages and sends their
               PFNs on the inflate queue; then deflated back to RAM before the next cycle.

Per reclaim: wall time from the QMP command to completion (sweep: the command returns; balloon:
query-balloon reports the target reached), the RSS QEMU gave back, GiB/s of RSS returned, and
for page states the device's own duration-us and pages discarded. Before each big reclaim, the
latency of a small one (1 MiB of the freed memory: max-pages=256 vs a 1 MiB inflate).

    bench.py --build-dir build [--kernel build/blimp.elf] [--reps 3] [--size 640]
The kernel must call page_states::init() at boot (see docs/page-states.md).
Writes bench/page_states/RESULTS.json and prints a Markdown table.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "lib"))
from blimp_vm import BlimpVM, patched_qemu_path  # noqa: E402
from qmp import Qmp  # noqa: E402

MiB = 1 << 20


def wait_actual(q, target, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        a = q.execute("query-balloon")["actual"]
        if a == target:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"balloon stuck at {a >> 20} MiB, target {target >> 20} MiB")
        time.sleep(0.002)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--kernel")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", type=int, default=640, help="MiB touched and reclaimed per cycle")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.json"))
    a = ap.parse_args()
    build = os.path.abspath(a.build_dir)
    qemu = patched_qemu_path(build)
    size = a.size * MiB
    cycles = 2 * a.reps
    steps = ",".join([f"alloc:{a.size}M,free:all,wait:25s"] * cycles)
    vm = BlimpVM(build, app="memhog", args=[f"steps={steps}", "chunk=1020K"], machine="q35",
                 memory="1G", qmp=True, qemu=qemu, kernel=a.kernel, limit=900,
                 extra=["-device", "virtio-balloon-pci,id=balloon0,page-states=on"])
    results = {"pstate": [], "balloon": [], "pstate_small": [], "balloon_small": []}
    with vm:
        vm.wait_for(r"page-states: registered", 120)
        q = Qmp.connect(vm.qmp_path)
        ram = q.execute("query-balloon")["actual"]
        for c in range(cycles):
            step = 3 * c + 2
            vm.wait_for(rf"memhog: step {step} freed", 300)
            rss0 = vm.rss_kib() * 1024
            if c % 2 == 0:
                # Small reclaim first (1 MiB of the freed memory), then everything else.
                t0 = time.monotonic()
                small = q.execute("x-blimp-balloon-discard", {"max-pages": 256})
                results["pstate_small"].append(time.monotonic() - t0)
                assert small["claimed"] == 256, small
                rss0 = vm.rss_kib() * 1024
                t0 = time.monotonic()
                res = q.execute("x-blimp-balloon-discard", timeout=300)
                wall = time.monotonic() - t0
                rss1 = vm.rss_kib() * 1024
                results["pstate"].append({
                    "wall_s": wall, "device_us": res["duration-us"],
                    "discarded_pages": res["discarded-unused"] + res["discarded-volatile"],
                    "runs": res["runs"], "rss_returned": rss0 - rss1})
            else:
                t0 = time.monotonic()
                q.execute("balloon", value=ram - MiB)
                wait_actual(q, ram - MiB)
                results["balloon_small"].append(time.monotonic() - t0)
                rss0 = vm.rss_kib() * 1024
                target = ram - size
                t0 = time.monotonic()
                q.execute("balloon", value=target)
                wait_actual(q, target)
                wall = time.monotonic() - t0
                rss1 = vm.rss_kib() * 1024
                results["balloon"].append({"wall_s": wall, "rss_returned": rss0 - rss1,
                                           "pages": (size - MiB) // 4096})
                q.execute("balloon", value=ram)
                wait_actual(q, ram)
        info = q.execute("x-blimp-balloon-info")
    results["info"] = info
    results["config"] = {"memory": "1G", "size_mib": a.size, "reps": a.reps, "machine": "q35",
                         "accel": "tcg"}
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)

    def med(xs):
        return statistics.median(xs)
    ps, bl = results["pstate"], results["balloon"]
    gib = 1 << 30
    print("| path | reclaim wall time (median) | RSS returned | GiB/s of RSS returned | "
          "pages processed/s | 1 MiB request latency |")
    print("|---|---|---|---|---|---|")
    print(f"| page states (x-blimp-balloon-discard) | {med([r['wall_s'] for r in ps]) * 1e3:.1f} ms "
          f"(device {med([r['device_us'] for r in ps]) / 1e3:.1f} ms) | "
          f"{med([r['rss_returned'] for r in ps]) >> 20} MiB | "
          f"{med([r['rss_returned'] / r['wall_s'] for r in ps]) / gib:.2f} | "
          f"{med([r['discarded_pages'] / r['wall_s'] for r in ps]) / 1e6:.2f} M "
          f"({med([r['discarded_pages'] for r in ps])} pages, {med([r['runs'] for r in ps])} runs) | "
          f"{med(results['pstate_small']) * 1e3:.2f} ms |")
    print(f"| balloon (QMP balloon, inflate) | {med([r['wall_s'] for r in bl]) * 1e3:.1f} ms | "
          f"{med([r['rss_returned'] for r in bl]) >> 20} MiB | "
          f"{med([r['rss_returned'] / r['wall_s'] for r in bl]) / gib:.2f} | "
          f"{med([r['pages'] / r['wall_s'] for r in bl]) / 1e6:.2f} M | "
          f"{med(results['balloon_small']) * 1e3:.2f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
