#!/usr/bin/env python3
"""Page allocator throughput at 1, 2 and 4 vCPUs, Blimp against the Linux anchor (issue 17).

    python3 bench/mm/smp_scaling.py --build-dir build [--vcpus 1,2,4] [--reps 3] [--runs 3]
                                    [--seconds 2] [--out bench/mm/smp_scaling]

Both guests run on the distribution's QEMU (/usr/bin/qemu-system-x86_64), q35, 512 MiB,
`-accel tcg,thread=multi` (MTTCG: every vCPU on a host thread of its own) and `-smp N`, one VM at
a time, alternating: for each repetition, for each N, Blimp then Linux.

  Blimp  app=mmbench threads=N duration=S repeat=R selftest=0: N workers, one per vCPU, each
         allocating 64 blocks of 4 KiB from the shared buddy allocator (tagging each), then
         checking and freeing them, over and over for S seconds from a common start. One op =
         one alloc_pages(0) + free_pages call pair, nothing else (the tag is two stores).
  Linux  `mmscale N S` on the anchor's console (image/linux/mm_scale.c): N processes, each pinned
         to one vCPU, each writing a tag into 64 pages of its own anonymous mapping (64 write
         page faults: allocation from the per-CPU lists, zeroing, memcg charge, PTE), reading them
         back, then madvise(MADV_DONTNEED) (unmap, TLB flush, batched free). One op = one page
         faulted in and freed.

The two ops are not the same work (Linux's includes a page fault, zeroing 4 KiB and a TLB
flush), so the absolute numbers only say how far apart the two are; the comparison that holds is
the scaling: throughput at N over N times throughput at 1 (1.0 = ideal). Every tag must read
back and every run must pass: a bad tag fails the benchmark (exit 1).

Writes OUT.csv (one row per run) and OUT.md (the table, medians of all runs of a cell with their
min-max, the host's CPU count and its load average during the cell's runs). The host has fewer
cores than the 4-vCPU guests have vCPUs: their vCPU threads share the cores (said beside the
figures). Every QEMU runs under `timeout`. Standard library only.
"""
import argparse
import csv
import datetime
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from blimp_vm import STOCK_QEMU, BlimpVM  # noqa: E402
from linux_guest import GuestError, LinuxGuest, guest_files  # noqa: E402

ACCEL = "tcg,thread=multi"
MEM_MB = 512
BLIMP_TOTAL_RE = re.compile(
    r"^mm bench threads=(\d+) 4 KiB: total (\d+) ops in (\d+)\.(\d) ms, (\d+) ops/s, "
    r"(\d+\.\d) ns/op, (\d+) bad tags, (\d+) failed$", re.M)
BLIMP_CPU_RE = re.compile(r"^mm bench threads=\d+ 4 KiB: cpu (\d+): (\d+) ops in \d+\.\d ms, "
                          r"(\d+) ops/s", re.M)
LINUX_LINE_RE = re.compile(r"BLIMP-LINUX: mmscale (cpu=(\d+)|total procs=(\d+)) ops=(\d+) "
                           r"ns=(\d+) ops_per_s=(\d+) ns_per_op=([\d.]+) bad=(\d+)")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loadavg():
    return os.getloadavg()[0]


def run_blimp(build, n, a, pcp=True):
    """Per run: dict(ops, ns, ops_per_s, per_cpu, bad, load). pcp=False boots with mm.pcp=off
    (the allocator without its per-CPU caches: every alloc and free takes the one lock)."""
    args = [f"threads={n}", f"duration={a.seconds}s", f"repeat={a.runs}", "selftest=0"]
    if not pcp:
        args.append("mm.pcp=off")
    limit = 120 + a.runs * (a.seconds + 30)
    load0 = loadavg()
    with BlimpVM(build, app="mmbench", args=args, machine="q35", memory=f"{MEM_MB}M",
                 accel=ACCEL, qemu=STOCK_QEMU, limit=limit, extra=["-smp", str(n)]) as vm:
        status = vm.wait_exit(timeout=limit - 10)
        out = vm.output
    load = (load0 + loadavg()) / 2
    want = "mm: per-CPU page caches " + ("on" if pcp else "off")
    if want not in out:
        raise RuntimeError(f"blimp: no '{want}' line:\n{out[-3000:]}")
    if status != 0 or "mmbench: PASS" not in out:
        raise RuntimeError(f"blimp mmbench threads={n} exited {status}:\n{out[-3000:]}")
    per_cpu = BLIMP_CPU_RE.findall(out)
    runs = []
    for i, m in enumerate(BLIMP_TOTAL_RE.findall(out)):
        threads, ops, ms, tenth, per_s, ns_op, bad, failed = m
        cpus = per_cpu[i * n:(i + 1) * n]
        runs.append({"ops": int(ops), "ns": int(ms) * 1000000 + int(tenth) * 100000,
                     "ops_per_s": int(per_s), "ns_per_op": float(ns_op),
                     "per_cpu": ";".join(f"{c}:{s}" for c, _, s in cpus),
                     "bad": int(bad) + int(failed), "load": load})
    if len(runs) != a.runs:
        raise RuntimeError(f"blimp threads={n}: {len(runs)} runs parsed, not {a.runs}\n{out}")
    return runs


