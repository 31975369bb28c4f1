#!/usr/bin/env python3
"""N MiB of a guest's free memory back to the host: a limited page-state sweep vs the best balloon.

Issue 14. Every measurement gets a fresh VM with the same configuration: q35, 1 GiB, patched
QEMU, `virtio-balloon-pci,page-states=on,coalesce-discard=on` (the balloon with one discard per
run, QEMU patch 0001; with page states on its discards also go through the STABLE guard, patch
0008). memhog touches all of the guest's free memory and frees it (`alloc:2000M` with
`allow_oom=1` stops when memory runs out), so every free page is backed by QEMU's RSS and either
path has something real to give back; a fresh VM per measurement keeps one path from inheriting
memory the other already discarded (the balloon would pick those pages up again: docs/mm.md,
warm/cold policy). Then the host takes N MiB:

  sweep    QMP x-blimp-balloon-discard max-pages=N MiB worth (patches 0002/0008/0011/0012):
           QEMU claims unused pages in the guest's page-state array, oldest first, and
           discards them; no guest round trip. Done when the command returns.
  balloon  QMP balloon to 1 GiB - N: the guest takes N MiB of free pages and sends their PFNs;
           QEMU discards them run by run. Done when query-balloon reports the target.

Scenarios:
  running  the guest runs (idle in memhog's wait step).
  stopped  QMP stop first. The sweep works without the guest; the balloon gets nothing: we wait
           --stopped-wait seconds, then `cont` and time the balloon from there.
  starved  QEMU's threads pinned to CPU 0 at nice 19 beside a busy loop on CPU 0 at nice 0 (a
           low-priority VM on an overcommitted host).
  vcpu-idle  only the vCPU thread on CPU 0, at SCHED_IDLE, beside the busy loop: the guest gets
           almost no CPU, QEMU's main loop (QMP, the sweep) runs as usual.
           --no-starved skips both.

Per measurement: wall time to completion, wall time until QEMU's RSS fell by 90% of N, RSS
before/after (MiB returned), QEMU CPU time over the same window: utime+stime from
/proc/PID/stat (10 ms ticks) and the threads' run time from /proc/PID/task/*/schedstat (ns).
Writes reclaim_paths.csv and reclaim_paths.md beside this script (--quick: reclaim_paths_quick.*,
one tiny repetition; --out DIR to put them elsewhere) and prints the summary.

    reclaim_paths.py --build-dir build [--sizes 64,256] [--reps 5] [--stopped-wait 10]
                     [--stopped-reps 3] [--starved-reps 2] [--no-starved] [--quick] [--out DIR]
"""
import argparse
import csv
import os
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "lib"))
from blimp_vm import BlimpVM, patched_qemu_path  # noqa: E402
from qmp import Qmp  # noqa: E402

MiB = 1 << 20
PAGES_PER_MIB = MiB // 4096
# "Returned" for the wall-time-to-RSS figure: 90% of N, not all of it: the oldest-first sweep
# may take a few free pages nothing ever touched (their discard frees nothing; 1-3 MiB of 256
# here), and QEMU's own RSS drifts by a few MiB while we watch.
RETURNED_FRACTION = 0.9
POLL_S = 0.002
QUERY_S = 0.05
IDLE_S = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
FIELDS = ["scenario", "method", "size_mib", "rep", "wall_ms", "rss_wall_ms", "rss_before_mib",
          "rss_after_mib", "returned_mib", "cpu_ms", "cpu_sched_ms", "stopped_wait_s",
          "returned_while_stopped_mib", "actual_while_stopped_mib", "after_cont_ms",
          "pages_inflated_while_stopped", "sweep_device_us", "sweep_claimed_pages",
          "thp_mib", "idle_cpu_ms_per_s", "load1"]


