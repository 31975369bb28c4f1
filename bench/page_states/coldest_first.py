#!/usr/bin/env python3
"""A volatile cache under rising host pressure: which pages the host takes decides the hit rate.

One q35 guest (512 MiB, patched QEMU, page-states=on) runs `volatile-cache` with ENTRIES entries
of 4 pages, lookups spread uniformly over the first HOT entries only (the rest were filled once
and are never read again: cold data a real cache keeps around). The host takes memory in rounds
(one every --period seconds): first every free page (`unused-only`, so that what follows is about
the cache), then a volatile deficit that rises round by round (--steps, in pages). Three ways to
take it, each in its own VM, same run:

  ages      x-blimp-balloon-discard max-pages=DEFICIT with the guest's age block (patch 0012):
            the pages idle longest go first;
  address   the same with page-ages=off: the deficit in address order (patch 0011 alone);
  all       today's sweep without a limit (hangar --sweep-when always): every volatile page,
            whatever the deficit;
  none      no pressure, no discards (the hit rate the cache has when the host leaves it alone).

Per mode and round: volatile pages discarded, the misses of the hot lookups in the interval after
the round (lookups that found their entry discarded and recomputed it; from the app's report
lines) and the hit rate, and at the end the cold entries lost. Writes coldest_first.csv and coldest_first.md next to this script (or --out), and prints
the table.

    coldest_first.py --build-dir build [--entries 512] [--hot 128] [--period 4]
                     [--steps 0,0,256,512,1024,1536] [--modes ages,address,all,none]
"""
import argparse
import csv
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "lib"))
from blimp_vm import BlimpVM, patched_qemu_path  # noqa: E402
from qmp import Qmp  # noqa: E402

REPORT_RE = re.compile(r"volatile-cache: t=(\d+) lookups=(\d+) hits=(\d+) discards=(\d+)")


def counters(output):
    """(lookups, hits, discards) of the app's last report line."""
    m = REPORT_RE.findall(output)
    if not m:
        return 0, 0, 0
    return int(m[-1][1]), int(m[-1][2]), int(m[-1][3])


def run_mode(build, qemu, mode, a):
    props = "page-states=on" + (",page-ages=off" if mode == "address" else "")
    duration = int(a.period * (len(a.steps) + 2) + 20)
    vm = BlimpVM(build, app="volatile-cache",
                 args=[f"entries={a.entries}", "pages=4", f"hot={a.hot}", f"duration={duration}s",
                       "report=1s", f"work={a.work}"],
                 machine="q35", memory="512M", qmp=True, qemu=qemu, limit=duration + 240,
                 extra=["-device", f"virtio-balloon-pci,id=balloon0,{props}"])
    rows = []
    with vm:
        vm.wait_for(r"volatile-cache: ready", 180)
        q = Qmp.connect(vm.qmp_path)
        time.sleep(a.period)  # the cold entries age; the hot ones stay in use
        for rnd, deficit in enumerate(a.steps):
            before = counters(vm.output)
            took = 0
            if mode != "none":
                q.execute("x-blimp-balloon-discard", {"unused-only": True}, timeout=60)
                if mode == "all":
                    res = q.execute("x-blimp-balloon-discard", timeout=60)
                    took = res["discarded-volatile"]
                elif deficit:
                    res = q.execute("x-blimp-balloon-discard", {"max-pages": deficit}, timeout=60)
                    took = res["discarded-volatile"]
            time.sleep(a.period)
            after = counters(vm.output)
            lookups, hits = after[0] - before[0], after[1] - before[1]
            rows.append({"mode": mode, "round": rnd, "deficit_pages": deficit,
                         "volatile_discarded": took, "lookups": lookups,
                         "misses": after[2] - before[2],
                         "hit_rate": round(hits / lookups, 4) if lookups else None})
            print(f"  {mode:8s} round {rnd}: deficit {deficit:5d}, took {took:5d} volatile pages, "
                  f"{rows[-1]['misses']} hot misses, hit rate {rows[-1]['hit_rate']}", flush=True)
        vm.wait_for(r"volatile-cache: cold entries=\d+ lost=\d+", duration + 120)
        vm.wait_exit(60)
    cold = re.search(r"volatile-cache: cold entries=(\d+) lost=(\d+)", vm.output)
    bad = re.search(r"corrupt_bytes=(\d+) page_states", vm.output)
    for r in rows:
        r["cold_entries_lost"] = int(cold.group(2))
        r["corrupt_bytes"] = int(bad.group(1)) if bad else None
    return rows


def table(rows, a):
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    out = [f"Hot misses after each round (entries={a.entries} of 4 pages, hot={a.hot}, "
           f"period {a.period} s): lookups that found their entry discarded; volatile pages "
           f"the host took in brackets.", "",
           "| round | deficit (pages) | " + " | ".join(modes) + " |",
           "|---|---|" + "---|" * len(modes)]
    for rnd, deficit in enumerate(a.steps):
        cells = []
        for m in modes:
            r = next(x for x in rows if x["mode"] == m and x["round"] == rnd)
            cells.append(f"{r['misses']} ({r['volatile_discarded']})")
        out.append(f"| {rnd} | {deficit} | " + " | ".join(cells) + " |")
    lost = {m: next(x for x in rows if x["mode"] == m)["cold_entries_lost"] for m in modes}
    bad = {m: next(x for x in rows if x["mode"] == m)["corrupt_bytes"] for m in modes}
    def total(m, key):
        return sum(x[key] for x in rows if x["mode"] == m)

    out += ["", "| | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes),
            "| hot misses, all rounds | " + " | ".join(str(total(m, "misses")) for m in modes) +
            " |",
            "| volatile pages taken | " +
            " | ".join(str(total(m, "volatile_discarded")) for m in modes) + " |",
            "| hot hit rate, all rounds | " +
            " | ".join(f"{1 - total(m, 'misses') / max(1, total(m, 'lookups')):.4f}"
                       for m in modes) + " |",
            f"| cold entries lost (of {a.entries - a.hot}) | " +
            " | ".join(str(lost[m]) for m in modes) + " |",
            "| corrupt bytes | " + " | ".join(str(bad[m]) for m in modes) + " |"]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--entries", type=int, default=512)
    ap.add_argument("--hot", type=int, default=128)
    ap.add_argument("--work", type=int, default=0)
    ap.add_argument("--period", type=float, default=4.0)
    ap.add_argument("--steps", default="0,0,256,512,1024,1536")
    ap.add_argument("--modes", default="ages,address,all,none")
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()
    a.steps = [int(x) for x in a.steps.split(",")]
    qemu = patched_qemu_path(a.build_dir)
    if not qemu:
        sys.exit("the patched QEMU is not built (host/qemu/build.sh)")
    rows = []
    for mode in a.modes.split(","):
        rows += run_mode(a.build_dir, qemu, mode, a)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "coldest_first.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    md = table(rows, a)
    load = open("/proc/loadavg").read().split()[:3]
    with open(os.path.join(a.out, "coldest_first.md"), "w") as f:
        f.write(md + f"\n\nHost load average during the run: {' '.join(load)} (2 cores).\n")
    print(md)


if __name__ == "__main__":
    main()