def run_linux(build, n, a):
    g = LinuxGuest(STOCK_QEMU, build, mem_mb=MEM_MB, machine="q35", smp=n, accel=ACCEL,
                   name=f"mmscale{n}", timeout_s=300 + a.runs * (a.seconds + 60))
    runs = []
    try:
        g.start(ready_timeout=240)
        for _ in range(a.runs):
            load0 = loadavg()
            start = len(g.lines)
            m = g.command(f"mmscale {n} {a.seconds}", r"BLIMP-LINUX: done mmscale rc=(\d+)",
                          timeout=a.seconds + 120)
            if m.group(1) != "0":
                raise RuntimeError(f"linux mmscale {n}: rc={m.group(1)}\n"
                                   + "\n".join(g.lines[start:]))
            per_cpu, total = [], None
            for ln in g.lines[start:]:
                lm = LINUX_LINE_RE.search(ln)
                if not lm:
                    continue
                if lm.group(2) is not None:
                    per_cpu.append(f"{lm.group(2)}:{lm.group(6)}")
                else:
                    total = lm
            if total is None:
                raise RuntimeError(f"linux mmscale {n}: no total line\n"
                                   + "\n".join(g.lines[start:]))
            runs.append({"ops": int(total.group(4)), "ns": int(total.group(5)),
                         "ops_per_s": int(total.group(6)), "ns_per_op": float(total.group(7)),
                         "per_cpu": ";".join(per_cpu), "bad": int(total.group(8)),
                         "load": (load0 + loadavg()) / 2})
    finally:
        g.stop()
    return runs


GUESTS = ("blimp", "blimp-nopcp", "linux")  # the table's column order


def fmt_rate(v):
    return f"{v / 1e6:.3f} M" if v >= 1e6 else f"{v / 1e3:.0f} k"


