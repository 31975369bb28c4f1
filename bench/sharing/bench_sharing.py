#!/usr/bin/env python3
"""The headline sharing experiment: blind KSM over all guest RAM vs hint-targeted KSM.

Same VMs, same guest command line, same KSM settings, same (patched) QEMU binary:
  blind     -machine mem-merge=on (QEMU's default: all guest RAM MADV_MERGEABLE), balloon with
            every Blimp extension off (stock device behaviour; the guest sends no hints)
  targeted  -machine mem-merge=off, virtio-balloon-pci share-hints=on: only what the guests
            hint is MADV_MERGEABLE: the kernel image's read-only pages and the sealed data, and
            the WRITABLE merge candidates (kernel .data/.bss, page metadata, RAM below 1 MiB)
  targeted-nocand  the same with sharing.candidates=off: sealed data and kernel image only (what
            targeted was before the candidates; --modes targeted,targeted-nocand,blind)

Each VM runs `dataset` with the same seed: a sealed data set (identical across VMs) plus a
private working set (unique per VM, touched, never sealed) that blind KSM scans in vain.
For each mode: KSM is reset (run=2 drops all merges and stale rmap items), the VMs boot and build
their data with KSM stopped, then run=1 at t=0 and the script samples every 0.25 s:
  saving        /sys/kernel/mm/ksm/pages_sharing (pages saved host-wide)
  merging       sum of /proc/<qemu>/ksm_merging_pages over the experiment's VMs
  pages_scanned /sys/kernel/mm/ksm/pages_scanned
  ksmd CPU      utime+stime of ksmd (/proc/<ksmd>/stat)
until the VMs' merged pages have not moved for --settle seconds (and KSM did >= 2 more full
scans), or --max-time. At the end, the VMs' own saving (KSM-backed pages minus distinct KSM
pages, from pagemap and kpageflags: ksm.ksm_frames) is recorded as own_saving. Results: CSV per mode, RESULTS-style table (markdown) and a gnuplot PNG.

KSM settings are saved and restored (also on failure/SIGTERM), under a lock against other KSM
experiments. Other mergeable processes (QEMUs of other users with mem-merge=on) disturb the
host-wide numbers: they are listed in the output.

  python3 bench/sharing/bench_sharing.py --build-dir build --out bench/sharing
"""
import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "lib"))
from blimp_vm import BlimpVM, patched_qemu_path  # noqa: E402
from ksm import KsmSession, ksm_frames, merging_pages, mergeable_vmas, other_mergeable  # noqa: E402
import ksm_map  # noqa: E402

MiB = 1 << 20


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def smart_scan_for(choice, mode):
    """The smart_scan value a mode runs with, or None to leave the host's.

    Linux 6.7+ KSM "smart scan" skips a page that did not merge for 1, 2, 4, 8 scans; twins first
    seen a dozen scans apart can stay out of phase for good (docs/hangar.md, "KSM control").
    hangar's targeted mode therefore runs with smart_scan=0 and leaves it alone in blind mode
    (stock behaviour), and `--smart-scan hangar` (the default) does the same here."""
    if choice == "host":
        return None
    if choice == "hangar":
        return None if mode == "blind" or read_smart_scan() is None else 0
    return int(choice)


def add_smart_scan_arg(ap):
    """--smart-scan, for every script that measures through run_mode."""
    ap.add_argument("--smart-scan", default="hangar", choices=["hangar", "host", "0", "1"],
                    help="KSM smart_scan: hangar (default: 0 in targeted modes, the host's in "
                         "blind, as hangar runs them), host (leave it), 0 or 1 (every mode)")


def read_smart_scan():
    try:
        with open("/sys/kernel/mm/ksm/smart_scan") as f:
            return int(f.read())
    except OSError:
        return None  # a kernel before 6.7: no smart scan


