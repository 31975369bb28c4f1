#!/usr/bin/env python3
"""The adverse-host soak: one Blimp guest running app=soak (fixed, churned, volatile and sealed
memory, every page verified against content only it can have) on the patched QEMU, while this
script drives cycles of everything the host does to guest memory:

  inflate / deflate   QMP `balloon` to a random target (the app's churn then also meets
                      deflate-on-OOM when the balloon leaves too little)
  oom                 a target far below what the app needs: inflation stops at the floor, the
                      app's allocations deflate on OOM
  sweep               x-blimp-balloon-discard (page states: unused and volatile pages)
  reset               the host resets the device (qtest writes 0 to its status register)
  slow                one queue held past the guest's balloon.reset_ms (x-blimp-balloon-fault):
                      the guest resets the device and recovers
  late                one queue held past balloon.timeout_ms but not reset_ms: the guest waits
  corrupt             a used-ring entry with a bogus id: the queue breaks, the guest resets
Free page reporting and sealing run all the time in the guest (the app frees and seals).

    tests/soak/soak.py --build-dir build --cycles 1000     # the full soak (~20-30 min on TCG)

At the end the balloon is deflated, the app must report zero mismatches over the whole run, and
the guest must never have given up on the device. A summary line and (with --results FILE) a JSON
record. Resets are paced (at most 3 reset-making cycles a minute): the guest gives up on a device
that needs more than 5 in a minute, by design. Exit status 0 on success, 1 on failure, 77 when the
patched QEMU is not built.
"""
import argparse
import json
import os
import random
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from balloon_window import window_for  # noqa: E402
from blimp_vm import BlimpVM, check, VMError, find_patched_qemu  # noqa: E402
from qmp import Qmp, QmpError  # noqa: E402
from qtest import QTest  # noqa: E402

MiB = 1 << 20
REPORT = (r"soak: t=(\d+) rounds=(\d+) verified_pages=(\d+) mismatches=(\d+) "
          r"alloc_failures=(\d+) volatile_lost=(\d+) seals=(\d+)")
GUEST_ARGS = ["fixed=64M", "churn=256M", "volatile=16M", "sealed=8M", "report=2s",
              "balloon.timeout_ms=300", "balloon.reset_ms=1000", "balloon.report_delay_ms=20"]
QUEUES = ["inflate", "deflate", "reporting", "stats"]
RESET_ACTIONS = ("reset", "slow", "corrupt")
WEIGHTS = {"inflate": 6, "deflate": 5, "oom": 2, "sweep": 4, "reset": 1, "slow": 1, "late": 2,
           "corrupt": 1}


