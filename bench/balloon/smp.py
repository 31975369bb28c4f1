#!/usr/bin/env python3
"""The balloon and boot with several vCPUs, idle and with every vCPU busy: Blimp against the
Linux anchor, same stock QEMU, same run (issue 17).

    python3 bench/balloon/smp.py [--build-dir build] [--vcpus 1,2,4] [--runs 3] [--quick]

For each vCPU count, each guest, and each of two loads, boots a fresh q35 VM (stock QEMU 7.2,
TCG; several vCPUs run as one host thread each, `-accel tcg,thread=multi`), touches FILL MiB and
frees it (so the host backs it), then inflates the balloon to TARGET MiB and deflates it back,
timed the way bench/balloon/run.py times them (QMP `balloon`, `query-balloon` polled every 5 ms):

  idle   the guest waits (Linux: its shell reads the console; Blimp: memhog `wait:`, the BSP
         halts, the APs idle in their mailbox loop)
  busy   every vCPU computes: Linux runs `spin N` (N shell busy loops; the scheduler spreads
         them), Blimp runs memhog `threads=N` with a `spin:` step (a loop that never halts on
         every CPU; the balloon's work runs on the BSP on the way out of its interrupts)

Blimp's memhog allocates and frees with threads=N too, so every CPU's allocations are in the
memory the balloon then takes. The host has 2 cores: at 4 vCPUs (and at 2 busy vCPUs plus
QEMU's main loop) the vCPUs share them, so a figure there is what an overcommitted host gives,
not what the guest could do with 4 real CPUs; the tables say how many host CPUs there were.

Writes smp.csv (one row per measurement) and smp.md (medians, min-max) beside this script
(--out to change). Exit status 0 when every guest booted and every balloon target was reached,
1 otherwise, 2 on missing inputs. Every QEMU runs under `timeout` and is killed on the way out.
"""
import argparse
import csv
import datetime
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import run as balloon  # noqa: E402  (the Guest class, inputs and helpers of the main benchmark)

FIELDS = ["vcpus", "host_cpus", "guest", "load", "rep", "boot_s", "inflate_s", "inflate_mibs",
          "inflate_cpu_s", "deflate_s", "deflate_mibs", "deflate_cpu_s", "inflated_mib",
          "returned_frac", "load1"]


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def measure(kind, vcpus, load, a):
    """One fresh VM: boot, touch and free, (busy: start the spinning), inflate, deflate."""
    if kind == "blimp":
        rest = "spin" if load == "busy" else "wait"
        steps = f"alloc:{a.fill}M,free:all,{rest}:{balloon.VM_LIMIT_S}s"
        words = f"threads={vcpus}"
    else:
        steps, words = "", ""
    g = balloon.Guest(kind, "q35", a.mem, a.build_dir, a.blimp_elf_run,
                      "free-page-reporting=off", steps, blimp_words=words, smp=vcpus)
    r = {"vcpus": vcpus, "host_cpus": os.cpu_count(), "guest": kind, "load": load}
    try:
        r["boot_s"] = round(g.start(), 3)
        if kind == "linux":
            g.send(f"fill {a.fill}")
            g.wait_for(r"BLIMP-LINUX: done fill", 300, "fill")
            g.send("drop")
            g.wait_for(r"BLIMP-LINUX: done drop", 120, "drop")
            if load == "busy":
                g.send(f"spin {vcpus}")
                g.wait_for(r"BLIMP-LINUX: done spin", 60, "spin")
        else:
            g.wait_for(r"memhog: step 2 freed", 300, "memhog alloc/free")
            online = g.grep(r"smp: (\d+) of (\d+) CPUs online")
            if not online or int(online[-1][1].group(1)) != vcpus:
                raise balloon.BenchError(f"blimp: expected {vcpus} CPUs online:\n{g.tail()}")
        time.sleep(1.0)
        full = g.actual_mb()
        rss0 = g.rss_kib() / 1024
        t, _, _, cpu = g.balloon(a.target)
        time.sleep(1.0)
        rss1 = g.rss_kib() / 1024
        inflated = full - a.target
        r.update(inflate_s=round(t, 4), inflate_mibs=round(inflated / t),
                 inflate_cpu_s=None if cpu is None else round(cpu, 4), inflated_mib=inflated,
                 returned_frac=round((rss0 - rss1) / inflated, 4))
        t, _, _, cpu = g.balloon(full)
        r.update(deflate_s=round(t, 4), deflate_mibs=round(inflated / t),
                 deflate_cpu_s=None if cpu is None else round(cpu, 4))
        if kind == "blimp" and g.grep(r"CORRUPTION|MISMATCH"):
            raise balloon.BenchError(f"blimp: corruption reported:\n{g.tail()}")
        r["load1"] = loadavg()
        balloon.log(f"  {kind} {vcpus} vCPU {load}: boot {r['boot_s']:.2f} s, inflate "
                    f"{inflated:.0f} MiB in {r['inflate_s'] * 1000:.0f} ms, deflate in "
                    f"{r['deflate_s'] * 1000:.0f} ms (load {r['load1']})")
    finally:
        g.stop()
    return r