def launch(args, mode, i):
    qemu = getattr(args, "qemu", None) or patched_qemu_path(args.build_dir)
    if mode == "blind":
        extra = ["-machine", "mem-merge=on", "-device", "virtio-balloon-pci,id=balloon0"]
    else:
        extra = ["-machine", "mem-merge=off",
                 "-device", "virtio-balloon-pci,id=balloon0,share-hints=on"]
    gargs = [f"seed={args.seed}", f"size={args.size}", f"zero={args.zero}",
             f"private={args.private}", "verify=20s", *getattr(args, "guest_args", "").split()]
    if mode == "targeted-nocand":
        gargs.append("sharing.candidates=off")
    return BlimpVM(args.build_dir, app="dataset", args=gargs, machine="q35", memory=args.memory,
                   qemu=qemu, extra=extra, name=f"{mode}{i}", limit=args.max_time + 600)


def ram_bytes(args):
    """Guest RAM of each VM in bytes (--memory)."""
    from vm_count import mib
    return int(mib(args.memory) * MiB)


def guest_page_map(args, pids):
    """At the end of a mode (--map): per VM the guest pages KSM merged, and over the first
    --map-pages guest pages (kernel image, .data/.bss, the page metadata) which are byte-identical
    in every VM and which of those are zero, as (first, count) runs. A page identical in every VM
    but not merged in one mode is one that mode's marking (or timing) missed; a page that differs
    between the VMs can be merged by no mode."""
    size = ram_bytes(args)
    same, zero = ksm_map.alike(pids, size, 0, args.map_pages)
    others = [ksm_map.outside_ram(p, size, mergeable_vmas(p)) for p in pids]
    other_frames = {h for vm in others for _, hs in vm for h in hs}
    return dict(ksm_runs=[ksm_map.runs(ksm_map.ksm_gpfns(p, size)) for p in pids],
                low_pages=args.map_pages, alike_runs=ksm_map.runs(same),
                zero_runs=ksm_map.runs(zero),
                # mergeable memory beside guest RAM: per VM [bytes, KSM pages] per VMA, and
                # the KSM pages and distinct KSM frames of all of them
                other_vmas=[[(b, len(hs)) for b, hs in vm] for vm in others],
                other_ksm_pages=sum(len(hs) for vm in others for _, hs in vm),
                other_ksm_frames=len(other_frames))