class Soak:
    def __init__(self, build, machine, memory_mib, seed, log):
        self.build, self.machine, self.ram = build, machine, memory_mib * MiB
        self.rng = random.Random(seed)
        self.log = log
        self.counts = {a: 0 for a in WEIGHTS}
        self.history = []  # one line per cycle, printed when the soak fails
        self.t0 = time.monotonic()
        self.reset_times = []
        extra = ["-device", "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,"
                 "free-page-reporting=on,page-states=on,share-hints=on,coalesce-discard=on"]
        if machine == "microvm":
            extra = ["-global", "virtio-mmio.force-legacy=false",
                     "-device", extra[1].replace("virtio-balloon-pci", "virtio-balloon-device")]
        self.vm = BlimpVM(build, app="soak", args=GUEST_ARGS, machine=machine,
                          memory=f"{memory_mib}M", qmp=True, qtest=True, extra=extra,
                          limit=4 * 3600, qemu=find_patched_qemu(build), name=f"soak-{machine}",
                          expect_host_faults=True)

    def __enter__(self):
        self.vm.__enter__()
        self.vm.wait_for(r"soak: ready", 300)
        reg = re.search(r"page-states: registered \d+ pages", self.vm.output)
        check(reg, f"page states were not registered at boot\n{self.vm.output}")
        self.q = Qmp.connect(self.vm.qmp_path)
        self.qt = QTest.connect(self.vm.qtest_path)
        self.dev = window_for(self.vm, self.qt, self.machine)
        self.q.execute("qom-set", path="/machine/peripheral/balloon0",
                       property="guest-stats-polling-interval", value=2)
        try:
            self.q.execute("x-blimp-balloon-fault", queue="all", **{"delay-ms": 0})
            self.faults = True
        except QmpError:
            self.faults = False
            self.log("  (this QEMU has no x-blimp-balloon-fault: slow/late/corrupt cycles skipped)")
        return self

    def __exit__(self, *exc):
        for c in (self.qt, self.q):
            try:
                c.close()
            except OSError:
                pass
        self.vm.__exit__(*exc)

    def actual(self):
        return self.q.execute("query-balloon")["actual"]

    def settle(self, timeout=15.0):
        """Waits until `actual` stops changing for 0.5 s (a target may be out of reach)."""
        deadline = time.monotonic() + timeout
        last, since = self.actual(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            a = self.actual()
            if a != last:
                last, since = a, time.monotonic()
            elif time.monotonic() - since >= 0.5:
                return a
        return last

    def target(self, low_mib, high_mib):
        """A balloon of a random size in [low, high] MiB."""
        self.set_balloon(self.rng.randint(low_mib, high_mib) * MiB)

    def set_balloon(self, size):
        self.q.execute("balloon", value=max(self.ram - size, 64 * MiB))

    def balloon_size(self):
        return self.ram - self.actual()

    def inflate_from_here(self):
        """A target above the balloon's current size (after a deflate first if it is large)."""
        if self.balloon_size() > 500 * MiB:
            self.set_balloon(64 * MiB)
            self.settle()
        self.set_balloon(self.balloon_size() + self.rng.randint(64, 200) * MiB)

    def deflate_from_here(self):
        """A target below the balloon's current size (after an inflate first if it is small)."""
        if self.balloon_size() < 64 * MiB:
            self.set_balloon(300 * MiB)
            self.settle()
        self.set_balloon(0)

    def resets_recent(self):
        now = time.monotonic()
        self.reset_times = [t for t in self.reset_times if now - t < 60]
        return len(self.reset_times)

    def pick(self):
        actions = [a for a in WEIGHTS
                   if (self.faults or a not in ("slow", "late", "corrupt"))
                   and (a not in RESET_ACTIONS or self.resets_recent() < 3)]
        return self.rng.choices(actions, [WEIGHTS[a] for a in actions])[0]

    def cycle(self):
        action = self.pick()
        self.counts[action] += 1
        mark = len(self.vm.output)
        self.history.append(f"{time.monotonic() - self.t0:7.1f}s {action} "
                            f"(actual {self.actual() >> 20} MiB)")
        if action == "inflate":
            self.target(100, 500)
            self.settle()
        elif action == "deflate":
            self.q.execute("balloon", value=self.ram - self.rng.randint(0, 100) * MiB)
            self.settle()
        elif action == "oom":
            self.q.execute("balloon", value=64 * MiB)
            self.settle()
            time.sleep(1.0)  # the app's churn allocates against the balloon: deflate on OOM
        elif action == "sweep":
            self.q.execute("x-blimp-balloon-discard", timeout=120,
                           **({"max-pages": self.rng.randint(1, 65536)}
                              if self.rng.random() < 0.5 else {}))
        elif action == "reset":
            self.reset_times.append(time.monotonic())
            check(self.dev.reset() == 0, "status does not read 0 after the reset")
            self.vm.wait_for(r"reinitialised after reset", 60, start=mark)
            self.settle()
        elif action == "slow":
            self.reset_times.append(time.monotonic())
            queue = self.rng.choice(["inflate", "deflate"])
            self.inflate_from_here() if queue == "inflate" else self.deflate_from_here()
            self.settle()
            mark = len(self.vm.output)
            self.q.execute("x-blimp-balloon-fault", queue=queue, **{"delay-ms": 2500})
            self.inflate_from_here() if queue == "inflate" else self.deflate_from_here()
            try:
                self.vm.wait_for(r"queue \d+ has held a buffer|host fault", 30, start=mark)
            finally:
                self.q.execute("x-blimp-balloon-fault", queue=queue, **{"delay-ms": 0})
            self.settle()
        elif action == "late":
            queue = self.rng.choice(QUEUES)
            self.q.execute("x-blimp-balloon-fault", queue=queue, **{"delay-ms": 500})
            self.deflate_from_here() if queue == "deflate" else self.inflate_from_here()
            self.settle()
            self.q.execute("x-blimp-balloon-fault", queue=queue, **{"delay-ms": 0})
        elif action == "corrupt":
            self.reset_times.append(time.monotonic())
            if self.balloon_size() > 500 * MiB:
                self.set_balloon(64 * MiB)
                self.settle()
            mark = len(self.vm.output)
            self.q.execute("x-blimp-balloon-fault", queue="inflate", **{"corrupt-next": True})
            self.inflate_from_here()
            self.vm.wait_for(r"resetting the device", 30, start=mark)
            self.settle()
        out = self.vm.output[mark:]
        check("MISMATCH" not in out, f"cycle {action}: the app found a mismatch\n{out}")
        check("giving up" not in out and "did not complete its reset" not in out,
              f"cycle {action}: the guest gave up on the device\n{out}")
        return action

    def finish(self):
        self.q.execute("x-blimp-balloon-fault", queue="all", **{"delay-ms": 0}) if self.faults \
            else None
        self.q.execute("balloon", value=self.ram)
        self.settle(60)
        mark = len(self.vm.output)
        # Two whole report lines after everything settled: the app verified on.
        m = self.vm.wait_for(REPORT, 60, start=mark)
        m = self.vm.wait_for(REPORT, 60, start=m.end())
        return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--machine", default="q35", choices=["q35", "microvm"])
    ap.add_argument("--memory-mib", type=int, default=1024)
    ap.add_argument("--results", help="write a JSON record of the run here")
    opts = ap.parse_args()
    build = os.path.abspath(opts.build_dir)
    if not find_patched_qemu(build):
        print(f"SKIP: patched QEMU not built ({build}/qemu; host/qemu/build.sh {build})")
        sys.exit(77)

    def log(s):
        print(s, flush=True)

    t0 = time.monotonic()
    try:
        with Soak(build, opts.machine, opts.memory_mib, opts.seed, log) as s:
            for i in range(1, opts.cycles + 1):
                s.cycle()
                if i % 50 == 0 or i == opts.cycles:
                    log(f"  cycle {i}/{opts.cycles} ({time.monotonic() - t0:.0f} s): "
                        + " ".join(f"{a}={n}" for a, n in s.counts.items() if n))
            m = s.finish()
            out = s.vm.output
    except (AssertionError, VMError, QmpError, OSError) as e:
        log(f"FAIL after {time.monotonic() - t0:.0f} s: {e}")
        log("last cycles:\n  " + "\n  ".join(s.history[-15:]) if "s" in dir() else "")
        sys.exit(1)
    duration = time.monotonic() - t0
    mismatches = int(m.group(4))
    record = {
        "cycles": opts.cycles, "seed": opts.seed, "machine": opts.machine,
        "memory_mib": opts.memory_mib, "duration_s": round(duration, 1),
        "actions": s.counts, "mismatches": mismatches,
        "app_rounds": int(m.group(2)), "verified_pages": int(m.group(3)),
        "alloc_failures": int(m.group(5)), "volatile_lost_pages": int(m.group(6)),
        "seals": int(m.group(7)),
        "driver_resets": len(re.findall(r"resetting the device", out)),
        "recoveries": len(re.findall(r"reinitialised after reset", out)),
        "late_completions": len(re.findall(r"returned its buffer after", out)),
        "oom_deflates": len(re.findall(r"deflated \d+ MiB on out-of-memory", out)),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    log("soak: " + json.dumps(record))
    if opts.results:
        with open(opts.results, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    ok = mismatches == 0 and "MISMATCH" not in out
    log(f"{'PASS' if ok else 'FAIL'}: {opts.cycles} cycles in {duration:.0f} s, "
        f"{record['verified_pages']} pages verified, {mismatches} mismatches")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
