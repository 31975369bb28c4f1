#!/usr/bin/env python3
"""A hangar fleet held to its budget: pressure-driven page-state sweeps plus the balloon, against
the balloon alone (issue 14, the last benchmark).

The same three q35 VMs run through hangar (host/hangar, docs/hangar.md) under the same budget,
once per mode, from a fresh start each time:

  balloon  hangar's idle-tax balloon policy alone. The balloon device without page states: the
           guests register no page-state array and publish no ages, so the policy sees
           `total - available` as before, and nothing is swept (policy.sweep 0).
  sweeps   the same policy plus `policy.sweep` every --sweep-period with
           `policy.sweep_when: pressure`: page states on (`page-states=on`), page ages on (Blimp
           guests publish them by default, so the policy also takes the measured working set).
  ages     (not run by default) page states and ages on, no sweeps: tells how much of a
           difference between the two comes from the ages-measured working set alone.

Both modes use the best balloon this tree has (`coalesce-discard=on`) with `deflate-on-oom`, and
free page reporting off, so that what comes back is either inflated by the balloon or discarded
by a sweep. `policy.host_reserve` is 0: this 24 GiB host is never short of memory itself, so the
budget alone is the pressure (PSI stays possible, and would be logged by hangar).

The fleet (each VM does something different with memory, so that each reclaim path meets the
memory it can and cannot take):

  cache  768 MiB, volatile-cache: a 256 MiB cache in volatile memory (16384 entries of 16 KiB),
         lookups spread over the first --hot entries only; the rest filled once and cold. The
         balloon cannot take volatile memory (it is not available memory); a sweep can, coldest
         first, and the guest recomputes an entry it finds lost. Every hit verified byte for byte.
  kv     512 MiB, kvcache: a cache in ordinary memory with a shrinker (200000 keys of 4 KiB,
         skewed lookups), which grows into whatever it is given. The balloon takes it through the
         shrinker; a sweep only gets the guest's free pages (allocated pages are STABLE). Every
         hit checked against the value's checksum.
  batch  512 MiB, memhog: bursts of --burst MiB (a build, a load: allocated, written, held a few
         seconds, verified and freed), idle in between. Freed memory is what both paths take
         best; the next burst has to get memory back (deflate-on-oom, then the policy).

Measured per run, from hangar's CSV and summary.json, the guests' consoles and /proc:
  - the fleet's QEMU RSS summed, sampled every --interval while all three ran, against the budget:
    time above it, worst excess, time from first going over until first back under, mean; the
    same for the guests' memory (balloon `actual` summed, what the balloon policy holds to the
    budget);
  - app throughput: kvcache ops/s and hit rate, volatile-cache lookups/s and hit rate (and the
    cold entries the host took), memhog's burst allocation times; also per second of that VM's
    QEMU CPU (load-independent-ish on a shared host);
  - host CPU: every QEMU plus hangar, utime+stime (getrusage of hangar's process tree after it is
    reaped, and hangar's own from /proc/PID/stat while it runs);
  - memory moved: pages discarded by sweeps (summary.json) and by the balloon (the CSV's
    `actual` going down, summed);
  - corruption: volatile-cache's corrupt bytes, kvcache's checksum verdict, memhog's corrupted
    pages. Must all be zero.

Writes fleet_budget.csv (one row per run), fleet_budget_rss.csv (the fleet's RSS and guest
memory over time, per run) and fleet_budget.md beside this script (--quick: fleet_budget_quick.*;
--out DIR puts them elsewhere) and prints the table. Modes alternate across repetitions (balloon,
sweeps, then sweeps, balloon) so a drift in host load hits both alike.

    fleet_budget.py --build-dir build [--reps 2] [--duration 80] [--budget 768] [--quick]
                    [--modes balloon,sweeps] [--out DIR]
"""
import argparse
import csv
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "lib"))
from blimp_vm import patched_qemu_path  # noqa: E402
from hangar import HangarRun, find_hangar  # noqa: E402

MiB = 1 << 20
PAGE = 4096
CLK_TCK = os.sysconf("SC_CLK_TCK")
VMS = ("cache", "kv", "batch")

KV_DONE = re.compile(r"kvcache: done ops=(\d+) hit_rate=([\d.]+) ops_per_s=(\d+) shrunk=(\d+) "
                     r"seconds=([\d.]+) (\w+)")