def run_mode(args, mode):
    print(f"== {mode}: {args.vms} x {args.memory}, dataset size={args.size} zero={args.zero} "
          f"private={args.private}; load {loadavg()}", flush=True)
    settings = dict(pages_to_scan=args.pages_to_scan, sleep_millisecs=args.sleep_ms)
    smart_scan = smart_scan_for(args.smart_scan, mode)
    if smart_scan is not None:
        settings["smart_scan"] = smart_scan
    rows = []
    deadline = time.monotonic() + args.wait_alone
    while other_mergeable() and time.monotonic() < deadline:
        time.sleep(5)  # other users' QEMUs (mem-merge=on) would be scanned too: wait them out
    with KsmSession(**settings) as ksm:
        ksm.unmerge_all()  # run=2 then 0: unmerge everything, drop stale rmap items
        vms = []
        try:
            for i in range(args.vms):
                vms.append(launch(args, mode, i))
            ready = []
            for v in vms:
                m = v.wait_for(r"dataset: ready .*build_ms=(\d+) seal_ms=(\d+)", 600)
                ready.append((int(m.group(1)), int(m.group(2))))
            hash_ms, candidates = [], []
            for v in vms:
                m = v.wait_for(r"dataset: sharing: .*hash_ms=(\d+) hints: requests=(\d+) "
                               r"entries=(\d+) pages=(\d+)", 10)
                hash_ms.append(tuple(int(x) for x in m.groups()))
                c = v.wait_for(r"dataset: sharing: .*candidates=(\d+)", 10)
                candidates.append(int(c.group(1)))
            time.sleep(2)  # let the guests go idle
            pids = [v.pid for v in vms]
            others_start = other_mergeable(exclude=set(pids))
            load_start = loadavg()
            smart_scan_in_effect = read_smart_scan()
            c0 = ksm.counters()
            cpu0 = ksm.ksmd_cpu_seconds()
            rss0 = sum(v.rss_kib() or 0 for v in vms)
            zero0 = sum(ksm_map.zero_mapped(pids, ram_bytes(args)))
            t0 = time.monotonic()
            ksm.start()
            last_change_t, last_merging, scans_at_change = 0.0, -1, c0.get("full_scans", 0)
            while True:
                time.sleep(args.interval)
                t = time.monotonic() - t0
                c = ksm.counters()
                merging = sum(merging_pages(p) for p in pids)
                row = dict(t=round(t, 3), saving=c["pages_sharing"], shared=c["pages_shared"],
                           merging=merging,
                           scanned=c.get("pages_scanned", 0) - c0.get("pages_scanned", 0),
                           full_scans=c["full_scans"] - c0["full_scans"],
                           ksmd_cpu=round(ksm.ksmd_cpu_seconds() - cpu0, 3))
                rows.append(row)
                # Settled: the experiment's own merged pages (exact per QEMU) have not moved. Not
                # the host-wide saving: other users' mergeable QEMUs keep moving that one, and a
                # run would never settle beside them. Nothing merged yet is "settled" only once
                # KSM made 3 full passes (it merges from its second pass on): a single VM may have
                # nothing to share at all.
                if abs(merging - last_merging) > max(16, 0.002 * max(last_merging, 1)):
                    last_merging, last_change_t, scans_at_change = merging, t, c["full_scans"]
                settled = (t - last_change_t >= args.settle and
                           c["full_scans"] >= scans_at_change + 2 and
                           (last_merging > 0 or c["full_scans"] - c0["full_scans"] >= 3))
                if settled or t >= args.max_time:
                    break
            own_mappings, own_frames = ksm_frames(pids)  # the VMs' own saving, exact
            page_map = guest_page_map(args, pids) if getattr(args, "map", False) else None
            rss1 = sum(v.rss_kib() or 0 for v in vms)
            zero1 = sum(ksm_map.zero_mapped(pids, ram_bytes(args)))
            others_end = other_mergeable(exclude=set(pids))
            outputs_ok = all("MISMATCH" not in v.output for v in vms)
        finally:
            for v in vms:
                v.kill()
    final = rows[-1]["saving"]
    t95 = next(r for r in rows if r["saving"] >= 0.95 * final) if final > 0 else rows[-1]
    res = dict(mode=mode, final_saving=final, final_saving_mib=final * 4096 / MiB,
               t95=t95["t"], cpu95=t95["ksmd_cpu"], scanned95=t95["scanned"],
               fullscans95=t95["full_scans"], t_end=rows[-1]["t"], cpu_end=rows[-1]["ksmd_cpu"],
               scanned_end=rows[-1]["scanned"], fullscans_end=rows[-1]["full_scans"],
               merging_end=rows[-1]["merging"], own_mappings=own_mappings,
               own_frames=own_frames, own_saving=own_mappings - own_frames,
               # huge-page splits that mapped zero subpages to the host's zero page: saved
               # memory too, in both modes, never in KSM's counters
               own_zero_remapped=zero1 - zero0,
               own_total=own_mappings - own_frames + zero1 - zero0,
               rss_before_mib=rss0 / 1024,
               rss_after_mib=rss1 / 1024, load_start=load_start, load_end=loadavg(),
               others=[o[:2] for o in others_start + others_end], verified=outputs_ok,
               build_seal_ms=ready, guest_hash=hash_ms, candidate_pages=candidates,
               settings=settings, smart_scan=smart_scan_in_effect)
    if page_map:
        res["map"] = page_map
    # steady-state cost after convergence: ksmd CPU per minute over the last part of the run
    tail = [r for r in rows if r["t"] >= t95["t"]]
    if len(tail) > 2 and tail[-1]["t"] > tail[0]["t"]:
        res["cpu_per_min_after"] = round((tail[-1]["ksmd_cpu"] - tail[0]["ksmd_cpu"]) * 60 /
                                         (tail[-1]["t"] - tail[0]["t"]), 3)
        res["scanned_per_s_after"] = round((tail[-1]["scanned"] - tail[0]["scanned"]) /
                                           (tail[-1]["t"] - tail[0]["t"]))
    print(json.dumps(res), flush=True)
    return res, rows