class Qemu:
    """The QEMU process's RSS and CPU time (all threads)."""

    def __init__(self, pid):
        self.pid = pid

    def rss_mib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu(self):
        """(utime+stime in seconds, summed schedstat run time in seconds)."""
        with open(f"/proc/{self.pid}/stat") as f:
            # Fields after the command name (which may hold spaces): utime and stime are the
            # 14th and 15th of the whole line, so the 12th and 13th after ')'.
            rest = f.read().rsplit(")", 1)[1].split()
        ticks = int(rest[11]) + int(rest[12])
        run_ns = 0
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                    run_ns += int(f.read().split()[0])
            except FileNotFoundError:
                pass  # a thread that ended between listdir and open
        return ticks / CLK_TCK, run_ns / 1e9

    def thp_mib(self):
        """Guest RAM in transparent huge pages (QEMU asks for them, MADV_HUGEPAGE; how many it
        gets depends on the host's free memory): discarding 2 MiB pieces of a huge page costs
        the kernel less than 512 small pages, so it moves both paths' CPU figures."""
        with open(f"/proc/{self.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) // 1024
        return ""

    def threads(self):
        return [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]


def boot(build, qemu):
    vm = BlimpVM(build, app="memhog",
                 args=["steps=alloc:2000M,free:all,wait:600s", "chunk=1020K", "allow_oom=1",
                       "verify=word"],
                 machine="q35", memory="1G", qmp=True, qemu=qemu, limit=900,
                 # debug-threads=on names the vCPU thread "CPU 0/TCG" (the vcpu-idle scenario
                 # finds it by that name); it changes nothing else.
                 extra=["-name", "reclaim,debug-threads=on", "-device",
                        "virtio-balloon-pci,id=balloon0,page-states=on,coalesce-discard=on"])
    try:
        vm.wait_for(r"page-states: registered", 120)
        vm.wait_for(r"memhog: step 2 freed", 180)
    except BaseException:
        vm.kill()
        raise
    time.sleep(1.0)  # the guest's work after the free ends before anything is measured
    return vm


def poll_balloon(q, proc, target, rss0, want_mib, t0, until, query_s=None):
    """Polls until the balloon is at target and the RSS fell by want_mib, or until the monotonic
    time `until`. Returns (seconds from t0 to target or None, seconds from t0 to RSS or None).
    The RSS is read every POLL_S (that costs QEMU nothing); query-balloon costs QEMU's main loop
    about 0.4 ms a call here, so it is asked every QUERY_S until the RSS has come down (the
    discards come before the guest writes `actual`), then every POLL_S. query_s=0: never
    before the RSS has come down (a stopped guest cannot move `actual`; one query at the end
    says so)."""
    query_s = QUERY_S if query_s is None else query_s
    t_target = t_rss = None
    last_query = 0.0
    while time.monotonic() < until:
        now = time.monotonic()
        if t_rss is None and rss0 - proc.rss_mib() >= want_mib:
            t_rss = now - t0
        if t_target is None and (t_rss is not None or
                                 (query_s and now - last_query >= query_s)):
            last_query = now
            if q.execute("query-balloon")["actual"] == target:
                t_target = time.monotonic() - t0
        if t_target is not None and t_rss is not None:
            break
        time.sleep(POLL_S)
    return t_target, t_rss


def measure(build, qemu, scenario, method, size, rep, a):
    row = {k: "" for k in FIELDS}
    row.update(scenario=scenario, method=method, size_mib=size, rep=rep)
    want = size * RETURNED_FRACTION
    hog = None
    try:
        with boot(build, qemu) as vm:
            proc = Qemu(vm.pid)
            q = Qmp.connect(vm.qmp_path)
            ram = q.execute("query-balloon")["actual"]
            if scenario == "stopped":
                q.execute("stop")
            elif scenario in ("starved", "vcpu-idle"):
                hog = starve(proc, vcpu_only=scenario == "vcpu-idle")
            # What QEMU burns doing nothing in this scenario (the idle guest's timers), so that a
            # CPU figure can be read against it.
            base0, tb = proc.cpu(), time.monotonic()
            time.sleep(IDLE_S)
            base1 = proc.cpu()
            row["idle_cpu_ms_per_s"] = round((base1[1] - base0[1]) * 1e3
                                             / (time.monotonic() - tb), 2)
            row["thp_mib"] = proc.thp_mib()
            inflated0 = q.execute("x-blimp-balloon-info")["inflate-pfns"]
            rss0 = proc.rss_mib()
            cpu0 = proc.cpu()
            t0 = time.monotonic()
            if method == "sweep":
                res = q.execute("x-blimp-balloon-discard", {"max-pages": size * PAGES_PER_MIB},
                                timeout=300)
                wall = time.monotonic() - t0
                row.update(sweep_device_us=res["duration-us"], sweep_claimed_pages=res["claimed"],
                           wall_ms=round(wall * 1e3, 2))
                # madvise(DONTNEED) is synchronous: the RSS is down when the command returns; the
                # poll is for the figure's sake, not expected to wait.
                while rss0 - proc.rss_mib() < want and time.monotonic() - t0 < wall + 5:
                    time.sleep(POLL_S)
                if rss0 - proc.rss_mib() >= want:
                    row["rss_wall_ms"] = round(max(wall, time.monotonic() - t0 - POLL_S) * 1e3, 2)
            else:
                target = ram - size * MiB
                q.execute("balloon", value=target)
                if scenario == "stopped":
                    t_target, t_rss = poll_balloon(q, proc, target, rss0, want, t0,
                                                   t0 + a.stopped_wait, query_s=0)
                    # The device's own count: QEMU's RSS also moves a few MiB on its own.
                    inflated = q.execute("x-blimp-balloon-info")["inflate-pfns"] - inflated0
                    row.update(stopped_wait_s=a.stopped_wait,
                               pages_inflated_while_stopped=inflated,
                               returned_while_stopped_mib=round(rss0 - proc.rss_mib(), 1),
                               actual_while_stopped_mib=q.execute("query-balloon")["actual"] >> 20)
                    if t_target is None:
                        q.execute("cont")
                        tc = time.monotonic()
                        # Wall times count from the balloon command, the stop included.
                        t_target, t_rss = poll_balloon(q, proc, target, rss0, want, t0,
                                                       tc + a.timeout)
                        if t_target is not None:
                            row["after_cont_ms"] = round((t0 + t_target - tc) * 1e3, 2)
                else:
                    t_target, t_rss = poll_balloon(q, proc, target, rss0, want, t0,
                                                   t0 + a.timeout)
                row["wall_ms"] = round(t_target * 1e3, 2) if t_target is not None else ""
                row["rss_wall_ms"] = round(t_rss * 1e3, 2) if t_rss is not None else ""
            cpu1 = proc.cpu()
            rss1 = proc.rss_mib()
            if hog:
                stop_hog(hog)
                hog = None
            if scenario == "stopped" and method == "sweep":
                q.execute("cont")
            row.update(rss_before_mib=round(rss0, 1), rss_after_mib=round(rss1, 1),
                       returned_mib=round(rss0 - rss1, 1),
                       cpu_ms=round((cpu1[0] - cpu0[0]) * 1e3),
                       cpu_sched_ms=round((cpu1[1] - cpu0[1]) * 1e3, 2),
                       load1=open("/proc/loadavg").read().split()[0])
            q.close()
    finally:
        if hog:  # the measurement failed: the busy loop must not outlive it
            stop_hog(hog)
    print(f"  {scenario:8s} {method:7s} {size:4d} MiB rep {rep}: wall {row['wall_ms']} ms, "
          f"RSS -{row['returned_mib']} MiB in {row['rss_wall_ms']} ms, CPU {row['cpu_ms']} ms "
          f"(sched {row['cpu_sched_ms']} ms)"
          + (f", while stopped {row['returned_while_stopped_mib']} MiB in {a.stopped_wait} s, "
             f"after cont {row['after_cont_ms']} ms" if row["stopped_wait_s"] != "" else ""),
          flush=True)
    return row


def starve(proc, vcpu_only):
    """A busy loop on CPU 0 at nice 0 (this script's) and QEMU beside it, on CPU 0 too:
    vcpu_only=False: every QEMU thread at nice 19 (a low-priority VM on a busy host);
    vcpu_only=True: the vCPU thread alone, SCHED_IDLE (it runs only when CPU 0 has nothing else
    to do); the main loop, which runs QMP and the sweep, keeps its priority and CPUs.
    Returns the busy loop's Popen."""
    # Its own session, so that stop_hog() ends the loop and not only `timeout` (the timeout
    # is there in case this script dies first).
    hog = subprocess.Popen(["timeout", "600", sys.executable, "-c", "while True: pass"],
                           start_new_session=True)
    time.sleep(0.2)  # the loop's python has started, so the affinity below covers it too
    for pid in [hog.pid] + [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(hog.pid)], capture_output=True, text=True).stdout.split()]:
        os.sched_setaffinity(pid, {0})
    vcpus = 0
    for tid in proc.threads():
        with open(f"/proc/{proc.pid}/task/{tid}/comm") as f:
            vcpu = "/TCG" in f.read()  # QEMU names it "CPU 0/TCG"
        vcpus += vcpu
        if vcpu_only and not vcpu:
            continue
        os.sched_setaffinity(tid, {0})
        if vcpu_only:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
    if vcpus != 1:
        stop_hog(hog)
        raise RuntimeError(f"expected one 'CPU 0/TCG' thread in QEMU, found {vcpus}")
    time.sleep(0.5)  # the busy loop is running before the measurement starts
    return hog


