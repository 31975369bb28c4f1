#!/usr/bin/env python3
"""The host resets the virtio-balloon device under a running guest (-accel tcg). QEMU has no QMP
command that resets one device, so the test writes 0 to the device's status register through
QEMU's qtest socket, which works beside TCG: virtio-mmio Status (offset 0x070, virtio 1.2
4.2.2.1) on microvm, device_status in the common configuration structure (4.1.4.3) on q35, found
through the PCI capabilities with config cycles on ports 0xCF8/0xCFC.

  - stock QEMU, mid-inflate (microvm: virtio-mmio legacy; q35: virtio-pci modern, and legacy
    with the device status in I/O BAR 0): `integrity` runs, QMP `balloon` asks for a much lower
    target, and the device is reset once the host has acknowledged the first inflate buffer. The
    guest must say so, recover, reach the target, follow new targets (query-balloon `actual`
    exact), give the memory back on deflate, keep answering guest-stats, and integrity must see
    0 mismatches. Then a second reset while the balloon is idle: no interrupt, no wait in
    progress, and a reset device sends no config interrupt either, so only the balloon's health
    check can notice; the next target must still be reached.
  - patched QEMU (page-states=on, share-hints=on), reset while idle: the device forgets the
    page-state array and every sharing hint; the guest must register the same array again and
    re-send its hints, and the host must use the array again (an x-blimp-balloon-discard
    reclaims the memory memhog freed).

Both reset the device on purpose, so their VMs pass expect_host_faults=True: the guest's "device
reset by the host" / "driver must recover" lines are the point, and the test checks them itself.
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from balloon_window import LegacyPciBalloon, MmioBalloon, PciBalloon  # noqa: E402
from blimp_vm import (BlimpVM, TestRunner, check, require_page_states,  # noqa: E402
                      require_patched_qemu, wait_balloon)
from qmp import Qmp  # noqa: E402
from qtest import QTest  # noqa: E402

t = TestRunner()
MiB = 1 << 20
DETECTED = r"virtio: balloon at \S+ [0-9a-f:.x]+: device reset itself \(status reads 0\)"
RECOVERING = r"balloon: device reset by the host; reinitialising it \(holding (\d+) MiB, (\d+) MiB"
RETOLD = r"balloon: re-inflated the (\d+) MiB held across the reset in (\d+) ms"


MACHINES = {"microvm": ("microvm", "virtio-balloon-device", MmioBalloon),
            "q35": ("q35", "virtio-balloon-pci", PciBalloon),
            "q35-legacy": ("q35", "virtio-balloon-pci,disable-modern=on", LegacyPciBalloon)}


def guest_stats(q):
    return q.execute("qom-get", path="/machine/peripheral/balloon0", property="guest-stats")


def wait_stats(q, predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        st = guest_stats(q)
        if st["last-update"] and predicate(st):
            return st
        check(time.monotonic() < deadline, f"guest stats never showed {what}: {st}")
        time.sleep(0.2)


def reset_mid_inflate(build, kind):
    ram = 2048 * MiB
    machine, device, window = MACHINES[kind]
    extra = ["-device", f"{device},id=balloon0,deflate-on-oom=on"]
    with BlimpVM(build, app="integrity", args=["size=256M", "pause=200ms"], machine=machine,
                 memory="2G", qmp=True, qtest=True, extra=extra, limit=600,
                 expect_host_faults=True) as vm:
        vm.wait_for(r"integrity: round 1 ", 240)
        qt = QTest.connect(vm.qtest_path)
        dev = window(vm, qt)
        q = Qmp.connect(vm.qmp_path)
        q.execute("qom-set", path="/machine/peripheral/balloon0",
                  property="guest-stats-polling-interval", value=1)
        check(q.execute("query-balloon")["actual"] == ram, "balloon not empty at start")

        # Inflate by 1648 MiB (~0.5 s at TCG speed); reset after the first acknowledged buffer.
        target = 400 * MiB
        want_pages = (ram - target) >> 12
        mark = first_reset = len(vm.output)
        q.execute("balloon", value=target)
        deadline = time.monotonic() + 60
        while (acked := dev.config(4)) == 0:
            check(time.monotonic() < deadline, "the guest never started inflating")
        t_reset = time.monotonic()
        status = dev.reset()
        num_pages, kept = dev.config(0), dev.config(4)
        check(status == 0, f"status reads {status:#x} after writing 0")
        check(acked < want_pages,
              f"too late: {acked} of {want_pages} pages were inflated before the reset")
        print(f"  reset after {acked * 4096 >> 20} of {want_pages * 4096 >> 20} MiB acknowledged;"
              f" after it the device's config shows num_pages={num_pages * 4096 >> 20} MiB,"
              f" actual={kept * 4096 >> 20} MiB", flush=True)

        vm.wait_for(DETECTED, 30, start=mark)
        detect_s = time.monotonic() - t_reset
        m = vm.wait_for(RECOVERING, 30, start=mark)
        holding = int(m.group(1))
        check(holding < (want_pages * 4096 >> 20), f"not mid-inflate: holding {holding} MiB")
        m = vm.wait_for(RETOLD, 60, start=mark)
        check(int(m.group(1)) == holding, m.group(0))
        wait_balloon(q, lambda a: a == target, 120, vm)
        print(f"  guest noticed the reset within {detect_s:.2f} s (wall clock, upper bound); "
              f"held {holding} MiB, re-told in {m.group(2)} ms", flush=True)
        check("did not return a buffer" not in vm.output[mark:],
              f"a wait ran into its 5 s timeout instead of seeing the reset\n{vm.output[mark:]}")

        # Stats answered again after the reset, reflecting the balloon (MEMTOT excludes it).
        t_after = time.time()
        wait_stats(q, lambda s: s["last-update"] > t_after + 1
                   and 0 < s["stats"].get("stat-total-memory", 0) <= target + 16 * MiB,
                   "an answer after the reset")

        # New targets: up a little, more, then deflate all the way back.
        for value in (600 * MiB, 1200 * MiB, ram):
            q.execute("balloon", value=value)
            wait_balloon(q, lambda a: a == value, 120, vm)
        st = wait_stats(q, lambda s: s["stats"].get("stat-total-memory", 0) >= ram - 96 * MiB,
                        "the deflated memory back in the guest's total")
        print(f"  deflated back: guest total {st['stats']['stat-total-memory'] >> 20} MiB, free "
              f"{st['stats'].get('stat-free-memory', 0) >> 20} MiB", flush=True)

        # Second reset, balloon idle: only the health check can see it.
        mark = len(vm.output)
        t_reset = time.monotonic()
        status = dev.reset()
        check(status == 0, f"status reads {status:#x}")
        vm.wait_for(DETECTED, 30, start=mark)
        detect_s = time.monotonic() - t_reset
        vm.wait_for(r"virtio: balloon at \S+ [0-9a-f:.x]+: reinitialised after reset", 30,
                    start=mark)
        q.execute("balloon", value=500 * MiB)
        wait_balloon(q, lambda a: a == 500 * MiB, 120, vm)
        print(f"  idle reset noticed within {detect_s:.2f} s; 500 MiB target reached after it",
              flush=True)

        mark = len(vm.output)
        # The whole line: serial output arrives in pieces.
        m = vm.wait_for(r"integrity: round \d+ verified \d+ pages, \d+ mismatches \(total (\d+)\)",
                        120, start=mark)
        check("MISMATCH" not in vm.output, vm.output)
        check(m.group(1) == "0", m.group(0))
        rounds = len(re.findall(r"integrity: round \d+ verified", vm.output[first_reset:]))
        check(rounds >= 3, f"only {rounds} integrity rounds ran after the first reset")
        check("recovery failed" not in vm.output, vm.output)
        print(f"  {rounds} integrity rounds since the first reset, 0 mismatches", flush=True)
        qt.close()
        q.close()


@t.test
def test_reset_mid_inflate_stock_microvm(build):
    reset_mid_inflate(build, "microvm")


@t.test
def test_reset_mid_inflate_stock_q35(build):
    reset_mid_inflate(build, "q35")


@t.test
def test_reset_mid_inflate_stock_q35_legacy(build):
    reset_mid_inflate(build, "q35-legacy")


@t.test
def test_reset_reregisters_page_states_and_hints(build):
    extra = ["-global", "virtio-mmio.force-legacy=false",
             "-device", "virtio-balloon-device,id=balloon0,page-states=on,share-hints=on"]
    with BlimpVM(build, app="memhog", args=["steps=alloc:400M,free:all,wait:300s", "chunk=1020K"],
                 machine="microvm", memory="1G", qmp=True, qtest=True, extra=extra, limit=600,
                 qemu=require_patched_qemu(build), name="memhog-pstates", expect_host_faults=True) as vm:
        require_page_states(vm, 180)
        vm.wait_for(r"memhog: step 2 freed", 240)
        qt = QTest.connect(vm.qtest_path)
        dev = MmioBalloon(vm, qt)
        q = Qmp.connect(vm.qmp_path)
        before = q.execute("x-blimp-balloon-info")
        check(before["pstate-registered"] and before["pstate-ages"] and before["hints"] > 0, f"{before}")

        mark = len(vm.output)
        status = dev.reset()
        check(status == 0, f"status reads {status:#x}")
        right_after = q.execute("x-blimp-balloon-info")
        noticed = re.search(DETECTED, vm.output[mark:])
        if not noticed:
            # The guest had not noticed yet when QEMU answered: the device's view is the reset one.
            check(not right_after["pstate-registered"] and not right_after["pstate-ages"]
                  and right_after["hints"] == 0,
                  f"the reset did not clear the device's extension state: {right_after}")
        print(f"  right after the reset: pstate-registered={right_after['pstate-registered']} "
              f"hints={right_after['hints']} (guest noticed already: {bool(noticed)})", flush=True)

        m = vm.wait_for(r"page-states: re-registered (\d+) pages after the device reset", 30,
                        start=mark)
        check(int(m.group(1)) == before["pstate-pages"], m.group(0))
        vm.wait_for(r"page-states: re-sent the age block after the device reset", 30, start=mark)
        vm.wait_for(r"sharing: re-sent hints after the device reset: \d+ pages", 30, start=mark)
        after = q.execute("x-blimp-balloon-info")
        check(after["pstate-registered"] and after["pstate-gpa"] == before["pstate-gpa"]
              and after["pstate-pages"] == before["pstate-pages"], f"{before}\n{after}")
        # The ages came back too: without them a limited sweep would take hot pages first.
        check(after["pstate-ages"], f"age block not re-sent: {after}")
        ws = q.execute("x-blimp-balloon-working-set")
        unused = sum(b["unused"] for b in ws["buckets"])
        print(f"  working set after the reset: ages={ws['ages']} clock={ws['clock-s']} s, "
              f"{unused * 4096 >> 20} MiB unused in buckets "
              f"{[(b['min-age-s'], b['unused']) for b in ws['buckets']]}", flush=True)
        check(ws["ages"] and unused * 4096 >= 300 * MiB, f"working set after the reset: {ws}")
        # The same pages, hashed again: but the merge candidates (.bss, page metadata) were
        # written since boot, and the guest leaves the zero-filled ones out, so a candidate page
        # that became zero or stopped being zero changes the count (by a handful, not by all).
        m = re.search(r"merge candidates \(WRITABLE\): (\d+) pages in \d+ runs, (\d+) zero-filled",
                      vm.output)
        check(m, "no merge-candidate line in the boot log")
        flip = int(m.group(1)) + int(m.group(2))
        check(after["hints"] > 0 and abs(after["hint-pages"] - before["hint-pages"]) <= flip // 8 and
              abs(after["hint-marked-pages"] - before["hint-marked-pages"]) <= flip // 8,
              f"hints not re-sent as before (candidates {flip}): {before}\n{after}")
        check(after["req-ok"] >= before["req-ok"] + 2, f"{before}\n{after}")

        # The host uses the re-registered array: memhog's freed 400 MiB are unused pages.
        rss_before = vm.rss_kib() * 1024
        res = q.execute("x-blimp-balloon-discard", timeout=120)
        fell = rss_before - vm.rss_kib() * 1024
        check(res["discarded-unused"] * 4096 >= 300 * MiB, f"sweep after the reset: {res}")
        check(fell >= 250 * MiB, f"RSS fell by {fell >> 20} MiB only")
        print(f"  after re-registration a sweep discarded {res['discarded-unused'] * 4096 >> 20}"
              f" MiB unused, RSS fell {fell >> 20} MiB", flush=True)

        # And the balloon itself still works.
        q.execute("balloon", value=600 * MiB)
        wait_balloon(q, lambda a: a == 600 * MiB, 120, vm)
        check("recovery failed" not in vm.output and "failed" not in vm.output[mark:],
              vm.output[mark:])
        qt.close()
        q.close()


if __name__ == "__main__":
    t.main()
