#!/usr/bin/env python3
"""A slow or misbehaving host: the patched QEMU's test-only fault injection
(`x-blimp-balloon-fault`, docs/spec-virtio-balloon-blimp.md) holds the buffers of one queue past
the guest's timeouts, corrupts a used-ring entry, or stalls its main loop, while `integrity`
keeps verifying its memory (or `memhog` allocates, checks and frees). Under TCG QEMU otherwise
completes every balloon buffer inside the guest's notify, so these are the only tests that reach
the driver's timeout, broken-queue and reset paths in a real VM.

The guest runs with short timeouts (balloon.timeout_ms=300, balloon.reset_ms=1000 or 1500), so a
delay of 800 ms is a late completion the guest waits for, and one of 4000 ms outlives the wait and
ends in a device reset that the device (QEMU cancels the delayed work on reset) never completes
afterwards. Each case checks the ownership rule from the outside: the target is reached, the
memory comes back, and not one word of the app's data changed.

On microvm (virtio-mmio, modern, so the extensions exist) and q35 (virtio-pci modern).
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from balloon_window import window_for  # noqa: E402
from blimp_vm import BlimpVM, TestRunner, check, require_patched_qemu, wait_balloon  # noqa: E402
from qmp import Qmp  # noqa: E402
from qtest import QTest  # noqa: E402

t = TestRunner()
MiB = 1 << 20
RESETTING = r"balloon: host fault: (.*); resetting the device"
WAITING = r"balloon: host fault: queue (\d+) has held a buffer for (\d+) ms; still waiting"
LATE = r"balloon: queue (\d+) returned its buffer after (\d+) ms"
RETOLD = r"balloon: re-inflated the (\d+) MiB held across the reset"
INTEGRITY = r"integrity: round \d+ verified \d+ pages, \d+ mismatches \(total (\d+)\)"
FAST_TIMEOUTS = ["balloon.timeout_ms=300", "balloon.reset_ms=1000"]

MACHINES = {
    "microvm": ("microvm", ["-global", "virtio-mmio.force-legacy=false"], "virtio-balloon-device"),
    "q35": ("q35", [], "virtio-balloon-pci"),
}


def vm_for(build, kind, app, args, props="", memory="1G", name=None):
    machine, extra, device = MACHINES[kind]
    dev = f"{device},id=balloon0,deflate-on-oom=on,free-page-reporting=on{props}"
    return BlimpVM(build, app=app, args=[*args, *FAST_TIMEOUTS], machine=machine, memory=memory,
                   qmp=True, extra=[*extra, "-device", dev], limit=600,
                   qemu=require_patched_qemu(build), name=name or f"{app}-{kind}",
                   expect_host_faults=True)


def fault(q, queue, **kw):
    args = {"queue": queue}
    for k, v in kw.items():
        args[k.replace("_", "-")] = v
    return q.execute("x-blimp-balloon-fault", **args)


def integrity_clean(vm, since, rounds=2, timeout=180):
    """Waits for `rounds` whole integrity lines after `since`; all must say total 0."""
    start = since
    for _ in range(rounds):
        m = vm.wait_for(INTEGRITY, timeout, start=start)
        check(m.group(1) == "0", f"integrity found mismatches: {m.group(0)}\n{vm.output}")
        start = m.end()
    check("MISMATCH" not in vm.output, vm.output)


def wait_fresh_stats(q, when, predicate=lambda st: True, timeout=60):
    """Waits for guest stats the guest sent more than 1 s from now (so after whatever just
    happened) that satisfy `predicate`."""
    t0 = time.time()
    deadline = time.monotonic() + timeout
    while True:
        st = q.execute("qom-get", path="/machine/peripheral/balloon0", property="guest-stats")
        if st["last-update"] > t0 + 1 and predicate(st):
            return st
        check(time.monotonic() < deadline, f"no stats {when}: {st}")
        time.sleep(0.2)


def no_give_up(vm):
    check("giving up" not in vm.output and "did not complete its reset" not in vm.output,
          vm.output)


def start_integrity(build, kind, props="", size="192M"):
    vm = vm_for(build, kind, "integrity", [f"size={size}", "pause=200ms"], props)
    vm.wait_for(r"integrity: round 1 ", 240)
    q = Qmp.connect(vm.qmp_path)
    return vm, q


def slow_inflate(build, kind):
    """Inflate with its queue 800 ms late (a completion after the first warning: the guest waits
    for it), then 4000 ms late (past balloon.reset_ms: the guest resets the device, recovers and
    tells the new device about every page it holds)."""
    vm, q = start_integrity(build, kind)
    with vm, q:
        ram = q.execute("query-balloon")["actual"]
        fault(q, "inflate", delay_ms=800)
        mark = len(vm.output)
        q.execute("balloon", value=ram - 64 * MiB)
        vm.wait_for(WAITING, 60, start=mark)
        m = vm.wait_for(LATE, 60, start=mark)
        check(m.group(1) == "0", m.group(0))
        wait_balloon(q, lambda a: a == ram - 64 * MiB, 120, vm)
        check(not re.search(RESETTING, vm.output[mark:]),
              f"a late completion within balloon.reset_ms reset the device\n{vm.output[mark:]}")

        fault(q, "inflate", delay_ms=4000)
        mark = len(vm.output)
        q.execute("balloon", value=ram - 256 * MiB)
        m = vm.wait_for(RESETTING, 60, start=mark)
        check("queue 0 held a buffer" in m.group(1), m.group(0))
        fault(q, "inflate", delay_ms=0)
        vm.wait_for(RETOLD, 60, start=mark)
        wait_balloon(q, lambda a: a == ram - 256 * MiB, 120, vm)
        info = q.execute("x-blimp-balloon-info")
        print(f"  {kind}: late inflate waited for; inflate past reset_ms reset the device and was "
              f"re-told; fault counters {dict((k, v) for k, v in info.items() if 'fault' in k)}",
              flush=True)
        q.execute("balloon", value=ram)
        wait_balloon(q, lambda a: a == ram, 120, vm)
        integrity_clean(vm, len(vm.output))
        no_give_up(vm)


def slow_deflate(build, kind):
    """Deflate past balloon.reset_ms: the pages of the unacknowledged buffer stay ballooned (or,
    without MUST_TELL_HOST, were given back and are the app's), the device is reset, recovered,
    and the next deflate gets them all back."""
    vm, q = start_integrity(build, kind)
    with vm, q:
        ram = q.execute("query-balloon")["actual"]
        q.execute("balloon", value=ram - 384 * MiB)
        wait_balloon(q, lambda a: a == ram - 384 * MiB, 120, vm)
        fault(q, "deflate", delay_ms=4000)
        mark = len(vm.output)
        q.execute("balloon", value=ram - 128 * MiB)
        m = vm.wait_for(RESETTING, 60, start=mark)
        check("queue 1 held a buffer" in m.group(1), m.group(0))
        fault(q, "deflate", delay_ms=0)
        vm.wait_for(RETOLD, 60, start=mark)
        wait_balloon(q, lambda a: a == ram - 128 * MiB, 120, vm)
        q.execute("balloon", value=ram)
        wait_balloon(q, lambda a: a == ram, 120, vm)
        integrity_clean(vm, len(vm.output))
        no_give_up(vm)
        print(f"  {kind}: deflate past reset_ms: device reset, held pages re-told, all memory "
              f"back, integrity clean", flush=True)


def broken_queue(build, kind):
    """A used-ring entry with an id out of range: the virtqueue refuses it and stops, the balloon
    resets the device and recovers instead of staying dead."""
    vm, q = start_integrity(build, kind)
    with vm, q:
        ram = q.execute("query-balloon")["actual"]
        fault(q, "inflate", corrupt_next=True)
        mark = len(vm.output)
        q.execute("balloon", value=ram - 128 * MiB)
        vm.wait_for(r"queue disabled until device reset", 60, start=mark)
        m = vm.wait_for(RESETTING, 60, start=mark)
        check("a queue broke" in m.group(1), m.group(0))
        wait_balloon(q, lambda a: a == ram - 128 * MiB, 120, vm)
        # Stats still flow after the recovery.
        q.execute("qom-set", path="/machine/peripheral/balloon0",
                  property="guest-stats-polling-interval", value=1)
        wait_fresh_stats(q, "after the recovery")
        q.execute("balloon", value=ram)
        wait_balloon(q, lambda a: a == ram, 120, vm)
        integrity_clean(vm, len(vm.output))
        no_give_up(vm)
        print(f"  {kind}: a corrupt used entry on the inflate queue: reset, recovered, stats and "
              f"targets work again", flush=True)


def slow_reporting(build, kind):
    """Free page reporting past balloon.reset_ms while memhog frees and re-allocates: the isolated
    blocks return to the allocator only after the reset, and memhog's checks of every page it
    allocated find nothing wrong."""
    steps = "alloc:300M,free:all,wait:3s,alloc:300M,free:all,wait:3s,alloc:300M,free:all"
    vm = vm_for(build, kind, "memhog", [f"steps={steps}", "balloon.report_delay_ms=10"])
    with vm:
        q = Qmp.connect(vm.qmp_path)
        with q:
            fault(q, "reporting", delay_ms=4000)
            m = vm.wait_for(RESETTING, 120)
            check(re.search(r"queue \d+ held a buffer", m.group(1)), m.group(0))
            fault(q, "reporting", delay_ms=0)
            status = vm.wait_exit(240)
            check(status == 0, f"memhog exited {status}\n{vm.output}")
            m = vm.wait_for(r"memhog: verified (\d+) pages, (\d+) corrupted", 10)
            check(m.group(2) == "0" and int(m.group(1)) > 0, f"{m.group(0)}\n{vm.output}")
            no_give_up(vm)
    print(f"  {kind}: reporting past reset_ms: reset; memhog verified {m.group(1)} pages, "
          f"0 corrupted", flush=True)


def slow_registration(build, kind):
    """PSTATE_REGISTER past balloon.reset_ms at boot: the array must not be freed (the host
    would sweep through reused memory); it is registered after the recovery, and a sweep then
    discards through it without harming integrity."""
    machine, extra, device = MACHINES[kind]
    dev = (f"{device},id=balloon0,deflate-on-oom=on,page-states=on,"
           f"x-fault-delay-ms=4000,x-fault-queues=blimp")
    vm = BlimpVM(build, app="integrity", args=["size=192M", "pause=200ms", *FAST_TIMEOUTS],
                 machine=machine, memory="1G", qmp=True, extra=[*extra, "-device", dev],
                 limit=600, qemu=require_patched_qemu(build), name=f"pstate-{kind}",
                 expect_host_faults=True)
    with vm:
        q = Qmp.connect(vm.qmp_path)
        with q:
            vm.wait_for(r"page-states: PSTATE_REGISTER got no answer", 120)
            fault(q, "blimp", delay_ms=0)
            vm.wait_for(r"page-states: re-registered \d+ pages after the device reset", 60)
            info = q.execute("x-blimp-balloon-info")
            check(info["pstate-registered"], f"{info}")
            vm.wait_for(r"integrity: round 2 ", 240)
            res = q.execute("x-blimp-balloon-discard", timeout=120)
            check(res["discarded-unused"] > 0, f"{res}")
            integrity_clean(vm, len(vm.output))
            no_give_up(vm)
            print(f"  {kind}: registration answered after the reset; a sweep discarded "
                  f"{res['discarded-unused'] * 4096 >> 20} MiB, integrity clean", flush=True)


def stalled_main_loop(build, kind):
    """QEMU's main loop stalls for 3 s in the middle of an inflation (a host under memory
    pressure): the guest may see its wait exceed reset_ms when it runs again; either way the
    target is reached and integrity is clean."""
    vm, q = start_integrity(build, kind)
    with vm, q:
        ram = q.execute("query-balloon")["actual"]
        q.execute("balloon", value=ram - 512 * MiB)
        fault(q, "all", stall_ms=3000)
        wait_balloon(q, lambda a: a == ram - 512 * MiB, 120, vm)
        q.execute("balloon", value=ram)
        wait_balloon(q, lambda a: a == ram, 120, vm)
        integrity_clean(vm, len(vm.output))
        no_give_up(vm)
        print(f"  {kind}: a 3 s main-loop stall mid-inflation: target reached, integrity clean",
              flush=True)


def slow_stats_then_host_reset(build, kind):
    """The stats buffer held 4 s (the guest never waits on it: the device keeps it until it wants
    numbers) and, while the device holds it, the host resets the device through qtest: the guest
    recovers, queues the stats buffer again on the new ring, and stats flow once the delay ends."""
    machine = MACHINES[kind][0]
    vm = BlimpVM(build, app="integrity", args=["size=192M", "pause=200ms", *FAST_TIMEOUTS],
                 machine=machine, memory="1G", qmp=True, qtest=True,
                 extra=[*MACHINES[kind][1], "-device", f"{MACHINES[kind][2]},id=balloon0"],
                 limit=600, qemu=require_patched_qemu(build), name=f"stats-{kind}",
                 expect_host_faults=True)
    with vm:
        vm.wait_for(r"integrity: round 1 ", 240)
        q = Qmp.connect(vm.qmp_path)
        qt = QTest.connect(vm.qtest_path)
        with q:
            dev = window_for(vm, qt, machine)
            fault(q, "stats", delay_ms=4000)
            q.execute("qom-set", path="/machine/peripheral/balloon0",
                      property="guest-stats-polling-interval", value=1)
            time.sleep(1.5)
            mark = len(vm.output)
            check(dev.reset() == 0, "status does not read 0 after the reset")
            vm.wait_for(r"reinitialised after reset", 60, start=mark)
            fault(q, "stats", delay_ms=0)
            wait_fresh_stats(q, "after the reset",
                             lambda st: st["stats"].get("stat-total-memory", 0) > 0)
            ram = q.execute("query-balloon")["actual"]
            q.execute("balloon", value=ram - 128 * MiB)
            wait_balloon(q, lambda a: a == ram - 128 * MiB, 120, vm)
            integrity_clean(vm, len(vm.output))
            no_give_up(vm)
        qt.close()
    print(f"  {kind}: host reset while the stats buffer was held: recovered, stats flow again",
          flush=True)


def slow_hinting(build, kind):
    """Free page hinting during a migration with the hint queue held past balloon.reset_ms: the
    guest resets the device instead of returning the hinted blocks while the device still holds
    them; the migration completes, and memhog's pages (held across it) verify."""
    machine, extra, device = MACHINES[kind]
    dev = f"{device},id=balloon0,free-page-hint=on,iothread=io0"
    steps = "alloc:300M,free:150M,wait:8s,free:all,alloc:400M,free:all"
    vm = BlimpVM(build, app="memhog", args=[f"steps={steps}", "chunk=1020K", "balloon.report=off",
                                            *FAST_TIMEOUTS],
                 machine=machine, memory="512M", qmp=True,
                 extra=[*extra, "-object", "iothread,id=io0", "-device", dev], limit=600,
                 qemu=require_patched_qemu(build), name=f"hint-{kind}", expect_host_faults=True)
    with vm:
        vm.wait_for(r"memhog: step 2 freed", 120)
        q = Qmp.connect(vm.qmp_path)
        with q:
            fault(q, "free-page-hint", delay_ms=4000)
            mark = len(vm.output)
            q.execute("migrate", uri="exec:cat > /dev/null")
            m = vm.wait_for(RESETTING, 60, start=mark)
            check(re.search(r"queue \d+ held a buffer", m.group(1)), m.group(0))
            fault(q, "free-page-hint", delay_ms=0)
            deadline = time.monotonic() + 120
            while (st := q.execute("query-migrate")).get("status") != "completed":
                check(st.get("status") not in ("failed", "cancelled"), f"migration: {st}")
                check(time.monotonic() < deadline, f"migration not done: {st}")
                time.sleep(0.1)
            q.execute("cont")
            status = vm.wait_exit(240)
            check(status == 0, f"memhog exited {status}\n{vm.output}")
            m = vm.wait_for(r"memhog: verified (\d+) pages, (\d+) corrupted", 10)
            check(m.group(2) == "0", f"{m.group(0)}\n{vm.output}")
            no_give_up(vm)
    print(f"  {kind}: hint queue past reset_ms during a migration: reset, migration completed, "
          f"memhog verified {m.group(1)} pages", flush=True)


for _kind in MACHINES:
    for _case in (slow_inflate, slow_deflate, broken_queue, slow_reporting, slow_registration,
                  stalled_main_loop, slow_stats_then_host_reset, slow_hinting):
        def _run(build, case=_case, kind=_kind):
            case(build, kind)
        _run.__name__ = f"test_{_case.__name__}_{_kind}"
        t.test(_run)


if __name__ == "__main__":
    t.main()