fmt = balloon.fmt  # median (min–max), as in run.py's tables


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) not in (None, "")]
    return statistics.median(vals) if vals else None


def table(rows, a, meta):
    out = [f"Balloon and boot with several vCPUs ({meta['date']}; `{meta['command']}`): q35, "
           f"stock QEMU 7.2, TCG (MTTCG above 1 vCPU), {a.mem} MiB, touch and free {a.fill} MiB, "
           f"inflate to {a.target} MiB and deflate back; {a.runs} run(s), median (min-max). "
           f"Host: {os.cpu_count()} CPUs, load average {meta['load_start']} at the start, "
           f"{meta['load_end']} at the end.", "",
           "| vCPUs (host CPUs) | load | boot, s: Linux / Blimp | inflate MiB/s: Linux | Blimp "
           "| Blimp / Linux | deflate MiB/s: Linux | Blimp | Blimp / Linux |",
           "|---|---|---|---|---|---|---|---|---|"]
    for n in sorted({r["vcpus"] for r in rows}):
        for load in ("idle", "busy"):
            sel = {k: [r for r in rows if r["vcpus"] == n and r["load"] == load and r["guest"] == k]
                   for k in ("linux", "blimp")}
            if not sel["linux"] and not sel["blimp"]:
                continue

            def ratio(key):
                lv, bv = med(sel["linux"], key), med(sel["blimp"], key)
                return f"{bv / lv:.1f}x" if lv and bv else "n/a"
            out.append(f"| {n} ({os.cpu_count()}) | {load} | "
                       f"{fmt([r['boot_s'] for r in sel['linux']], 2)} / "
                       f"{fmt([r['boot_s'] for r in sel['blimp']], 2)} | "
                       f"{fmt([r['inflate_mibs'] for r in sel['linux']])} | "
                       f"{fmt([r['inflate_mibs'] for r in sel['blimp']])} | "
                       f"{ratio('inflate_mibs')} | "
                       f"{fmt([r['deflate_mibs'] for r in sel['linux']])} | "
                       f"{fmt([r['deflate_mibs'] for r in sel['blimp']])} | "
                       f"{ratio('deflate_mibs')} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--blimp-elf", help="default: BUILD_DIR/blimp.elf")
    ap.add_argument("--vcpus", default="1,2,4")
    ap.add_argument("--loads", default="idle,busy")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mem", type=int, default=1024, help="guest RAM, MiB")
    ap.add_argument("--fill", type=int, default=800, help="MiB touched and freed first")
    ap.add_argument("--target", type=int, default=256, help="balloon target, MiB")
    ap.add_argument("--quick", action="store_true", help="one run, 1 and 2 vCPUs")
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()
    if a.quick:
        a.runs, a.vcpus = 1, "1,2"
    a.build_dir = os.path.abspath(a.build_dir)
    a.blimp_elf = a.blimp_elf or os.path.join(a.build_dir, "blimp.elf")
    try:
        balloon.ensure_inputs(a, ["stock"])
    except balloon.BenchError as e:
        print(f"smp.py: {e}", file=sys.stderr)
        return 2
    meta = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python3 bench/balloon/smp.py " + " ".join(sys.argv[1:]),
            "load_start": " ".join(open("/proc/loadavg").read().split()[:3])}
    rows, ok = [], True
    os.makedirs(a.out, exist_ok=True)
    try:
        # Interleaved (rep outermost, then vCPUs, load and guest), so slow drift in the
        # host's load falls on both guests alike.
        for rep in range(a.runs):
            for n in [int(x) for x in a.vcpus.split(",")]:
                for load in a.loads.split(","):
                    for kind in ("linux", "blimp"):
                        try:
                            r = measure(kind, n, load, a)
                        except balloon.BenchError as e:
                            balloon.log(f"  {kind} {n} vCPU {load}: FAILED: {e}")
                            ok = False
                            continue
                        r["rep"] = rep
                        rows.append(r)
                        with open(os.path.join(a.out, "smp.csv"), "w", newline="") as f:
                            w = csv.DictWriter(f, fieldnames=FIELDS)
                            w.writeheader()
                            w.writerows(rows)
    finally:
        balloon.kill_all()
    meta["load_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    md = table(rows, a, meta)
    with open(os.path.join(a.out, "smp.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
