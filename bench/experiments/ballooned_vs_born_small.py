#!/usr/bin/env python3
"""Issue 20, experiment 2: "Ballooned vs born small".

    python3 bench/experiments/ballooned_vs_born_small.py [--build-dir build]
        [--mems 512,384,256] [--big 1024] [--reps 3] [--workloads kvcache,speedtest1]
        [--kv-keys 32768] [--kv-ops 3000000] [--kv-work 2000] [--sq-size 40]
        [--qemu stock|patched|PATH] [--out bench/experiments/ballooned_vs_born_small]

For every M in --mems and every workload, two VMs, one at a time:

  ballooned   booted with --big MiB (1 GiB), QMP `balloon` to M once the guest's balloon driver
              is up, `query-balloon` polled until `actual` <= M; the guest was started with
              `start_after_balloon=(big-M)M` (kernel/main.cpp), so the app starts only once its
              balloon holds that much: the whole workload runs in the ballooned guest.
  born small  booted with -m M, the same device set, the balloon left alone.

Workloads (fixed work, so each reports a time):
  kvcache     keys=KV_KEYS ops=KV_OPS work=KV_WORK seed=1 (one 4 KiB value per key; all keys
              fit in every M, so nothing is shrunk and both VMs do the same misses and hits)
  speedtest1  --size SQ_SIZE --cachesize 100000 --verify, pcache=blimp (the in-memory VFS)

Each repetition runs every (M, workload) pair, ballooned and born small back to back, their order
alternating between repetitions (interleaved: slow drifts in host load hit both). Measured per
run: the app's own time for its work (kvcache `seconds=`, speedtest1 `seconds=`: the guest's
clock, i.e. wall time), the QEMU process's CPU time (utime+stime from /proc/PID/stat, 10 ms
ticks) from the app's start line to the last sample before QEMU exits (sampled every 50 ms), the
balloon's `actual` when the app started, the app's success line, and the host's load average. The app's result (kvcache's ops, hit rate
and shrunk count; speedtest1's verification hash) must be the same in both VMs: same work.

Outputs, from the --out prefix: PREFIX.csv (one row per run), PREFIX.md (the table of medians,
min-max and the ballooned/born-small ratio; the host and the command), PREFIX.meta.json (the
command, date, QEMU, uptime before and after), PREFIX.png (gnuplot; left
out with a message when gnuplot is missing). `--render PREFIX.csv` rewrites .md and .png from a
CSV without running anything.

Stock QEMU (/usr/bin/qemu-system-x86_64, Debian's 7.2) by default, -accel tcg, -M pc, one vCPU,
virtio-balloon-pci,deflate-on-oom=on. Standard library only.
"""
import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from blimp_vm import STOCK_QEMU, BlimpVM, patched_qemu_path, wait_balloon  # noqa: E402
from qmp import Qmp  # noqa: E402

MiB = 1 << 20
HZ = os.sysconf("SC_CLK_TCK")
DEFAULT_OUT = os.path.join(HERE, "ballooned_vs_born_small")
FIELDS = ["rep", "workload", "mem_mib", "variant", "boot_mib", "status", "ok", "app_s", "cpu_s",
          "actual_mib", "guest_balloon_line", "balloon_reach_s", "result", "load_before",
          "load_after", "error"]
KV_DONE_RE = re.compile(r"^kvcache: done ops=(\d+) hit_rate=([0-9.]+) ops_per_s=(\d+) "
                        r"shrunk=(\d+) seconds=([0-9.]+) ok$", re.M)
SQ_DONE_RE = re.compile(r"^speedtest1: done status=0 seconds=([0-9.]+) .*$", re.M)
SQ_HASH_RE = re.compile(r"^Verification Hash: (\d+ [0-9a-f]{48})$", re.M)
HOLDS_RE = re.compile(r"^blimp: balloon holds (\d+) MiB \(start_after_balloon=\S+\) after \d+ ms$",
                      re.M)