def stop_hog(hog):
    try:
        os.killpg(hog.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    hog.wait()


def summary(rows, a):
    def med(xs):
        xs = [float(x) for x in xs if x != ""]
        return statistics.median(xs) if xs else None

    def rng(xs):
        xs = [float(x) for x in xs if x != ""]
        return f"{min(xs):g}-{max(xs):g}" if xs else "-"

    def fmt(x, digits=1):
        return "-" if x is None else f"{x:.{digits}f}"

    out = []
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    for sc in scenarios:
        sr = [r for r in rows if r["scenario"] == sc]
        reps = max(int(r["rep"]) for r in sr) + 1
        if sc == "stopped":
            out += [f"**stopped** (QMP `stop` before the request; the balloon waited "
                    f"{a.stopped_wait} s, then `cont`), {reps} rep(s), medians:", "",
                    "| N (MiB) | method | returned while stopped (MiB) | time to return it | "
                    "balloon after `cont`: to target | RSS returned in the end (MiB) | "
                    "QEMU CPU ms (stat / schedstat) |",
                    "|---|---|---|---|---|---|---|"]
            for size in a.sizes:
                for m in ("sweep", "balloon"):
                    x = [r for r in sr if r["method"] == m and r["size_mib"] == size]
                    if not x:
                        continue
                    if m == "sweep":
                        stopped = fmt(med(r["returned_mib"] for r in x))
                        when = fmt(med(r["wall_ms"] for r in x), 2) + " ms"
                        after = "-"
                    else:
                        stopped = fmt(med(r["returned_while_stopped_mib"] for r in x))
                        got = med(r["actual_while_stopped_mib"] for r in x)
                        pages = med(r["pages_inflated_while_stopped"] for r in x)
                        when = (f"nothing within {a.stopped_wait} s (actual stayed "
                                f"{fmt(got, 0)} MiB, {fmt(pages, 0)} pages inflated)")
                        after = fmt(med(r["after_cont_ms"] for r in x), 1) + " ms"
                    out.append(f"| {size} | {m} | {stopped} | {when} | {after} | "
                               f"{fmt(med(r['returned_mib'] for r in x))} | "
                               f"{fmt(med(r['cpu_ms'] for r in x), 0)} / "
                               f"{fmt(med(r['cpu_sched_ms'] for r in x), 1)} |")
            out.append("")
            continue
        title = {"running": "**running** (the guest idle in memhog's wait step)",
                 "starved": "**starved** (QEMU's threads on CPU 0 at nice 19, a busy loop on "
                            "CPU 0 at nice 0)",
                 "vcpu-idle": "**vcpu-idle** (QEMU's vCPU thread on CPU 0 at SCHED_IDLE, a busy "
                              "loop on CPU 0 at nice 0; the main loop untouched)"}[sc]
        out += [f"{title}, {reps} rep(s), median (range):", "",
                "| N (MiB) | method | wall to done (ms) | wall to 90% of N off the RSS (ms) | "
                "RSS returned (MiB) | QEMU CPU ms, stat | QEMU CPU ms, schedstat |",
                "|---|---|---|---|---|---|---|"]
        for size in a.sizes:
            for m in ("sweep", "balloon"):
                x = [r for r in sr if r["method"] == m and r["size_mib"] == size]
                if not x:
                    continue
                out.append(
                    f"| {size} | {m} | {fmt(med(r['wall_ms'] for r in x), 2)} "
                    f"({rng(r['wall_ms'] for r in x)}) | "
                    f"{fmt(med(r['rss_wall_ms'] for r in x), 2)} | "
                    f"{fmt(med(r['returned_mib'] for r in x))} "
                    f"({rng(r['returned_mib'] for r in x)}) | "
                    f"{fmt(med(r['cpu_ms'] for r in x), 0)} ({rng(r['cpu_ms'] for r in x)}) | "
                    f"{fmt(med(r['cpu_sched_ms'] for r in x), 1)} "
                    f"({rng(r['cpu_sched_ms'] for r in x)}) |")
        out.append("")
    thp = [r["thp_mib"] for r in rows if r["thp_mib"] != ""]
    if thp:
        out.append(f"Guest RAM in transparent huge pages at the start of a measurement: "
                   f"{min(thp)}-{max(thp)} MiB (median {statistics.median(thp):g}).")
    loads = [float(r["load1"]) for r in rows]
    out.append(f"Host: {os.cpu_count()} cores, 1-minute load average {min(loads):.2f}-"
               f"{max(loads):.2f} during the run; TCG; one VM at a time.")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--sizes", default="64,256", help="N, MiB, comma-separated")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--stopped-reps", type=int, default=3)
    ap.add_argument("--starved-reps", type=int, default=2)
    ap.add_argument("--stopped-wait", type=float, default=10.0,
                    help="seconds the balloon is given while the VM is stopped")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds a running balloon may take before the row says nothing")
    ap.add_argument("--no-starved", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: N=32, one repetition per scenario, 2 s stopped, no starved")
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.reps, a.stopped_reps, a.stopped_wait, a.no_starved = "32", 1, 1, 2.0, True
    a.sizes = [int(x) for x in a.sizes.split(",")]
    build = os.path.abspath(a.build_dir)
    qemu = patched_qemu_path(build)
    if not os.access(qemu, os.X_OK):
        sys.exit(f"the patched QEMU is not built ({qemu}; host/qemu/build.sh)")
    plan = []
    for rep in range(a.reps):
        for size in a.sizes:
            # Alternate which path goes first, so a drift in host load hits both alike.
            for m in (("sweep", "balloon") if rep % 2 == 0 else ("balloon", "sweep")):
                plan.append(("running", m, size, rep))
    for rep in range(a.stopped_reps):
        for size in a.sizes:
            for m in ("sweep", "balloon"):
                plan.append(("stopped", m, size, rep))
    if not a.no_starved:
        for sc in ("starved", "vcpu-idle"):
            for rep in range(a.starved_reps):
                for size in a.sizes:
                    for m in ("sweep", "balloon"):
                        plan.append((sc, m, size, rep))
    rows = [measure(build, qemu, *p, a) for p in plan]
    name = "reclaim_paths_quick" if a.quick else "reclaim_paths"
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, name + ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    md = summary(rows, a)
    with open(os.path.join(a.out, name + ".md"), "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