CACHE_DONE = re.compile(r"volatile-cache: done lookups=(\d+) hits=(\d+) discards=(\d+) "
                        r"recomputes=(\d+) lost_pages=(\d+) corrupt_bytes=(\d+) page_states=(\w+)")
CACHE_COLD = re.compile(r"volatile-cache: cold entries=(\d+) lost=(\d+)")
HOG_ALLOC = re.compile(r"memhog: step \d+ alloc (\d+) MiB in (\d+) ms, holding (\d+) MiB")
HOG_VERIFIED = re.compile(r"memhog: verified (\d+) pages, (\d+) corrupted")

FIELDS = ["mode", "rep", "order", "budget_mib", "interval_s", "window_s",
          # the fleet's QEMU RSS summed, while all three VMs ran
          "rss_peak_mib", "rss_mean_mib", "rss_end_mib", "rss_over_s", "rss_over_share",
          "rss_worst_excess_mib", "rss_first_over_s", "rss_back_under_s", "rss_under_at_end",
          # the guests' memory (balloon actual summed)
          "guest_mean_mib", "guest_over_s", "guest_worst_excess_mib", "guest_back_under_s",
          "cache_guest_mean_mib", "kv_guest_mean_mib", "batch_guest_mean_mib",
          "cache_rss_mean_mib", "kv_rss_mean_mib", "batch_rss_mean_mib",
          # memory moved
          "swept_mib", "swept_asked_mib", "sweep_rounds", "balloon_inflated_mib",
          "balloon_deflated_mib", "cache_swept_mib", "kv_swept_mib", "batch_swept_mib",
          # apps
          "kv_ops", "kv_ops_per_s", "kv_hit_rate", "kv_ops_per_cpu_s", "kv_ok",
          "cache_lookups", "cache_lookups_per_s", "cache_hit_rate", "cache_discards",
          "cache_lookups_per_cpu_s", "cache_cold_entries", "cache_cold_lost", "cache_page_states",
          "batch_alloc_ms", "batch_allocs", "batch_burst_mib", "batch_got_mib",
          # corruption
          "cache_corrupt_bytes", "batch_corrupt_pages",
          # host CPU
          "cpu_total_s", "cpu_hangar_s", "cpu_qemu_cache_s", "cpu_qemu_kv_s", "cpu_qemu_batch_s",
          "exit_status", "load_before", "load_after", "started"]


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_seconds(pid):
    """utime + stime of a live process, seconds; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def memhog_steps(a):
    """`wait, then (alloc BURST, hold, free, idle) x N`, N bursts spread over the app's duration."""
    lead, hold = (10, 6) if a.quick else (12, 8)
    gap = max(4, (a.duration - lead - a.bursts * hold) // a.bursts)
    burst = f"alloc:{a.burst}M,wait:{hold}s,free:all,wait:{gap}s"
    return "steps=" + ",".join([f"wait:{lead}s"] + [burst] * a.bursts)


def fleet_config(mode, a):
    props = {"deflate-on-oom": True, "coalesce-discard": True}
    policy = {"name": "idle-tax", "host_reserve": "0"}
    if mode in ("sweeps", "ages"):
        props["page-states"] = True
    if mode == "sweeps":
        policy.update(sweep=f"{int(a.sweep_period * 1000)}ms", sweep_when="pressure")
    d = f"{a.duration}s"
    return {
        "budget": f"{a.budget}M",
        # A safety net: the apps end by themselves (their final reports are the throughput).
        "duration": f"{a.duration + 90}s",
        "interval": f"{int(a.interval * 1000)}ms",
        "policy": policy,
        "defaults": {"machine": "q35", "balloon_props": props},
        "vms": [
            # min_memory: the cache allocates its 256 MiB at start, while the policy may already
            # be inflating; a floor above it keeps that allocation from racing the balloon
            # (a failed volatile allocation ends the app). The same in every mode.
            {"name": "cache", "memory": "768M", "min_memory": f"{a.cache_floor}M",
             "app": "volatile-cache",
             "args": [f"entries={a.entries}", "pages=4", f"hot={a.hot}", f"duration={d}",
                      "report=5s"]},
            {"name": "kv", "memory": "512M", "app": "kvcache",
             "args": [f"keys={a.keys}", f"duration={d}", "report=5s", f"work={a.work}"]},
            # allow_oom=1: a burst that cannot get all its memory (the balloon busy inflating
            # when it asks: docs/balloon.md) holds what it got, and says so; not a failure.
            {"name": "batch", "memory": "512M", "app": "memhog",
             "args": [memhog_steps(a), "allow_oom=1"]},
        ],
    }


def series_of(csv_path):
    """[(time_s, {vm: row})] from hangar's CSV."""
    by_t = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            by_t.setdefault(float(row["time_s"]), {})[row["vm"]] = row
    return sorted(by_t.items())


def fleet_points(series):
    """[(time_s, rss_sum, actual_sum)] for the samples in which all three VMs ran (as hangar's own
    summary counts them: before the last boots or after the first ends, a sum says nothing)."""
    pts = []
    for t, rows in series:
        if set(rows) != set(VMS):
            continue
        if any(r["state"] != "running" or not r["rss_bytes"] or not r["balloon_actual_bytes"]
               for r in rows.values()):
            continue
        pts.append((t, sum(int(r["rss_bytes"]) for r in rows.values()),
                    sum(int(r["balloon_actual_bytes"]) for r in rows.values())))
    return pts


def against_budget(pts, idx, budget, interval):
    """Time above the budget, worst excess, time from first over until first back under, mean,
    for the value at pts[*][idx]. Each sample stands for the time until the next (at most two
    intervals: a stalled sampler does not make a long stretch out of one sample)."""
    over_s, worst, first_over, back_under, total = 0.0, 0, None, None, 0
    for i, p in enumerate(pts):
        t, v = p[0], p[idx]
        dt = min(pts[i + 1][0] - t, 2 * interval) if i + 1 < len(pts) else interval
        total += v
        if v > budget:
            over_s += dt
            worst = max(worst, v - budget)
            if first_over is None:
                first_over = t
        elif first_over is not None and back_under is None:
            back_under = t - first_over
    return {"over_s": round(over_s, 1), "worst_mib": round(worst / MiB, 1),
            "first_over_s": first_over, "back_under_s": None if back_under is None
            else round(back_under, 1), "mean_mib": round(total / len(pts) / MiB, 1)}


def balloon_moves(series):
    """MiB the balloons inflated and deflated over the run: each VM's `actual` going down
    (inflate) and up (deflate), summed sample to sample."""
    inflated = deflated = 0
    last = {}
    for _, rows in series:
        for vm, r in rows.items():
            if not r["balloon_actual_bytes"]:
                continue
            v = int(r["balloon_actual_bytes"])
            if vm in last:
                inflated += max(0, last[vm] - v)
                deflated += max(0, v - last[vm])
            last[vm] = v
    return round(inflated / MiB, 1), round(deflated / MiB, 1)


def read_log(path):
    with open(path, errors="replace") as f:
        return f.read()


def run_once(build, mode, rep, order, a, series_out):
    hangar, kernel = find_hangar(build)
    qemu = patched_qemu_path(build)
    row = {k: "" for k in FIELDS}
    row.update(mode=mode, rep=rep, order=order, budget_mib=a.budget, interval_s=a.interval,
               load_before=loadavg(), started=time.strftime("%H:%M:%S", time.gmtime()))
    with tempfile.TemporaryDirectory(prefix="fleet-budget-") as tmp:
        path = os.path.join(tmp, "fleet.json")
        with open(path, "w") as f:
            json.dump(fleet_config(mode, a), f, indent=1)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with HangarRun(hangar, kernel, ["--status", "off", "--config", path], qemu=qemu,
                       limit=a.duration + 240, csv=True, prefix="fleet-budget-") as r:
            # hangar's own CPU: sampled while it runs (its rusage after the wait also holds
            # the QEMUs it reaped).
            hangar_cpu = [0.0]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    c = cpu_seconds(r.proc.pid)
                    if c is not None:
                        hangar_cpu[0] = c
                    done.wait(0.25)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                rc = r.wait()
            finally:
                done.set()
                sampler.join()
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            s, vms = r.summary()
            series = series_of(r.csv)
            logs = {n: read_log(vms[n]["serial_log"]) for n in VMS}
            err = r.stderr()
        row["exit_status"] = rc
        row["load_after"] = loadavg()
        row["cpu_total_s"] = round((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), 2)
        row["cpu_hangar_s"] = round(hangar_cpu[0], 2)
        for n in VMS:
            row[f"cpu_qemu_{n}_s"] = vms[n].get("qemu_cpu_seconds", "")

        budget = a.budget * MiB
        pts = fleet_points(series)
        if not pts:
            raise RuntimeError(f"{mode}: no sample with all three VMs running\n{err[-3000:]}")
        for t, rss, act in pts:
            series_out.append({"mode": mode, "rep": rep, "time_s": t,
                               "fleet_rss_mib": round(rss / MiB, 1),
                               "guest_memory_mib": round(act / MiB, 1), "budget_mib": a.budget})
        rb = against_budget(pts, 1, budget, a.interval)
        gb = against_budget(pts, 2, budget, a.interval)
        window = pts[-1][0] - pts[0][0] + a.interval
        row.update(window_s=round(window, 1),
                   rss_peak_mib=round(max(p[1] for p in pts) / MiB, 1), rss_mean_mib=rb["mean_mib"],
                   rss_end_mib=round(pts[-1][1] / MiB, 1), rss_over_s=rb["over_s"],
                   rss_over_share=round(rb["over_s"] / window, 3),
                   rss_worst_excess_mib=rb["worst_mib"], rss_first_over_s=rb["first_over_s"],
                   rss_back_under_s="" if rb["back_under_s"] is None else rb["back_under_s"],
                   rss_under_at_end=int(pts[-1][1] <= budget),
                   guest_mean_mib=gb["mean_mib"], guest_over_s=gb["over_s"],
                   guest_worst_excess_mib=gb["worst_mib"],
                   guest_back_under_s="" if gb["back_under_s"] is None else gb["back_under_s"])

        # Per VM, over the same samples: where the budget went (which guest the policy gave
        # memory to, and which one's RSS the sweeps took).
        shown = {t for t, _, _ in pts}
        for n in VMS:
            rows_n = [rows[n] for t, rows in series if t in shown]
            for col, field in (("balloon_actual_bytes", "guest"), ("rss_bytes", "rss")):
                row[f"{n}_{field}_mean_mib"] = round(
                    sum(int(r[col]) for r in rows_n) / len(rows_n) / MiB, 1)

        swept = {n: vms[n].get("pstate_discarded_pages", 0) for n in VMS}
        asked = sum(vms[n].get("pstate_asked_pages", 0) for n in VMS)
        row.update(swept_mib=round(sum(swept.values()) * PAGE / MiB, 1),
                   swept_asked_mib=round(asked * PAGE / MiB, 1),
                   sweep_rounds=s.get("page_state_sweeps", {}).get("rounds", 0),
                   **{f"{n}_swept_mib": round(swept[n] * PAGE / MiB, 1) for n in VMS})
        row["balloon_inflated_mib"], row["balloon_deflated_mib"] = balloon_moves(series)

        m = KV_DONE.search(logs["kv"])
        if m:
            ops, hit, ops_s, _, secs, verdict = m.groups()
            cpu = vms["kv"].get("qemu_cpu_seconds")
            row.update(kv_ops=int(ops), kv_ops_per_s=int(ops_s), kv_hit_rate=float(hit),
                       kv_ok=int(verdict == "ok"),
                       kv_ops_per_cpu_s=round(int(ops) / cpu) if cpu else "")
        m = CACHE_DONE.search(logs["cache"])
        if m:
            lookups, hits, discards, _, _, corrupt, states = m.groups()
            cpu = vms["cache"].get("qemu_cpu_seconds")
            row.update(cache_lookups=int(lookups),
                       cache_lookups_per_s=round(int(lookups) / a.duration),
                       cache_hit_rate=round(int(hits) / max(1, int(lookups)), 4),
                       cache_discards=int(discards), cache_corrupt_bytes=int(corrupt),
                       cache_page_states=states,
                       cache_lookups_per_cpu_s=round(int(lookups) / cpu) if cpu else "")
        m = CACHE_COLD.search(logs["cache"])
        if m:
            row.update(cache_cold_entries=int(m.group(1)), cache_cold_lost=int(m.group(2)))
        allocs = HOG_ALLOC.findall(logs["batch"])
        row.update(batch_allocs=len(allocs),
                   batch_alloc_ms=sum(int(ms) for _, ms, _ in allocs) if allocs else "",
                   batch_burst_mib=sum(int(want) for want, _, _ in allocs),
                   batch_got_mib=sum(int(got) for _, _, got in allocs))
        m = HOG_VERIFIED.search(logs["batch"])
        if m and "memhog: done" in logs["batch"]:
            row["batch_corrupt_pages"] = int(m.group(2))
    print(f"  {mode:7s} rep {rep}: RSS peak {row['rss_peak_mib']} MiB, over the budget "
          f"{row['rss_over_s']} s (worst +{row['rss_worst_excess_mib']} MiB), back under after "
          f"{row['rss_back_under_s'] or 'never'} s; swept {row['swept_mib']} MiB, ballooned "
          f"{row['balloon_inflated_mib']} MiB; kv {row['kv_ops_per_s']} ops/s hit "
          f"{row['kv_hit_rate']}, cache hit {row['cache_hit_rate']}; CPU {row['cpu_total_s']} s; "
          f"exit {rc}", flush=True)
    return row


def table(rows, a, cmd, load_before, load_after, date):
    def cell(r, key, fmt="{}"):
        v = r[key]
        return "-" if v == "" or v is None else fmt.format(v)

    cols = [f"{r['mode']} #{r['rep'] + 1}" for r in rows]
    lines = [("fleet RSS peak (MiB)", "rss_peak_mib", "{}"),
             ("fleet RSS mean (MiB)", "rss_mean_mib", "{}"),
             ("fleet RSS at the end (MiB)", "rss_end_mib", "{}"),
             ("time above the budget (s)", "rss_over_s", "{}"),
             ("share of the run above the budget", "rss_over_share", "{:.0%}"),
             ("worst excess over the budget (MiB)", "rss_worst_excess_mib", "{}"),
             ("first over the budget at (s)", "rss_first_over_s", "{}"),
             ("from first over until first under (s)", "rss_back_under_s", "{}"),
             ("guest memory (balloons' actual) mean (MiB)", "guest_mean_mib", "{}"),
             ("guest memory mean (MiB): cache / kv / batch", ("cache_guest_mean_mib",
              "kv_guest_mean_mib", "batch_guest_mean_mib"), "{} / {} / {}"),
             ("RSS mean (MiB): cache / kv / batch", ("cache_rss_mean_mib", "kv_rss_mean_mib",
              "batch_rss_mean_mib"), "{} / {} / {}"),
             ("guest memory above the budget (s)", "guest_over_s", "{}"),
             ("discarded by sweeps (MiB): cache / kv / batch", ("cache_swept_mib", "kv_swept_mib",
              "batch_swept_mib"), "{} / {} / {}"),
             ("sweeps asked for (MiB), rounds", ("swept_asked_mib", "sweep_rounds"), "{}, {}"),
             ("inflated by the balloons (MiB), deflated", ("balloon_inflated_mib",
              "balloon_deflated_mib"), "{}, {}"),
             ("kv: ops/s, hit rate", ("kv_ops_per_s", "kv_hit_rate"), "{}, {}"),
             ("kv: ops per QEMU CPU-s", "kv_ops_per_cpu_s", "{}"),
             ("cache: lookups/s, hit rate", ("cache_lookups_per_s", "cache_hit_rate"), "{}, {}"),
             ("cache: lookups per QEMU CPU-s", "cache_lookups_per_cpu_s", "{}"),
             ("cache: entries found lost (recomputed)", "cache_discards", "{}"),
             ("cache: cold entries the host took", ("cache_cold_lost", "cache_cold_entries"),
              "{} of {}"),
             ("batch: burst allocation time (ms, all bursts)", "batch_alloc_ms", "{}"),
             ("batch: MiB the bursts got / asked for", ("batch_got_mib", "batch_burst_mib"),
              "{} / {}"),
             ("host CPU: QEMUs + hangar (s)", "cpu_total_s", "{}"),
             ("host CPU: QEMU cache / kv / batch (s)", None, None),
             ("host CPU: hangar (s)", "cpu_hangar_s", "{}"),
             ("corrupt: cache bytes / kv / batch pages", None, None),
             ("window with all three running (s)", "window_s", "{}"),
             ("load average before / after", None, None)]

    def special(label, r):
        if label.startswith("host CPU: QEMU cache"):
            return " / ".join(cell(r, f"cpu_qemu_{n}_s", "{:.1f}") for n in VMS)
        if label.startswith("corrupt"):
            kv = {1: "ok", 0: "CORRUPT"}.get(r["kv_ok"], "-")
            return f"{cell(r, 'cache_corrupt_bytes')} / {kv} / {cell(r, 'batch_corrupt_pages')}"
        if label.startswith("load average"):
            return f"{r['load_before'].split()[0]} / {r['load_after'].split()[0]}"
        raise KeyError(label)

    out = [f"Fleet under a {a.budget} MiB budget ({date}; `{cmd}`): cache 768 MiB volatile-cache "
           f"({a.entries} entries of 16 KiB, {a.hot} hot), kv 512 MiB kvcache ({a.keys} keys), "
           f"batch 512 MiB memhog ({a.bursts} burst(s) of {a.burst} MiB); q35, TCG, patched QEMU, "
           f"apps {a.duration} s, hangar interval {a.interval} s"
           + (f", sweeps every {a.sweep_period} s" if any(r["mode"] == "sweeps" for r in rows)
              else "") + ". Runs in the order they ran.", "",
           "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, key, fmt in lines:
        cells = [special(label, r) if key is None
                 else fmt.format(*(cell(r, k) for k in key)) if isinstance(key, tuple)
                 else cell(r, key, fmt) for r in rows]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", f"Host: {os.cpu_count()} cores, load average before the benchmark {load_before}, "
            f"after {load_after} (1, 5, 15 min)."]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--modes", default="balloon,sweeps",
                    help="comma-separated: balloon, sweeps, ages")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--duration", type=int, default=80, help="seconds each app runs")
    ap.add_argument("--budget", type=int, default=768, help="MiB")
    ap.add_argument("--interval", type=float, default=0.5, help="hangar's period, seconds")
    ap.add_argument("--sweep-period", type=float, default=0.5, help="seconds")
    ap.add_argument("--entries", type=int, default=16384, help="volatile-cache entries (16 KiB)")
    ap.add_argument("--hot", type=int, default=4096, help="volatile-cache hot entries")
    ap.add_argument("--cache-floor", type=int, default=320,
                    help="MiB the policy leaves the cache VM at least (its min_memory)")
    ap.add_argument("--keys", type=int, default=200000, help="kvcache keys (4 KiB values)")
    ap.add_argument("--work", type=int, default=2000, help="kvcache's cost of a miss")
    ap.add_argument("--burst", type=int, default=320, help="memhog burst, MiB")
    ap.add_argument("--bursts", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="behaviour only: apps 30 s, one burst, one run per mode")
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()
    if a.quick:
        a.reps, a.duration, a.bursts = 1, 30, 1
    modes = a.modes.split(",")
    for m in modes:
        if m not in ("balloon", "sweeps", "ages"):
            sys.exit(f"unknown mode {m} (balloon, sweeps, ages)")
    build = os.path.abspath(a.build_dir)
    if not os.access(patched_qemu_path(build), os.X_OK):
        sys.exit(f"the patched QEMU is not built ({patched_qemu_path(build)}; host/qemu/build.sh)")
    find_hangar(build)
    cmd = "python3 bench/page_states/fleet_budget.py " + " ".join(sys.argv[1:])
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = loadavg()
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"before: {uptime_before}", flush=True)
    rows, series = [], []
    order = 0
    for rep in range(a.reps):
        for mode in (modes if rep % 2 == 0 else list(reversed(modes))):
            rows.append(run_once(build, mode, rep, order, a, series))
            order += 1
    load_after = loadavg()
    print(f"after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}",
          flush=True)
    name = "fleet_budget_quick" if a.quick else "fleet_budget"
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, name + ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(a.out, name + "_rss.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(series[0]))
        w.writeheader()
        w.writerows(series)
    md = table(rows, a, cmd, load_before, load_after, date)
    with open(os.path.join(a.out, name + ".md"), "w") as f:
        f.write(md + "\n")
    print(md)
    bad = [r for r in rows if r["exit_status"] != 0]
    if bad:
        sys.exit(f"hangar failed in {len(bad)} run(s): "
                 + ", ".join(f"{r['mode']} #{r['rep'] + 1} exit {r['exit_status']}" for r in bad))


if __name__ == "__main__":
    main()