def write_outputs(a, rows, started, host_cpus):
    with open(a.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["guest", "vcpus", "host_cpus", "rep", "run", "ops", "ns",
                                          "ops_per_s", "ns_per_op", "per_cpu_ops_per_s",
                                          "bad", "loadavg_1min"])
        w.writeheader()
        for r in rows:
            w.writerow(r)

    def cell(guest, n):
        return [r for r in rows if r["guest"] == guest and r["vcpus"] == n]

    med = {}
    for guest in GUESTS:
        for n in a.vcpus:
            c = cell(guest, n)
            if c:
                med[guest, n] = statistics.median(r["ops_per_s"] for r in c)
    lines = [
        f"Page allocator throughput at 1, 2 and 4 vCPUs (`bench/mm/smp_scaling.py`, "
        f"{started:%Y-%m-%d %H:%M} UTC): QEMU 7.2 (Debian's), q35, {MEM_MB} MiB, "
        f"`-accel {ACCEL}`, on a host with **{host_cpus} CPUs** shared with other work. "
        f"Medians of {a.reps} boots x {a.runs} runs of {a.seconds} s per cell (min-max in "
        "brackets). Blimp: ops = 4 KiB `alloc_pages` + `free_pages` pairs (`mmbench threads=N`), "
        "with the per-CPU page caches (the default) and without them (`mm.pcp=off`); "
        "Linux 6.1: ops = 4 KiB anonymous pages faulted in (allocated, zeroed, mapped) and freed "
        "with `MADV_DONTNEED` (`mmscale N`, one process per vCPU). Scaling = ops/s at N over "
        "N x ops/s at 1 (1.00 = ideal).",
        "",
        "| vCPUs | host CPUs | Blimp ops/s | Blimp scaling vs ideal | Blimp, mm.pcp=off, ops/s "
        "| its scaling | Linux ops/s | Linux scaling vs ideal | host load average (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in a.vcpus:
        parts = [str(n) + (" (oversubscribed)" if n > host_cpus else ""), str(host_cpus)]
        loads = []
        for guest in GUESTS:
            c = cell(guest, n)
            if not c:
                parts += ["-", "-"]
                continue
            rates = [r["ops_per_s"] for r in c]
            loads += [r["loadavg_1min"] for r in c]
            parts.append(f"{fmt_rate(med[guest, n])} ({fmt_rate(min(rates))}-"
                         f"{fmt_rate(max(rates))})")
            one = med.get((guest, a.vcpus[0]))
            base_n = a.vcpus[0]
            parts.append(f"{med[guest, n] / (one * n / base_n):.2f}" if one else "-")
        parts.append(f"{statistics.mean(loads):.1f}" if loads else "-")
        lines.append("| " + " | ".join(parts) + " |")
    bad = sum(r["bad"] for r in rows)
    lines += ["", f"Tags checked on every block and page: {bad} bad, {len(rows)} runs."]
    if max(a.vcpus) > host_cpus:
        lines[-1] += (f" At {max(a.vcpus)} vCPUs the guest has more vCPUs than the host has "
                      f"cores ({host_cpus}): its vCPU threads take turns, so that row measures "
                      "sharing the cores as much as the allocator.")
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build-dir", default="build")
    p.add_argument("--vcpus", default="1,2,4")
    p.add_argument("--reps", type=int, default=3, help="boots per guest and vCPU count")
    p.add_argument("--runs", type=int, default=3, help="runs per boot")
    p.add_argument("--seconds", type=int, default=2, help="length of one run")
    p.add_argument("--guests", default="blimp,blimp-nopcp,linux",
                   help="blimp (per-CPU page caches on, the default), blimp-nopcp (mm.pcp=off), "
                        "linux")
    p.add_argument("--out", default=os.path.join(HERE, "smp_scaling"),
                   help="output path without extension (.csv and .md are written)")
    a = p.parse_args()
    a.vcpus = [int(x) for x in a.vcpus.split(",")]
    build = os.path.abspath(a.build_dir)
    if not os.path.exists(os.path.join(build, "blimp.elf")):
        sys.exit(f"{build}/blimp.elf missing: build first (make build)")
    if not guest_files(build):
        sys.exit(f"{build}/linux-guest missing: image/linux/build.sh {build}")
    if subprocess.run(["gzip", "-dc", guest_files(build)[1]], capture_output=True).stdout.find(
            b"bin/mm-scale") < 0:
        sys.exit("the Linux guest's initramfs has no /bin/mm-scale: rebuild it "
                 f"(image/linux/build.sh {build})")
    variants = {"blimp": run_blimp,
                "blimp-nopcp": lambda b, n, x: run_blimp(b, n, x, pcp=False),
                "linux": run_linux}
    guests = [(g, variants[g]) for g in a.guests.split(",")]
    host_cpus = os.cpu_count()
    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    failed = False
    for rep in range(a.reps):
        for n in a.vcpus:
            for guest, fn in guests:
                log(f"rep {rep + 1}/{a.reps}: {guest} at -smp {n}")
                try:
                    runs = fn(build, n, a)
                except (RuntimeError, GuestError) as e:
                    log(f"{guest} -smp {n} FAILED: {e}")
                    failed = True
                    continue
                for i, r in enumerate(runs):
                    rows.append({"guest": guest, "vcpus": n, "host_cpus": host_cpus,
                                 "rep": rep + 1, "run": i + 1, "ops": r["ops"], "ns": r["ns"],
                                 "ops_per_s": r["ops_per_s"], "ns_per_op": r["ns_per_op"],
                                 "per_cpu_ops_per_s": r["per_cpu"], "bad": r["bad"],
                                 "loadavg_1min": round(r["load"], 2)})
                    log(f"  {guest} -smp {n} run {i + 1}: {r['ops_per_s']} ops/s "
                        f"({r['per_cpu']}), bad {r['bad']}, load {r['load']:.2f}")
    write_outputs(a, rows, started, host_cpus)
    failed = failed or any(r["bad"] for r in rows)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