SUMMARY_FIELDS = ["mode", "own_saving_pages", "own_saving_mib", "own_zero_remapped_pages",
                  "own_total_pages", "own_total_mib", "host_pages_sharing", "merging_end",
                  "candidate_pages_per_vm", "t95_s", "ksmd_cpu_t95_s", "pages_scanned_t95",
                  "full_scans_t95", "ksmd_cpu_per_min_after", "smart_scan", "load_start",
                  "load_end", "other_mergeable"]


def write_summary(path, results):
    """One row per mode: the figures experiments.md quotes (the samples are in saving-*.csv)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        for r in results:
            w.writerow(dict(mode=r["mode"], own_saving_pages=r["own_saving"],
                            own_saving_mib=round(r["own_saving"] * 4096 / MiB, 2),
                            own_zero_remapped_pages=r.get("own_zero_remapped", ""),
                            own_total_pages=r.get("own_total", ""),
                            own_total_mib=round(r["own_total"] * 4096 / MiB, 2)
                            if "own_total" in r else "",
                            host_pages_sharing=r["final_saving"], merging_end=r["merging_end"],
                            candidate_pages_per_vm=max(r.get("candidate_pages") or [0]),
                            t95_s=r["t95"], ksmd_cpu_t95_s=r["cpu95"],
                            pages_scanned_t95=r["scanned95"], full_scans_t95=r["fullscans95"],
                            ksmd_cpu_per_min_after=r.get("cpu_per_min_after", ""),
                            smart_scan=r.get("smart_scan", ""),
                            load_start=r["load_start"], load_end=r["load_end"],
                            other_mergeable=len({o[0] for o in r["others"]})))


def describe(a):
    return (f"{a['vms']} x {a['memory']} VMs, {a['size']} identical sealed data + "
            f"{a['private']} private each")


def plot(out, results, tag="", png_name="saving.png", title="3 VMs, same data set"):
    png = os.path.join(out, png_name)
    rdir = os.path.join(out, "results")
    cmds = [
        "set terminal pngcairo size 900,520" if gnuplot_has("pngcairo") else "set terminal png size 900,520",
        f"set output '{png}'",
        "set datafile separator ','",
        "set key bottom right",
        "set xlabel 'seconds since KSM run=1'",
        "set ylabel 'host memory saved (MiB, pages_sharing)'",
        f"set title 'Blind KSM vs hint-targeted KSM: {title}'",
        "set grid",
    ]
    series = []
    for r in results:
        f = os.path.join(rdir, f"saving-{r['mode']}{tag}.csv")
        series.append(f"'{f}' using 1:($2*4096/1048576) skip 1 with lines lw 2 "
                      f"title '{r['mode']} (95% at {r['t95']:.1f}s, {r['cpu95']:.2f} s ksmd CPU)'")
    cmds.append("plot " + ", ".join(series))
    cmds = [c.replace("pages_sharing", "pages\\_sharing") for c in cmds]
    subprocess.run(["gnuplot"], input="\n".join(cmds), text=True, check=True)
    return png


def gnuplot_has(term):
    r = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
    return term in (r.stdout + r.stderr)


def table(out):
    """Markdown table of every results*.json under out/results."""
    import glob
    lines = ["| run | mode | saved (MiB) | own saved (MiB) | own saved with zero remaps (MiB) | "
             "VM pages merging | t95 (s) | "
             "t95 by VM merging (s) | ksmd CPU to t95 (s) | pages scanned to t95 | "
             "full scans to t95 | ksmd CPU/min after | smart scan | load (1/5/15 min) | "
             "other mergeable procs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(glob.glob(os.path.join(out, "results", "results*.json"))):
        tag = os.path.basename(path)[len("results"):-len(".json")] or "-rep1"
        for r in json.load(open(path))["results"]:
            others = sorted({o[0] for o in r["others"]})
            # t95 of the experiment's own VMs (sum of ksm_merging_pages): immune to other users
            csv_tag = "" if tag == "-rep1" else tag
            with open(os.path.join(out, "results", f"saving-{r['mode']}{csv_tag}.csv")) as f:
                samples = list(csv.DictReader(f))
            final_m = int(samples[-1]["merging"])
            t95m = next(float(x["t"]) for x in samples if int(x["merging"]) >= 0.95 * final_m)
            own = f"{r['own_saving'] * 4096 / MiB:.1f}" if "own_saving" in r else "-"
            total = f"{r['own_total'] * 4096 / MiB:.1f}" if "own_total" in r else "-"
            lines.append(f"| {tag[1:]} | {r['mode']} | {r['final_saving_mib']:.1f} | {own} | "
                         f"{total} | "
                         f"{r['merging_end']} | {r['t95']:.1f} | {t95m:.1f} | {r['cpu95']:.2f} | "
                         f"{r['scanned95']} | {r['fullscans95']} | "
                         f"{r.get('cpu_per_min_after', float('nan')):.2f} | "
                         f"{r.get('smart_scan', '?')} | {r['load_start']} | "
                         f"{len(others)} |")
    return "\n".join(lines)


def add_setup_args(ap):
    """The VMs, data set and KSM settings of the main configuration (also first_seconds.py's)."""
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--vms", type=int, default=3)
    ap.add_argument("--memory", default="512M")
    ap.add_argument("--seed", default="42")
    ap.add_argument("--size", default="64M")
    ap.add_argument("--zero", default="4M")
    ap.add_argument("--private", default="384M")
    ap.add_argument("--pages-to-scan", type=int, default=1000)
    ap.add_argument("--sleep-ms", type=int, default=20)
    ap.add_argument("--guest-args", default="", help="extra guest command-line words")


def main():
    ap = argparse.ArgumentParser()
    add_setup_args(ap)
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--settle", type=float, default=15)
    ap.add_argument("--max-time", type=float, default=300)
    ap.add_argument("--modes", default="targeted,blind")
    ap.add_argument("--tag", default="")
    ap.add_argument("--wait-alone", type=float, default=120,
                    help="wait up to this long for other mergeable processes to go away")
    add_smart_scan_arg(ap)
    ap.add_argument("--map", action="store_true",
                    help="at each mode's end, record which guest pages KSM merged and which low "
                         "pages are identical in every VM (results JSON, 'map')")
    ap.add_argument("--map-pages", type=lambda x: int(x, 0), default=0x800,
                    help="guest pages from 0 whose content --map compares (default 8 MiB)")
    ap.add_argument("--report", action="store_true",
                    help="only print the table of results/*.json and redraw saving.png")
    args = ap.parse_args()
    args.build_dir = os.path.abspath(args.build_dir)
    rdir = os.path.join(args.out, "results")
    os.makedirs(rdir, exist_ok=True)
    if args.report:
        print(table(args.out))
        doc = json.load(open(os.path.join(rdir, f"results{args.tag}.json")))
        print("plot:", plot(args.out, doc["results"], args.tag, title=describe(doc["args"])))
        return
    results = []
    for mode in args.modes.split(","):
        res, rows = run_mode(args, mode)
        results.append(res)
        with open(os.path.join(rdir, f"saving-{mode}{args.tag}.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
    with open(os.path.join(rdir, f"results{args.tag}.json"), "w") as f:
        json.dump(dict(args=vars(args), results=results), f, indent=1)
    write_summary(os.path.join(rdir, f"summary{args.tag}.csv"), results)
    print("plot:", plot(args.out, results, args.tag, f"saving{args.tag}.png",
                        title=describe(vars(args))))
    print(table(args.out))


if __name__ == "__main__":
    main()
