#!/usr/bin/env python3
"""Where do the first seconds of a KSM run go? (issue 20, experiment 4; docs/experiments.md)

Boots the headline experiment's VMs (bench_sharing.launch: same QEMU, guest arguments and KSM
settings) in one mode, and around KSM's run=1 records what the sampling of bench_sharing.py is
too coarse to show:
  before run=1  per QEMU: the VMAs marked MADV_MERGEABLE (smaps VmFlags `mg`: count, bytes, and
                the bytes of them backed by RAM), when the guest's hints were answered (the
                guest's `sharing:` lines) relative to run=1;
  after run=1   every --interval (default 50 ms): KSM's host-wide counters (pages_scanned,
                full_scans, pages_sharing, pages_shared, pages_unshared, pages_volatile,
                pages_skipped) and per QEMU its ksm_rmap_items (how far ksmd's first pass got in
                it: one rmap item per page scanned) and ksm_merging_pages, ksmd's CPU time.
Writes OUT/first-<mode><tag>.csv (every sample) and OUT/first-<mode><tag>.json (the VMA survey,
events: first page scanned in each VM, first full scan, first merge, 50% and 95% of the final
merged pages, each with the pages scanned and ksmd CPU so far).

    sudo python3 bench/sharing/first_seconds.py --build-dir build --mode targeted

KSM settings are saved and restored (ksm.KsmSession, under the KSM lock), as in bench_sharing.
"""
import argparse
import csv
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_sharing  # noqa: E402
import ksm_map  # noqa: E402
import vm_count  # noqa: E402
from ksm import KsmSession, mergeable_vmas, other_mergeable, proc_ksm  # noqa: E402


def vma_survey(pid):
    """Mergeable VMAs of one QEMU: count, bytes, resident bytes (smaps Rss of `mg` VMAs)."""
    n, size, rss = 0, 0, 0
    cur_rss = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                cur_rss = 0
            elif line.startswith("Rss:"):
                cur_rss = int(line.split()[1]) * 1024
            elif line.startswith("VmFlags:") and " mg" in line:
                n += 1
                rss += cur_rss
    size = sum(e - s for s, e in mergeable_vmas(pid))
    return dict(mergeable_vmas=n, mergeable_bytes=size, mergeable_rss=rss)


def main():
    ap = argparse.ArgumentParser()
    bench_sharing.add_setup_args(ap)
    ap.add_argument("--out", default=os.path.join(HERE, "first_seconds"))
    ap.add_argument("--mode", default="targeted",
                    choices=("targeted", "targeted-nocand", "blind"))
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--max-time", type=float, default=300)  # for bench_sharing.launch
    ap.add_argument("--qemu", help="QEMU binary (default: the build's patched QEMU)")
    ap.add_argument("--map", action="store_true",
                    help="at the end, record which guest pages of each VM KSM merged (runs)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    args.build_dir = os.path.abspath(args.build_dir)
    os.makedirs(args.out, exist_ok=True)
    settings = dict(pages_to_scan=args.pages_to_scan, sleep_millisecs=args.sleep_ms)
    rows, doc = [], dict(args=vars(args), load_start=bench_sharing.loadavg())
    with KsmSession(**settings) as ksm:
        ksm.unmerge_all()
        vms = []
        try:
            t_launch = time.monotonic()
            for i in range(args.vms):
                vms.append(bench_sharing.launch(args, args.mode, i))
            for v in vms:
                v.wait_for(r"dataset: ready ", 600)
                v.wait_for(r"dataset: sharing: ", 10)
            time.sleep(2)
            pids = [v.pid for v in vms]
            doc["others"] = other_mergeable(exclude=set(pids))
            doc["vmas"] = [vma_survey(p) for p in pids]
            doc["ready_s_after_launch"] = round(time.monotonic() - t_launch, 2)
            c0 = ksm.counters()
            cpu0 = ksm.ksmd_cpu_seconds()
            t0 = time.monotonic()
            ksm.start()
            while True:
                t = time.monotonic() - t0
                c = ksm.counters()
                row = dict(t=round(t, 3))
                for k in ("pages_scanned", "full_scans", "pages_skipped"):
                    row[k] = c.get(k, 0) - c0.get(k, 0)
                for k in ("pages_sharing", "pages_shared", "pages_unshared", "pages_volatile"):
                    row[k] = c.get(k, 0)
                row["ksmd_cpu"] = round(ksm.ksmd_cpu_seconds() - cpu0, 3)
                for i, p in enumerate(pids):
                    st = proc_ksm(p)
                    row[f"rmap{i}"] = st.get("ksm_rmap_items", 0)
                    row[f"merging{i}"] = st.get("ksm_merging_pages", 0)
                rows.append(row)
                if t >= args.duration:
                    break
                time.sleep(args.interval)
            doc["vmas_end"] = [vma_survey(p) for p in pids]
            if args.map:
                size = int(vm_count.mib(args.memory) * (1 << 20))
                doc["ksm_runs"] = [ksm_map.runs(ksm_map.ksm_gpfns(p, size)) for p in pids]
        finally:
            for v in vms:
                v.kill()
    doc["load_end"] = bench_sharing.loadavg()
    merged = [sum(r[f"merging{i}"] for i in range(args.vms)) for r in rows]
    final = merged[-1]
    ev = {}

    def at(name, idx):
        r = rows[idx]
        ev[name] = dict(t=r["t"], pages_scanned=r["pages_scanned"], full_scans=r["full_scans"],
                        ksmd_cpu=r["ksmd_cpu"])

    for i in range(args.vms):
        idx = next((k for k, r in enumerate(rows) if r[f"rmap{i}"] > 0), None)
        if idx is not None:
            at(f"first_scan_vm{i}", idx)
    for name, cond in (("first_full_scan", lambda k: rows[k]["full_scans"] >= 1),
                       ("second_full_scan", lambda k: rows[k]["full_scans"] >= 2),
                       ("first_merge", lambda k: merged[k] > 0),
                       ("merged_50pct", lambda k: final and merged[k] >= 0.5 * final),
                       ("merged_95pct", lambda k: final and merged[k] >= 0.95 * final)):
        idx = next((k for k in range(len(rows)) if cond(k)), None)
        if idx is not None:
            at(name, idx)
    doc["events"] = ev
    doc["final_merging"] = final
    base = os.path.join(args.out, f"first-{args.mode}{args.tag}")
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    print(json.dumps(dict(vmas=doc["vmas"], events=ev, final=final, others=doc["others"],
                          load=(doc["load_start"], doc["load_end"])), indent=1))


if __name__ == "__main__":
    main()