# The balloon driver is bound (its first target check runs right after): QMP `balloon` now is
# acted on by a running guest, not read at probe.
DRIVER_UP_RE = r"^virtio: balloon at "


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


class CpuSampler(threading.Thread):
    """Samples QEMU's utime+stime every 50 ms until the process is gone; `last` is the final
    sample (at most 50 ms of CPU before the exit is missed)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.last = cpu_ticks(pid)
        self.stop = False

    def run(self):
        while not self.stop:
            t = cpu_ticks(self.pid)
            if t is None:
                return
            self.last = t
            time.sleep(0.05)


def wait_actual(q, mem, timeout, vm):
    """Polls query-balloon every 5 ms until `actual` <= mem MiB; returns it. The guest's app
    starts only once its balloon is there, so the VM lives on after this for the whole workload
    (a short poll interval keeps a quick workload from ending the VM before the poll sees it)."""
    deadline = time.monotonic() + timeout
    while True:
        actual = q.execute("query-balloon")["actual"]
        if actual <= mem * MiB:
            return actual
        if time.monotonic() > deadline:
            return wait_balloon(q, lambda a: a <= mem * MiB, timeout=0, vm=vm)  # raises, with
            # the guest's balloon lines
        time.sleep(0.005)


def workload_args(o, workload):
    if workload == "kvcache":
        return (["keys=%d" % o.kv_keys, "ops=%d" % o.kv_ops, "work=%d" % o.kv_work, "seed=1",
                 "duration=3600s", "report=3600s"], r"^kvcache: started")
    return (["pcache=blimp", "--size", str(o.sq_size), "--cachesize", "100000", "--verify"],
            r"^speedtest1: args:")


def run_one(build, qemu, o, rep, workload, mem, variant):
    ballooned = variant == "ballooned"
    boot = o.big if ballooned else mem
    row = {"rep": rep, "workload": workload, "mem_mib": mem, "variant": variant,
           "boot_mib": boot, "load_before": loadavg(), "ok": 0, "error": ""}
    args, start_re = workload_args(o, workload)
    if ballooned:
        args = [f"start_after_balloon={boot - mem}M"] + args
    try:
        with BlimpVM(build, app=workload, args=args, machine="pc", memory=f"{boot}M", qmp=True,
                     limit=o.vm_limit, qemu=qemu, name=f"{workload}-{variant}-{mem}",
                     extra=["-device", "virtio-balloon-pci,id=balloon0,deflate-on-oom=on"]) as vm:
            q = Qmp.connect(vm.qmp_path)
            if ballooned:
                vm.wait_for(DRIVER_UP_RE, 120)
                t0 = time.monotonic()
                q.execute("balloon", value=mem * MiB)
                row["actual_mib"] = wait_actual(q, mem, 120, vm) >> 20
                row["balloon_reach_s"] = round(time.monotonic() - t0, 3)
            else:
                row["actual_mib"] = q.execute("query-balloon")["actual"] >> 20
            vm.wait_for(start_re, 180)
            pid = vm.pid
            cpu0 = cpu_ticks(pid)
            sampler = CpuSampler(pid)
            sampler.start()
            status = vm.wait_exit(timeout=o.vm_limit)
            sampler.stop = True
            sampler.join(2)
            out = vm.output
        row["status"] = status
        if cpu0 is not None and sampler.last is not None:
            row["cpu_s"] = round((sampler.last - cpu0) / HZ, 2)
        m = HOLDS_RE.search(out)
        row["guest_balloon_line"] = m.group(0) if m else ""
        if workload == "kvcache":
            d = KV_DONE_RE.search(out)
            if d:
                row["app_s"] = float(d.group(5))
                row["result"] = f"ops={d.group(1)} hit_rate={d.group(2)} shrunk={d.group(4)}"
        else:
            d = SQ_DONE_RE.search(out)
            h = SQ_HASH_RE.search(out)
            if d:
                row["app_s"] = float(d.group(1))
                row["result"] = f"hash={h.group(1) if h else None}"
        row["ok"] = int(status == 0 and d is not None
                        and (not ballooned or (m is not None and row["actual_mib"] <= mem)))
        if not row["ok"]:
            row["error"] = "no success line or balloon not at M: " + out[-600:].replace("\n", " | ")
    except Exception as e:  # noqa: BLE001 - a failed run is a row too, the others go on
        row["error"] = str(e)[-800:].replace("\n", " | ")
    row["load_after"] = loadavg()
    return row


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summarise(rows):
    """{(workload, mem): {variant: {"app": [..], "cpu": [..], "actual": [..]}}} of the ok runs."""
    out = {}
    for r in rows:
        if str(r.get("ok")) != "1":
            continue
        k = (r["workload"], int(r["mem_mib"]))
        v = out.setdefault(k, {}).setdefault(r["variant"], {"app": [], "cpu": [], "actual": []})
        if r.get("app_s") not in ("", None):
            v["app"].append(float(r["app_s"]))
        if r.get("cpu_s") not in ("", None):
            v["cpu"].append(float(r["cpu_s"]))
        if r.get("actual_mib") not in ("", None):
            v["actual"].append(int(r["actual_mib"]))
    return out


def med(xs):
    return statistics.median(xs) if xs else None


def spread(xs):
    return f"{med(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}]" if xs else "-"


def ratio(b, s):
    if not b or not s:
        return "-"
    return f"{(med(b) / med(s) - 1) * 100:+.1f}%"


def paired(rows):
    """{(workload, mem): {"app": [..], "cpu": [..]}}: ballooned/born-small - 1 of each repetition's
    pair (the two runs were back to back, so slow drifts of the host's load mostly cancel)."""
    runs = {}
    for r in rows:
        if str(r.get("ok")) == "1":
            runs.setdefault((r["workload"], int(r["mem_mib"]), r["rep"]), {})[r["variant"]] = r
    out = {}
    for (wl, mem, _), v in runs.items():
        if set(v) != {"ballooned", "born-small"}:
            continue
        d = out.setdefault((wl, mem), {"app": [], "cpu": []})
        for key, col in (("app", "app_s"), ("cpu", "cpu_s")):
            b, n = v["ballooned"].get(col), v["born-small"].get(col)
            if b not in ("", None) and n not in ("", None) and float(n) > 0:
                d[key].append(float(b) / float(n) - 1)
    return out


def pct_median(xs):
    return f"{med(xs) * 100:+.1f}%" if xs else "-"


def mean_ci(xs):
    """Mean and the half-width of its ~95% interval (2 standard errors), in percent."""
    if len(xs) < 2:
        return "-"
    return (f"{statistics.mean(xs) * 100:+.1f}% +- "
            f"{2 * statistics.stdev(xs) / len(xs) ** 0.5 * 100:.1f}% "
            f"(n={len(xs)}, sd of one pair {statistics.stdev(xs) * 100:.1f}%)")


def markdown(rows, meta):
    s = summarise(rows)
    p = paired(rows)
    L = ["# Ballooned vs born small (issue 20, experiment 2)", "",
         f"Command: `{meta.get('command', '')}`", "",
         f"Date: {meta.get('date', '')}. QEMU: `{meta.get('qemu', '')}`, -accel tcg, -M pc, one "
         f"vCPU, virtio-balloon-pci,deflate-on-oom=on. Ballooned: booted with "
         f"{meta.get('big', '')} MiB, ballooned to M before the app started. Born small: "
         f"booted with M. Host: {os.cpu_count()} cores, shared.", "",
         f"Host load (uptime): before `{meta.get('uptime_before', '')}`, after "
         f"`{meta.get('uptime_after', '')}`.", "",
         "Medians [min-max] over the repetitions; app s = the app's own time for its fixed work "
         "(guest clock = wall time); QEMU CPU s = utime+stime of the QEMU process over the same "
         "work; delta = ballooned median / born-small median - 1 (positive: ballooned slower); "
         "paired = median over the repetitions of (ballooned / born small - 1) of the two runs "
         "that ran back to back.",
         "",
         "| workload | M (MiB) | n | ballooned app s | born small app s | delta app | paired app | "
         "ballooned QEMU CPU s | born small QEMU CPU s | delta CPU | paired CPU | "
         "ballooned actual (MiB) |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (wl, mem) in sorted(s, key=lambda k: (k[0], -k[1])):
        b = s[(wl, mem)].get("ballooned", {"app": [], "cpu": [], "actual": []})
        n = s[(wl, mem)].get("born-small", {"app": [], "cpu": [], "actual": []})
        act = sorted(set(b["actual"]))
        pr = p.get((wl, mem), {"app": [], "cpu": []})
        L.append(f"| {wl} | {mem} | {len(b['app'])}+{len(n['app'])} | {spread(b['app'])} | "
                 f"{spread(n['app'])} | {ratio(b['app'], n['app'])} | {pct_median(pr['app'])} | "
                 f"{spread(b['cpu'])} | {spread(n['cpu'])} | {ratio(b['cpu'], n['cpu'])} | "
                 f"{pct_median(pr['cpu'])} | {', '.join(map(str, act)) or '-'} |")
    all_app = [x for v in p.values() for x in v["app"]]
    all_cpu = [x for v in p.values() for x in v["cpu"]]
    L += ["", "All pairs (every M and workload together), ballooned / born small - 1: app time "
          f"{mean_ci(all_app)}; QEMU CPU time {mean_ci(all_cpu)}."]
    bad = [r for r in rows if str(r.get("ok")) != "1"]
    L += ["", f"Runs: {len(rows)}, failed: {len(bad)}."]
    for r in bad:
        L.append(f"- failed: rep {r['rep']} {r['workload']} M={r['mem_mib']} {r['variant']}: "
                 f"{str(r.get('error', ''))[:300]}")
    results = sorted({(r["workload"], r.get("result", "")) for r in rows
                      if str(r.get("ok")) == "1"})
    L += ["", "Results reported by the apps (identical across variants means both did the same "
          "work):"]
    for wl, res in results:
        L.append(f"- {wl}: `{res}`")
    return "\n".join(L) + "\n"


def plot(rows, png):
    gp = shutil.which("gnuplot")
    if not gp:
        print("ballooned_vs_born_small: gnuplot not found, no plot", flush=True)
        return False
    s = summarise(rows)
    workloads = sorted({wl for wl, _ in s})
    tmp = tempfile.mkdtemp(prefix="bvbs-")
    try:
        plots = []
        for wl in workloads:
            dat = os.path.join(tmp, f"{wl}.dat")
            with open(dat, "w") as f:
                f.write("# M  b_app b_min b_max  s_app s_min s_max  b_cpu b_min b_max  "
                        "s_cpu s_min s_max\n")
                for mem in sorted(m for w, m in s if w == wl):
                    cols = [str(mem)]
                    for key in ("app", "cpu"):
                        for var in ("ballooned", "born-small"):
                            xs = s[(wl, mem)].get(var, {}).get(key) or []
                            cols += ([f"{med(xs):.3f}", f"{min(xs):.3f}", f"{max(xs):.3f}"]
                                     if xs else ["NaN"] * 3)
                    # order: b_app(2-4) s_app(5-7) b_cpu(8-10) s_cpu(11-13)
                    f.write(" ".join(cols) + "\n")
            for col, what in ((2, "app time (s, guest clock)"), (8, "QEMU CPU time (s)")):
                plots.append(
                    f"set title '{wl}: {what}'\n"
                    f"plot '{dat}' using ($1-4):{col}:{col + 1}:{col + 2} with yerrorlines "
                    f"lw 2 pt 7 title 'ballooned from 1 GiB', "
                    f"'{dat}' using ($1+4):{col + 3}:{col + 4}:{col + 5} with yerrorlines "
                    f"lw 2 pt 5 title 'born small'\n")
        script = (f"set terminal pngcairo size 1100,{420 * len(workloads)} font ',10'\n"
                  f"set output '{png}'\n"
                  f"set multiplot layout {len(workloads)},2 title "
                  f"'Ballooned vs born small: median and min-max per M (TCG, loaded 2-core host)'\n"
                  "set xlabel 'guest memory M (MiB)'\nset ylabel 'seconds'\nset grid\n"
                  "set key bottom right\nset yrange [0:*]\nset offsets 30,30,0,0\n"
                  + "".join(plots) + "unset multiplot\n")
        r = subprocess.run(["timeout", "60", gp], input=script, text=True, capture_output=True)
        if r.returncode != 0 or not os.path.exists(png):
            print(f"ballooned_vs_born_small: gnuplot failed: {r.stderr[-800:]}", flush=True)
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def render(prefix, rows, meta):
    with open(prefix + ".meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    with open(prefix + ".md", "w") as f:
        f.write(markdown(rows, meta))
    plot(rows, prefix + ".png")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--mems", default="512,384,256", help="M values in MiB, comma separated")
    ap.add_argument("--big", type=int, default=1024, help="the ballooned VM's boot memory (MiB)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workloads", default="kvcache,speedtest1")
    ap.add_argument("--kv-keys", type=int, default=32768, help="128 MiB of values: fits in 256")
    ap.add_argument("--kv-ops", type=int, default=3000000)
    ap.add_argument("--kv-work", type=int, default=2000)
    ap.add_argument("--sq-size", type=int, default=40)
    ap.add_argument("--qemu", default="stock", help="stock, patched, or a path")
    ap.add_argument("--vm-limit", type=int, default=600, help="seconds per VM (timeout)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output prefix (.csv, .md, .png)")
    ap.add_argument("--render", metavar="CSV", help="only rewrite .md and .png from a CSV")
    o = ap.parse_args()
    prefix = os.path.abspath(o.out)
    if o.render:
        rows = read_csv(o.render)
        meta_path = os.path.splitext(o.render)[0] + ".meta.json"
        meta = {"command": "(rendered from " + o.render + ")"}
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
        render(prefix, rows, meta)
        return 0
    build = os.path.abspath(o.build_dir)
    qemu = {"stock": STOCK_QEMU, "patched": patched_qemu_path(build)}.get(o.qemu, o.qemu)
    if not os.access(qemu, os.X_OK):
        print(f"ballooned_vs_born_small: no QEMU at {qemu}", file=sys.stderr)
        return 2
    mems = [int(x) for x in o.mems.split(",") if x]
    workloads = [w for w in o.workloads.split(",") if w]
    for w in workloads:
        if w not in ("kvcache", "speedtest1"):
            ap.error(f"unknown workload {w}")
    if any(m >= o.big for m in mems):
        ap.error("every M must be below --big")
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    meta = {"command": "python3 " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "qemu": qemu, "big": o.big,
            "uptime_before": subprocess.run(["uptime"], capture_output=True,
                                            text=True).stdout.strip()}
    rows = []
    for rep in range(1, o.reps + 1):
        order = ("ballooned", "born-small") if rep % 2 else ("born-small", "ballooned")
        for mem in mems:
            for wl in workloads:
                for variant in order:
                    r = run_one(build, qemu, o, rep, wl, mem, variant)
                    rows.append(r)
                    print(f"ballooned_vs_born_small: rep {rep} {wl} M={mem} {variant}: "
                          f"ok={r['ok']} app_s={r.get('app_s')} cpu_s={r.get('cpu_s')} "
                          f"actual={r.get('actual_mib')} reach={r.get('balloon_reach_s')} "
                          f"{r.get('result', '')} load={r['load_before']} "
                          f"{r['error'][:300]}", flush=True)
                    write_csv(prefix + ".csv", rows)  # partial results survive an interruption
    meta["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    render(prefix, rows, meta)
    print(markdown(rows, meta))
    print(f"ballooned_vs_born_small: wrote {prefix}.csv, {prefix}.md, {prefix}.png")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
