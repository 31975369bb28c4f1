#!/usr/bin/env python3
"""What migration costs with the Blimp extensions on, against the same guest without them and
against stock QEMU, in one run (docs/migration.md has the figures).

One q35 guest of 1 GiB running `integrity size=256M` (256 MiB of data it keeps verifying and
rewriting, the rest free), migrated to /dev/null at full speed, `--runs` times per setup:

  stock        Debian's QEMU 7.2, virtio-balloon with free page reporting
  patched      the patched QEMU, same device, no extension negotiated
  page-states  the patched QEMU, page-states=on with sweeps every 20 ms (the guest's free memory
               is discarded and its state bytes change all the time)
  ps+hint      as page-states, plus free page hinting (hinted pages whose state byte says
               DISCARDED are sent anyway: hint-resent-pages)

Printed per setup: median (min-max) of total time, downtime, MiB transferred, pages sent whole
and zero pages. --csv FILE writes every run. The host's load is printed beside the figures: on
a busy 2-core host the times move, the page counts much less.

    python3 bench/migration/bench_migration.py --build-dir build [--runs 3] [--csv out.csv]
"""
import argparse
import csv
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "lib"))
from blimp_vm import STOCK_QEMU, BlimpVM, require_page_states, require_patched_qemu  # noqa: E402
from migration import migrate  # noqa: E402
from qmp import Qmp  # noqa: E402

MiB = 1 << 20
SETUPS = {
    "stock": (False, "virtio-balloon-pci,id=b0,free-page-reporting=on", False),
    "patched": (True, "virtio-balloon-pci,id=b0,free-page-reporting=on", False),
    "page-states": (True, "virtio-balloon-pci,id=b0,free-page-reporting=on,page-states=on,"
                          "page-states-interval-ms=20", False),
    "ps+hint": (True, "virtio-balloon-pci,id=b0,free-page-reporting=on,page-states=on,"
                      "page-states-interval-ms=20,free-page-hint=on,iothread=io0", True),
}


def one_run(build, name):
    patched, device, iothread = SETUPS[name]
    qemu = require_patched_qemu(build) if patched else STOCK_QEMU
    extra = (["-object", "iothread,id=io0"] if iothread else []) + ["-device", device]
    with BlimpVM(build, app="integrity", args=["size=256M", "pause=200ms"], machine="q35",
                 memory="1G", qmp=True, qemu=qemu, extra=extra, name=name, limit=300) as vm:
        if "page-states" in device:
            require_page_states(vm)
        vm.wait_for(r"integrity: round 3 ", 180)
        q = Qmp.connect(vm.qmp_path)
        st = migrate(vm, q, "exec:cat > /dev/null", timeout=240)
        ram = st["ram"]
        resent = q.execute("x-blimp-balloon-info")["hint-resent-pages"] if patched else 0
        return {"setup": name, "total_ms": st["total-time"], "downtime_ms": st["downtime"],
                "transferred_mib": round(ram["transferred"] / MiB, 1), "normal": ram["normal"],
                "zero": ram["duplicate"], "syncs": ram["dirty-sync-count"],
                "hint_resent": resent, "load1": round(os.getloadavg()[0], 2)}


def fmt(values, unit=""):
    return f"{statistics.median(values):g}{unit} ({min(values):g}-{max(values):g})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--csv")
    ap.add_argument("--setups", default=",".join(SETUPS))
    opts = ap.parse_args()
    build = os.path.abspath(opts.build_dir)
    rows = []
    for i in range(opts.runs):
        for name in opts.setups.split(","):
            t0 = time.monotonic()
            r = one_run(build, name)
            rows.append(r)
            print(f"run {i + 1} {name}: {r} ({time.monotonic() - t0:.0f}s)", flush=True)
    print(f"\n{'setup':12} {'total ms':>16} {'downtime ms':>14} {'MiB sent':>18} "
          f"{'pages whole':>20} {'zero pages':>22}  load")
    for name in opts.setups.split(","):
        rs = [r for r in rows if r["setup"] == name]
        print(f"{name:12} {fmt([r['total_ms'] for r in rs]):>16} "
              f"{fmt([r['downtime_ms'] for r in rs]):>14} "
              f"{fmt([r['transferred_mib'] for r in rs]):>18} "
              f"{fmt([r['normal'] for r in rs]):>20} {fmt([r['zero'] for r in rs]):>22}  "
              f"{fmt([r['load1'] for r in rs])}")
    if opts.csv:
        with open(opts.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
