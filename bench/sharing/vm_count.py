#!/usr/bin/env python3
"""Sharing against the number of VMs (issue 20, experiment 1; docs/experiments.md).

For each N in --vms (default 1,2,4,8,10) and each mode (targeted, blind), boots N identical VMs
running `dataset` with the same seed and measures KSM's saving with bench_sharing.run_mode (the
same launch, KSM session and sampling as the headline blind-vs-targeted experiment): KSM reset
(run=2), VMs boot and build their data with KSM stopped, run=1 at t=0, samples every 0.25 s
until the saving has not moved for --settle seconds and KSM made 2 more full scans.

Per N and mode (one CSV row):
  saved           the N QEMUs' own saving at the end: their pages backed by a KSM page minus the
                  distinct KSM pages among them (pagemap + kpageflags, ksm.ksm_frames); exact
                  whatever else on the host merges. host_pages_sharing: the host-wide
                  /sys/kernel/mm/ksm/pages_sharing beside it (equal when nothing else merges)
  shared          the N QEMUs' pages backed by a KSM page (= sum of their ksm_merging_pages;
                  ESX's "shared": every mapping of a shared page counts, the kept copy included)
  touched         sum of the N QEMUs' VmRSS just before run=1: the host memory the VMs touched
                  (guest pages written, QEMU's own heap and TCG code buffer); the saving's share of
                  it is "saved % touched"
  configured      N x --memory (ESX's denominator, "aggregate VM memory")
  t95             first sample at which the QEMUs' merged pages (sum of ksm_merging_pages, exact)
                  reached 95% of their final value (empty if nothing saved)
  ksmd CPU        utime+stime of ksmd from t=0 to t95 and to the end
Writes OUT/vm_count.csv (summary), OUT/vm_count.md (markdown table), OUT/vm_count.png
(gnuplot), OUT/samples/<mode>-n<N>.csv (every sample) and OUT/vm_count.json (arguments, host
load before and after, per-run details).

KSM settings are saved and restored per run, also on SIGTERM (ksm.KsmSession), under the lock
against other KSM users.

  sudo python3 bench/sharing/vm_count.py --build-dir build            # full: 1,2,4,8,10
  python3 bench/sharing/vm_count.py --report                           # redraw table and plot
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_sharing  # noqa: E402

MiB = 1 << 20
PAGE = 4096
FIELDS = ["vms", "mode", "memory_mib_per_vm", "configured_mib", "touched_mib", "data_mib_per_vm",
          "saved_pages", "saved_mib", "host_pages_sharing", "saved_pct_touched",
          "saved_pct_configured",
          "shared_pages", "shared_pct_configured", "t95_s", "ksmd_cpu_t95_s", "ksmd_cpu_end_s",
          "t_end_s", "full_scans_end", "load_start", "other_mergeable", "verified"]


def mib(size):
    """'256M' / '1G' / '64' (MiB) -> MiB as a float."""
    s = str(size).strip().upper()
    scale = {"K": 1 / 1024, "M": 1, "G": 1024}.get(s[-1:], None)
    return float(s[:-1]) * scale if scale is not None else float(s)


def summarize(n, args, res, rows):
    final = res["own_saving"]
    # t95 on the VMs' own merged pages (exact per QEMU; the host-wide counter moves with other
    # users' QEMUs): for N identical VMs sharing each page N ways it is the saving x N/(N-1).
    end_m = rows[-1]["merging"]
    t95 = next((r for r in rows if r["merging"] >= 0.95 * end_m), None) if final > 0 else None
    configured = n * mib(args.memory)
    touched = res["rss_before_mib"]
    saved_mib = final * PAGE / MiB
    return dict(
        vms=n, mode=res["mode"], memory_mib_per_vm=round(mib(args.memory)),
        configured_mib=round(configured), touched_mib=round(touched, 1),
        data_mib_per_vm=round(mib(args.size) + mib(args.private)),
        saved_pages=final, saved_mib=round(saved_mib, 1), host_pages_sharing=res["final_saving"],
        saved_pct_touched=round(100 * saved_mib / touched, 1) if touched else "",
        saved_pct_configured=round(100 * saved_mib / configured, 1),
        shared_pages=res["own_mappings"],
        shared_pct_configured=round(100 * res["own_mappings"] * PAGE / MiB / configured, 1),
        t95_s=t95["t"] if t95 else "", ksmd_cpu_t95_s=t95["ksmd_cpu"] if t95 else "",
        ksmd_cpu_end_s=res["cpu_end"], t_end_s=res["t_end"], full_scans_end=res["fullscans_end"],
        load_start=res["load_start"], other_mergeable=len({o[0] for o in res["others"]}),
        verified=int(res["verified"]))


def write_csv(path, rows, fields):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def read_summary(out):
    with open(os.path.join(out, "vm_count.csv")) as f:
        return list(csv.DictReader(f))


def table(summary):
    lines = ["| VMs | mode | touched (MiB) | saved (MiB) | saved % of touched | "
             "saved % of configured | shared % of configured | t95 (s) | ksmd CPU to t95 (s) | "
             "ksmd CPU to end (s) | host pages_sharing (MiB) | load (1/5/15) | other mergeable |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        dash = lambda v: v if v != "" else "-"  # noqa: E731
        lines.append(f"| {r['vms']} | {r['mode']} | {r['touched_mib']} | {r['saved_mib']} | "
                     f"{r['saved_pct_touched']} | {r['saved_pct_configured']} | "
                     f"{r['shared_pct_configured']} | {dash(r['t95_s'])} | "
                     f"{dash(r['ksmd_cpu_t95_s'])} | {r['ksmd_cpu_end_s']} | "
                     f"{int(r['host_pages_sharing']) * PAGE / MiB:.1f} | {r['load_start']} | "
                     f"{r['other_mergeable']} |")
    return "\n".join(lines)


def plot(out, summary, title):
    """Three panels against the number of VMs: MiB saved, saved % of touched, t95."""
    ddir = os.path.join(out, "samples")
    modes = []
    for r in summary:
        if r["mode"] not in modes:
            modes.append(r["mode"])
    for m in modes:  # gnuplot-friendly: one whitespace-separated file per mode
        with open(os.path.join(ddir, f"plot-{m}.dat"), "w") as f:
            f.write("# vms saved_mib saved_pct_touched shared_pct_configured t95_s "
                    "saved_pct_configured\n")
            for r in summary:
                if r["mode"] == m:
                    nan = lambda v: "NaN" if v == "" else v  # noqa: E731
                    f.write(f"{r['vms']} {r['saved_mib']} {nan(r['saved_pct_touched'])} "
                            f"{r['shared_pct_configured']} {nan(r['t95_s'])} "
                            f"{r['saved_pct_configured']}\n")
    png = os.path.join(out, "vm_count.png")
    term = ("set terminal pngcairo size 1500,480" if bench_sharing.gnuplot_has("pngcairo")
            else "set terminal png size 1500,480")
    xs = sorted({int(r["vms"]) for r in summary})
    xtics = "(" + ", ".join(f"'{x}' {x}" for x in xs) + ")"
    title = title.replace("_", "\\_")  # gnuplot's enhanced text: _ is a subscript
    cmds = [term, f"set output '{png}'", "set multiplot layout 1,3 title '" + title + "'",
            "set grid", "set key top left", "set xlabel 'identical VMs'", f"set xtics {xtics}",
            f"set xrange [0:{max(xs) + 1}]", "set style data linespoints"]

    def series(col, what="", dt=1):
        return ", ".join(f"'{os.path.join(ddir, f'plot-{m}.dat')}' using 1:{col} lw 2 pt 7 "
                         f"dt {dt} lc {i + 1} title '{m}{what}'" for i, m in enumerate(modes))

    # ESX's figure as the issue quotes it (Waldspurger, OSDI 2002, page sharing): about 67% of
    # aggregate VM memory shared at 10 identical VMs (full Linux guests; docs/experiments.md).
    esx = "'-' using 1:2 with points pt 9 ps 2 lc rgb 'black' title 'ESX 2002: 67% shared, 10 VMs'"
    cmds += ["set title 'memory the VMs saved'", "set ylabel 'MiB'", "plot " + series(2),
             "set title 'saved % of touched (solid), shared % of configured (dashed)'",
             "set ylabel '%'", "set yrange [0:100]",
             "plot " + series(3, " saved/touched") + ", " + series(4, " shared/configured", 2) +
             ", " + esx,
             "10 67", "e",
             "set title 'time to 95% of the final saving'", "set ylabel 's'", "set yrange [0:*]",
             "plot " + series(5), "unset multiplot"]
    subprocess.run(["gnuplot"], input="\n".join(cmds), text=True, check=True)
    return png


def describe(args):
    return (f"{args.memory} VMs: {args.size} identical sealed data + {args.private} private each; "
            f"KSM pages_to_scan={args.pages_to_scan} sleep_millisecs={args.sleep_ms}")


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--out", default=os.path.join(HERE, "vm_count"))
    ap.add_argument("--vms", default="1,2,4,8,10",
                    help="comma-separated VM counts (10: ESX's largest point)")
    ap.add_argument("--modes", default="targeted,blind")
    ap.add_argument("--memory", default="256M")
    ap.add_argument("--seed", default="42")
    ap.add_argument("--size", default="96M", help="identical (sealed) data per VM")
    ap.add_argument("--zero", default="4M", help="of which zero-filled")
    ap.add_argument("--private", default="48M", help="unique working set per VM")
    ap.add_argument("--pages-to-scan", type=int, default=1000)
    ap.add_argument("--sleep-ms", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--settle", type=float, default=15)
    ap.add_argument("--max-time", type=float, default=300)
    ap.add_argument("--wait-alone", type=float, default=30,
                    help="wait up to this long for other mergeable processes to go away")
    bench_sharing.add_smart_scan_arg(ap)
    ap.add_argument("--report", action="store_true",
                    help="only redraw the table and plot from OUT/vm_count.csv")
    return ap.parse_args()


def main():
    args = parse()
    args.build_dir = os.path.abspath(args.build_dir)
    os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
    if args.report:
        summary = read_summary(args.out)
        with open(os.path.join(args.out, "vm_count.json")) as f:  # the run's own settings
            run = argparse.Namespace(**json.load(f)["args"])
        print(table(summary))
        print("plot:", plot(args.out, summary, describe(run)))
        return
    counts = [int(x) for x in args.vms.split(",")]
    load_before, t_start = bench_sharing.loadavg(), time.monotonic()
    summary, details = [], []
    for n in counts:
        run_args = argparse.Namespace(**{**vars(args), "vms": n})
        for mode in args.modes.split(","):
            res, rows = bench_sharing.run_mode(run_args, mode)
            write_csv(os.path.join(args.out, "samples", f"{mode}-n{n}.csv"), rows,
                      list(rows[0].keys()))
            summary.append(summarize(n, args, res, rows))
            details.append(res)
            write_csv(os.path.join(args.out, "vm_count.csv"), summary, FIELDS)  # as it goes
    with open(os.path.join(args.out, "vm_count.json"), "w") as f:
        json.dump(dict(args=vars(args), load_before=load_before, load_after=bench_sharing.loadavg(),
                       wall_s=round(time.monotonic() - t_start), runs=details), f, indent=1)
    md = table(summary)
    with open(os.path.join(args.out, "vm_count.md"), "w") as f:
        f.write(f"{describe(args)}; host load before {load_before}, after "
                f"{bench_sharing.loadavg()}\n\n{md}\n")
    print(md)
    print("plot:", plot(args.out, summary, describe(args)))


if __name__ == "__main__":
    main()
