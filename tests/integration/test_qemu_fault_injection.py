#!/usr/bin/env python3
"""Fault injection and the host-side safety nets of host/qemu patches 0007 and 0008
(docs/spec-virtio-balloon-blimp.md sections 4.4, 4.5 and 11), on the patched QEMU.

Device level (qtest accelerator, this script is the driver, virtual time moves only when the
script steps it, so "late" is exact and nothing is timed against the wall clock):
  * x-blimp-balloon-fault: bad arguments give clear QMP errors; settings are returned;
  * delay-ms on the inflate queue: a buffer is neither discarded nor completed until delay-ms
    of virtual time after its notify, then both happen; a second notify 1 s later completes
    1 s later (per-notify deadlines); delay-ms 0 processes what is pending at the next notify;
  * a device reset drops pending delayed work (counted), QEMU keeps running, the rings are not
    touched afterwards, the delay setting stays and applies after re-initialisation;
  * corrupt-next: the next completion carries used id == queue size, the one after is normal;
  * stall-ms: the call blocks about that long and returns;
  * the stats, blimp and free-page-hint queues honour the delay too;
  * x-fault-delay-ms / x-fault-queues start QEMU already slow; a bad queue name stops QEMU;
  * the STABLE guard: an inflate buffer whose pages the guest made STABLE / VOLATILE /
    0x02 (reserved) meanwhile (a stale buffer completed late) discards only the UNUSED ones;
    the others keep content and byte; counted; logged; also for free page reporting;
  * sweeps in batches: page-states-batch-pages bounds every batch.
Guest level (Blimp guest under TCG, QMP):
  * a balloon target with the inflate queue delayed 3 s: `actual` does not move before the
    delay has passed, then reaches the target; corrupt-next on the inflate queue makes the
    guest report a broken queue; stall-ms returns; QEMU keeps running;
  * a device reset (status 0 through qtest, as test_balloon_reset does) while an inflate buffer
    waits in its delay: dropped and counted, the guest recovers and reaches the target.
  * -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny boots.

Exit 0 pass, 77 skip (patched QEMU not built), 1 fail.
"""
import os
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import blimp_ext as ext  # noqa: E402  (the qtest virtio-mmio driver)
from balloon_window import PciBalloon  # noqa: E402
from blimp_ext import (PAGE, F_FREE_PAGE_HINT, F_PAGE_STATES, F_REPORTING, F_STATS,  # noqa: E402
                       F_VERSION_1, PS_DISCARDED_UNUSED, PS_RESERVED, PS_STABLE, PS_UNUSED,
                       PS_VOLATILE, QtestVm as Vm, check, fill, page_is, register_array)
from blimp_vm import BlimpVM, Skip, TestRunner, require_patched_qemu, wait_balloon  # noqa: E402
from qmp import Qmp, QmpError  # noqa: E402
from qtest import QTest  # noqa: E402

t = TestRunner()
MS = 1_000_000
PFN_BUF = 0x00190000     # inflate buffers (PFN lists), away from ext's BUF_GPA requests
TEST_PFN = 0x3000        # 48 MiB


class Ring:
    """Submits several buffers at once (ext.VirtioMMIOBalloon.submit reuses descriptor 0 and
    expects an immediate answer); reads the used ring."""

    def __init__(self, dev, q):
        self.dev, self.qt, self.q = dev, dev.qt, q
        self.d, self.a, self.u = dev.ring(q)
        self.next_desc = 0

    def post(self, out_bufs, in_bufs=(), notify=True):
        descs = [(g, n, 0) for g, n in out_bufs] + [(g, n, 2) for g, n in in_bufs]
        head = self.next_desc
        raw = b""
        for i, (g, n, fl) in enumerate(descs):
            more = i + 1 < len(descs)
            raw += struct.pack("<QIHH", g, n, fl | (1 if more else 0),
                               (head + i + 1) % self.dev.QN if more else 0)
        self.qt.memwrite(self.d + 16 * head, raw)
        self.next_desc = (head + len(descs)) % self.dev.QN
        slot = self.dev.avail_idx[self.q] % self.dev.QN
        self.qt.memwrite(self.a + 4 + 2 * slot, struct.pack("<H", head))
        self.dev.avail_idx[self.q] += 1
        self.qt.memwrite(self.a, struct.pack("<HH", 0, self.dev.avail_idx[self.q] & 0xFFFF))
        if notify:
            self.dev.w(0x50, self.q)
        return head

    def used_idx(self):
        return struct.unpack("<H", self.qt.memread(self.u + 2, 2))[0]

    def used_elem(self, i):
        return struct.unpack("<II", self.qt.memread(self.u + 4 + 8 * (i % self.dev.QN), 8))

    def wait_used(self, n, what, timeout=5.0):
        """The completion is written by a bottom half right after the virtual-time step:
        allow it a moment of wall time."""
        deadline = time.monotonic() + timeout
        while self.used_idx() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: used idx {self.used_idx()}, wanted {n}")
            time.sleep(0.02)

    def settle_unused(self, n, what):
        time.sleep(0.3)
        check(self.used_idx() == n, what)


def inflate_buf(qt, pfns, gpa=PFN_BUF):
    qt.memwrite(gpa, struct.pack(f"<{len(pfns)}I", *pfns))
    return [(gpa, 4 * len(pfns))]


def fault(vm, **kw):
    return vm.qmp.execute("x-blimp-balloon-fault", **kw)


def info(vm):
    return vm.qmp.execute("x-blimp-balloon-info")


def expect_error(vm, what, **kw):
    try:
        fault(vm, **kw)
    except QmpError as e:
        check(bool(e.desc), f"{what}: refused ({e.cls}: {e.desc})")
        return e.desc
    raise AssertionError(f"{what}: accepted")


def init_std(vm, extra_bits=0):
    return vm.dev.init((1 << F_STATS) | (1 << F_VERSION_1) | extra_bits)


_help = {}


def fault_qemu(build):
    """The patched QEMU, with fault injection (patch 0007); Skip otherwise."""
    qemu = require_patched_qemu(build)
    if qemu not in _help:
        _help[qemu] = subprocess.run([qemu, "-device", "virtio-balloon-device,help"],
                                     capture_output=True, text=True).stdout
    if "x-fault-delay-ms" not in _help[qemu]:
        raise Skip("this QEMU predates patch 0007 (rebuild: host/qemu/build.sh BUILD_DIR)")
    return qemu


def guest_build(build):
    """The patched QEMU and a built guest kernel, for the guest-level checks; Skip otherwise."""
    qemu = fault_qemu(build)
    if not os.path.exists(os.path.join(build, "blimp.elf")):
        raise Skip(f"{build}/blimp.elf not built: guest-level checks skipped")
    return qemu


# ---------------------------------------------------------------------------------------------
@t.test
def test_arguments(build):
    qemu = fault_qemu(build)
    print("[arguments]")
    vm = Vm(qemu, "")
    try:
        expect_error(vm, "unknown queue", queue="bogus", **{"delay-ms": 1})
        expect_error(vm, "negative delay", queue="inflate", **{"delay-ms": -1})
        expect_error(vm, "delay past the cap", queue="inflate", **{"delay-ms": 3600001})
        expect_error(vm, "stall past the cap", queue="inflate", **{"stall-ms": 60001})
        d = expect_error(vm, "blimp queue without page-states", queue="blimp", **{"delay-ms": 5})
        check("no blimp queue" in d, f"the error names the missing queue ({d})")
        expect_error(vm, "reporting queue without free-page-reporting", queue="reporting",
                     **{"delay-ms": 5})
        expect_error(vm, "unknown argument", queue="inflate", delay=5)
        st = fault(vm, queue="inflate")
        names = [q["queue"] for q in st["queues"]]
        check(names == ["inflate", "deflate", "stats"], f"queues listed: {names}")
        check(all(q["delay-ms"] == 0 and not q["corrupt-next"] and q["pending-kicks"] == 0
                  for q in st["queues"]) and st["stalled-ms"] == 0, "nothing set by default")
        st = fault(vm, queue="all", **{"delay-ms": 250})
        check(all(q["delay-ms"] == 250 for q in st["queues"]), "queue all sets every queue")
        st = fault(vm, queue="deflate", **{"delay-ms": 0, "corrupt-next": True})
        got = {q["queue"]: (q["delay-ms"], q["corrupt-next"]) for q in st["queues"]}
        check(got == {"inflate": (250, False), "deflate": (0, True), "stats": (250, False)},
              f"per-queue settings returned ({got})")
        check(vm.alive(), "QEMU alive")
    finally:
        vm.stop()


@t.test
def test_inflate_delay_and_reset(build):
    qemu = fault_qemu(build)
    print("[inflate delayed, then reset]")
    vm = Vm(qemu, "coalesce-discard=on")
    qt = vm.qt
    try:
        init_std(vm)
        r = Ring(vm.dev, 0)
        fill(qt, TEST_PFN, 8, 0xAA)
        fault(vm, queue="inflate", **{"delay-ms": 3000})
        r.post(inflate_buf(qt, list(range(TEST_PFN, TEST_PFN + 4))))
        r.settle_unused(0, "delayed: not completed at once")
        check(page_is(qt, TEST_PFN, 0xAA), "delayed: not discarded at once")
        qt.clock_step(2900 * MS)
        r.settle_unused(0, "not completed after 2.9 s of virtual time")
        check(page_is(qt, TEST_PFN, 0xAA), "not discarded after 2.9 s")
        qt.clock_step(100 * MS)
        r.wait_used(1, "completed at 3.0 s")
        check(page_is(qt, TEST_PFN, 0) and page_is(qt, TEST_PFN + 3, 0),
              "discarded when it completed (the whole processing happened late)")
        i = info(vm)
        check(i["fault-delayed-kicks"] == 1 and i["fault-delayed-buffers"] == 1,
              f"counted: {i['fault-delayed-kicks']} kick, {i['fault-delayed-buffers']} buffer")

        # two notifies 1 s apart complete 1 s apart: each has its own deadline
        r.post(inflate_buf(qt, [TEST_PFN + 4], PFN_BUF + 0x1000))
        qt.clock_step(1000 * MS)
        r.post(inflate_buf(qt, [TEST_PFN + 5], PFN_BUF + 0x2000))
        qt.clock_step(2000 * MS)
        r.wait_used(2, "first of two completed at its deadline")
        r.settle_unused(2, "second of two not completed with the first")
        check(page_is(qt, TEST_PFN + 5, 0xAA), "second buffer's page not discarded yet")
        qt.clock_step(1000 * MS)
        r.wait_used(3, "second of two completed 1 s later")

        # reset with work pending: dropped, counted, never touched again
        r.post(inflate_buf(qt, [TEST_PFN + 6], PFN_BUF + 0x3000))
        r.post(inflate_buf(qt, [TEST_PFN + 7], PFN_BUF + 0x4000))
        st = fault(vm, queue="inflate")
        check(st["queues"][0]["pending-kicks"] == 2, "two notifies pending")
        used_before = r.used_idx()
        vm.dev.w(0x70, 0)
        i = info(vm)
        check(i["fault-cancelled-kicks"] == 2 and i["fault-cancelled-buffers"] == 2,
              f"reset dropped 2 notifies / 2 buffers ({i['fault-cancelled-kicks']}, "
              f"{i['fault-cancelled-buffers']})")
        qt.clock_step(5000 * MS)
        time.sleep(0.3)
        check(vm.alive(), "QEMU alive after the pending deadlines passed")
        check(r.used_idx() == used_before and page_is(qt, TEST_PFN + 6, 0xAA) and
              page_is(qt, TEST_PFN + 7, 0xAA), "the old ring was not touched after the reset")
        check("device reset dropped 2 delayed notifies" in vm.logtext(), "the drop is logged")
        st = fault(vm, queue="inflate")
        check(st["queues"][0]["delay-ms"] == 3000 and st["queues"][0]["pending-kicks"] == 0,
              "the delay setting survives the reset")

        # re-initialised: still delayed; delay-ms 0 lets the next notify process everything
        init_std(vm)
        r = Ring(vm.dev, 0)
        r.post(inflate_buf(qt, [TEST_PFN + 6]))
        r.settle_unused(0, "after re-initialisation the delay still applies")
        fault(vm, queue="inflate", **{"delay-ms": 0})
        r.post(inflate_buf(qt, [TEST_PFN + 7], PFN_BUF + 0x1000))
        r.wait_used(2, "delay 0: the pending and the new buffer complete at the next notify")
        check(page_is(qt, TEST_PFN + 6, 0) and page_is(qt, TEST_PFN + 7, 0), "both discarded")
        check(vm.alive(), "QEMU alive")
    finally:
        vm.stop()


@t.test
def test_corrupt_and_stall(build):
    qemu = fault_qemu(build)
    print("[corrupt-next, stall-ms]")
    vm = Vm(qemu, "")
    qt = vm.qt
    try:
        init_std(vm)
        r = Ring(vm.dev, 1)     # deflate
        fault(vm, queue="deflate", **{"corrupt-next": True})
        r.post(inflate_buf(qt, [TEST_PFN]))
        r.wait_used(1, "corrupted completion written")
        uid, _ = r.used_elem(0)
        check(uid == vm.dev.QN, f"used id {uid} == queue size {vm.dev.QN} (out of range)")
        st = fault(vm, queue="deflate")
        check(not st["queues"][1]["corrupt-next"], "corrupt-next is one-shot")
        head = r.post(inflate_buf(qt, [TEST_PFN + 1], PFN_BUF + 0x1000))
        r.wait_used(2, "next completion")
        uid, _ = r.used_elem(1)
        check(uid == head, f"the next completion is normal (id {uid})")
        check(info(vm)["fault-corrupted"] == 1, "counted")

        t0 = time.monotonic()
        st = fault(vm, queue="all", **{"stall-ms": 1500})
        took = time.monotonic() - t0
        check(took >= 1.4 and st["stalled-ms"] >= 1500,
              f"stall-ms 1500 blocked {took:.2f} s and returned (stalled-ms {st['stalled-ms']})")
        check(info(vm)["fault-stalls"] == 1 and vm.alive(), "counted, QEMU alive")
    finally:
        vm.stop()


@t.test
def test_other_queues(build):
    qemu = fault_qemu(build)
    print("[stats, blimp and free-page-hint queues delayed]")
    vm = Vm(qemu, "page-states=on,free-page-hint=on,iothread=io0",
            extra=["-object", "iothread,id=io0"])
    qt = vm.qt
    try:
        # queues: 0 inflate, 1 deflate, 2 stats, 3 free page, 4 blimpq
        dev = vm.dev
        feats = (1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_PAGE_STATES) | (1 << F_FREE_PAGE_HINT)
        dev.w(0x70, 0)
        dev.w(0x70, 1)
        dev.w(0x70, 3)
        feats &= dev.device_features()
        check(feats & (1 << F_FREE_PAGE_HINT), "free-page-hint offered")
        dev.w(0x24, 0)
        dev.w(0x20, feats & 0xFFFFFFFF)
        dev.w(0x24, 1)
        dev.w(0x20, feats >> 32)
        dev.w(0x70, 11)
        for q in range(5):
            dev.setup_queue(q)
        dev.w(0x70, 15)
        dev.blimpq = 4

        fault(vm, queue="all", **{"delay-ms": 2000})
        # stats: the guest's answer is read only after the delay
        stats = Ring(dev, 2)
        qt.memwrite(PFN_BUF, struct.pack("<HQ", 4, 123 << 20))    # MEMFREE
        stats.post([(PFN_BUF, 10)])
        time.sleep(0.3)
        s = vm.qmp.execute("qom-get", path="/machine/peripheral/balloon0", property="guest-stats")
        check(s["last-update"] == 0, "stats: not read before the delay")
        qt.clock_step(2000 * MS)
        deadline = time.monotonic() + 5
        while s["last-update"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            s = vm.qmp.execute("qom-get", path="/machine/peripheral/balloon0",
                               property="guest-stats")
        check(s["stats"].get("stat-free-memory") == 123 << 20, "stats: read after the delay")

        # blimpq: a PSTATE_REGISTER answered only after the delay
        blimp = Ring(dev, 4)
        body = struct.pack("<HHIQ", 1, 0, 1, 0) + struct.pack("<QQQ", ext.ARRAY_GPA,
                                                               ext.MEM_MB * 256, 0)
        qt.memwrite(ext.BUF_GPA, body)
        blimp.post([(ext.BUF_GPA, len(body))], [(ext.BUF_GPA + 0x1000, 16)])
        blimp.settle_unused(0, "blimpq: not answered before the delay")
        check(not info(vm)["pstate-registered"], "blimpq: not applied before the delay")
        qt.clock_step(2000 * MS)
        blimp.wait_used(1, "blimpq: answered after the delay")
        check(info(vm)["pstate-registered"], "blimpq: applied after the delay")

        # free page hint (iothread): the buffer is taken only after the delay
        fph = Ring(dev, 3)
        qt.memwrite(PFN_BUF + 0x100, struct.pack("<I", 0))
        fph.post([(PFN_BUF + 0x100, 4)])
        fph.settle_unused(0, "free-page-hint: not taken before the delay")
        qt.clock_step(2000 * MS)
        fph.wait_used(1, "free-page-hint: taken after the delay (by the iothread)")
        check(vm.alive(), "QEMU alive")
    finally:
        vm.stop()


@t.test
def test_properties(build):
    qemu = fault_qemu(build)
    print("[x-fault-delay-ms / x-fault-queues]")
    vm = Vm(qemu, "x-fault-delay-ms=1500,x-fault-queues=inflate+stats")
    try:
        st = fault(vm, queue="all")
        got = {q["queue"]: q["delay-ms"] for q in st["queues"]}
        check(got == {"inflate": 1500, "deflate": 0, "stats": 1500},
              f"started with inflate and stats delayed ({got})")
        init_std(vm)
        r = Ring(vm.dev, 0)
        r.post(inflate_buf(vm.qt, [TEST_PFN]))
        r.settle_unused(0, "inflate delayed from the start")
        vm.qt.clock_step(1500 * MS)
        r.wait_used(1, "completed after 1.5 s")
    finally:
        vm.stop()
    for bad, want in (("x-fault-delay-ms=10,x-fault-queues=inflate+bogus", "unknown queue"),
                      ("x-fault-delay-ms=10,x-fault-queues=reporting", "no reporting queue")):
        argv = ["timeout", "60", qemu, "-M", "microvm", "-accel", "qtest", "-display", "none",
                "-nodefaults", "-device", "virtio-balloon-device," + bad]
        p = subprocess.run(argv, capture_output=True, text=True)
        check(p.returncode == 1 and want in p.stderr,
              f"{bad}: QEMU refuses to start ({p.stderr.strip()[-120:]})")


@t.test
def test_stable_guard(build):
    qemu = fault_qemu(build)
    print("[STABLE guard: inflate]")
    vm = Vm(qemu, "page-states=on,coalesce-discard=on")
    qt = vm.qt
    try:
        dev = vm.dev
        dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_PAGE_STATES))
        st, _, _, _ = register_array(dev)
        check(st == 0, "array registered")
        r = Ring(dev, 0)
        states = {0: PS_UNUSED, 1: PS_UNUSED, 2: PS_STABLE, 3: PS_VOLATILE, 4: PS_RESERVED,
                  5: PS_DISCARDED_UNUSED, 6: PS_UNUSED, 7: 0x55}
        for k, v in states.items():
            qt.memwrite(ext.ARRAY_GPA + TEST_PFN + k, bytes([v]))
        fill(qt, TEST_PFN, 8, 0xAA)
        before = info(vm)
        r.post(inflate_buf(qt, [TEST_PFN + k for k in states]))
        r.wait_used(1, "inflate buffer completed")
        after = info(vm)
        got = qt.memread(ext.ARRAY_GPA + TEST_PFN, 8)
        for k, v in states.items():
            if v == PS_UNUSED:
                check(got[k] == PS_DISCARDED_UNUSED and page_is(qt, TEST_PFN + k, 0),
                      f"page {k} UNUSED: discarded, published DISCARDED_UNUSED")
            else:
                check(got[k] == v and page_is(qt, TEST_PFN + k, 0xAA),
                      f"page {k} byte {v:#04x}: not discarded, byte untouched")
        d = {k: after[k] - before[k] for k in ("guard-discarded", "guard-already-discarded",
                                                "stale-discards-refused", "guard-pauses")}
        check(d == {"guard-discarded": 3, "guard-already-discarded": 1,
                    "stale-discards-refused": 4, "guard-pauses": 0},
              f"counted: {d} (qtest: no vCPUs, no pause)")
        check("refused to discard 4 pages" in vm.logtext(), "refusal logged")

        # the scenario the guard is for: a delayed buffer completes after the guest reused a page
        print("[STABLE guard: stale delayed buffer]")
        fault(vm, queue="inflate", **{"delay-ms": 5000})
        p = TEST_PFN + 16
        qt.memwrite(ext.ARRAY_GPA + p, bytes([PS_UNUSED, PS_UNUSED]))
        r.post(inflate_buf(qt, [p, p + 1], PFN_BUF + 0x1000))
        qt.clock_step(4000 * MS)              # the guest's own timeout passes; it reuses p
        qt.memwrite(ext.ARRAY_GPA + p, bytes([PS_STABLE]))
        fill(qt, p, 1, 0x5C)
        fill(qt, p + 1, 1, 0xAA)
        qt.clock_step(1000 * MS)
        r.wait_used(2, "the stale buffer completes late")
        check(page_is(qt, p, 0x5C), "the reused page keeps the guest's data")
        check(page_is(qt, p + 1, 0) and qt.memread(ext.ARRAY_GPA + p + 1, 1)[0] ==
              PS_DISCARDED_UNUSED, "the page still given away is discarded")
        check(info(vm)["stale-discards-refused"] == after["stale-discards-refused"] + 1,
              "one more refusal counted")
        fault(vm, queue="inflate", **{"delay-ms": 0})

    finally:
        vm.stop()

    vm = Vm(qemu, "page-states=on,page-states-batch-pages=64")
    qt = vm.qt
    try:
        vm.dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_PAGE_STATES))
        register_array(vm.dev)
        qt.memwrite(ext.ARRAY_GPA + TEST_PFN, bytes([PS_UNUSED]) * 1000)
        res = vm.qmp.execute("x-blimp-balloon-discard")
        check(res["claimed"] == 1000 and res["batches"] == 16 and res["runs"] == 16,
              f"1000 pages in 16 batches of at most 64 ({res})")
        qt.memwrite(ext.ARRAY_GPA + TEST_PFN, bytes([PS_UNUSED]) * 1000)
        res = vm.qmp.execute("x-blimp-balloon-discard", **{"max-pages": 100})
        check(res["claimed"] == 100 and res["batches"] == 2, f"max-pages 100: 2 batches ({res})")
        check(info(vm)["pstate-batches"] == 18, "pstate-batches counted")
    finally:
        vm.stop()


@t.test
def test_stable_guard_reporting(build):
    qemu = fault_qemu(build)
    print("[STABLE guard: free page reporting]")
    vm = Vm(qemu, "page-states=on,free-page-reporting=on")
    qt = vm.qt
    try:
        dev = vm.dev
        # queues: 0 inflate, 1 deflate, 2 stats, 3 reporting, 4 blimpq
        feats = (1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_PAGE_STATES) | (1 << F_REPORTING)
        dev.w(0x70, 0)
        dev.w(0x70, 1)
        dev.w(0x70, 3)
        feats &= dev.device_features()
        dev.w(0x24, 0)
        dev.w(0x20, feats & 0xFFFFFFFF)
        dev.w(0x24, 1)
        dev.w(0x20, feats >> 32)
        dev.w(0x70, 11)
        for q in range(5):
            dev.setup_queue(q)
        dev.w(0x70, 15)
        dev.blimpq = 4
        st, _, _, _ = register_array(dev)
        check(st == 0, "array registered")
        # a reported 16-page range: 12 UNUSED, 4 STABLE (reused meanwhile)
        p = TEST_PFN + 256
        qt.memwrite(ext.ARRAY_GPA + p, bytes([PS_UNUSED] * 6 + [PS_STABLE] * 4 + [PS_UNUSED] * 6))
        fill(qt, p, 16, 0xAA)
        rep = Ring(dev, 3)
        rep.post([], [(p * PAGE, 16 * PAGE)])
        rep.wait_used(1, "report completed")
        got = qt.memread(ext.ARRAY_GPA + p, 16)
        ok = all(page_is(qt, p + k, 0xAA) and got[k] == PS_STABLE for k in range(6, 10)) and \
            all(page_is(qt, p + k, 0) and got[k] == PS_DISCARDED_UNUSED
                for k in list(range(6)) + list(range(10, 16)))
        check(ok, "reported range: UNUSED pages discarded and published, STABLE ones kept")
        check(info(vm)["stale-discards-refused"] == 4, "4 refusals counted")
    finally:
        vm.stop()


# ---- guest level ------------------------------------------------------------------------------
@t.test
def test_guest(build):
    qemu = guest_build(build)
    MiB = 1 << 20
    print("[Blimp guest: inflate delayed 3 s, then corrupt-next]")
    extra = ["-device", "virtio-balloon-pci,id=balloon0,coalesce-discard=on"]
    with BlimpVM(build, app="memhog", args=["steps=wait:600s"], machine="q35", memory="1G",
                 qmp=True, extra=extra, limit=400, qemu=qemu, name="fault-guest",
                 expect_host_faults=True) as vm:
        vm.wait_for(r"blimp: starting app", 180)
        q = Qmp.connect(vm.qmp_path)
        full = q.execute("query-balloon")["actual"]
        q.execute("x-blimp-balloon-fault", queue="inflate", **{"delay-ms": 3000})
        t0 = time.monotonic()
        target = full - 64 * MiB
        q.execute("balloon", value=target)
        time.sleep(1.0)
        a1 = q.execute("query-balloon")["actual"]
        check(a1 == full, f"1 s after the target change actual is unchanged ({a1 >> 20} MiB)")
        wait_balloon(q, lambda a: a == target, 120, vm)
        took = time.monotonic() - t0
        check(took >= 2.5, f"target reached after {took:.1f} s (inflate delayed 3 s)")
        i = q.execute("x-blimp-balloon-info")
        check(i["fault-delayed-kicks"] >= 1 and i["fault-delayed-buffers"] >= 1,
              f"delays counted ({i['fault-delayed-kicks']} kicks, "
              f"{i['fault-delayed-buffers']} buffers)")
        q.execute("x-blimp-balloon-fault", queue="inflate",
                  **{"delay-ms": 0, "corrupt-next": True})
        mark = len(vm.output)
        q.execute("balloon", value=target - 32 * MiB)
        vm.wait_for(r"device returned used id \d+, out of range", 60, start=mark)
        check(True, "the guest reported the corrupted completion (broken queue)")
        check(q.execute("x-blimp-balloon-info")["fault-corrupted"] == 1, "counted")
        st = q.execute("x-blimp-balloon-fault", queue="all", **{"stall-ms": 500})
        check(st["stalled-ms"] >= 500 and vm.proc.poll() is None,
              "stall under a running guest returns; QEMU alive")
        q.close()

    print("[Blimp guest: device reset with a delayed inflate pending]")
    extra = ["-device", "virtio-balloon-pci,id=balloon0,coalesce-discard=on,page-states=on"]
    with BlimpVM(build, app="memhog", args=["steps=wait:600s"], machine="q35", memory="1G",
                 qmp=True, qtest=True, extra=extra, limit=400, qemu=qemu,
                 name="fault-reset", expect_host_faults=True) as vm:
        vm.wait_for(r"blimp: starting app", 180)
        qt = QTest.connect(vm.qtest_path)
        dev = PciBalloon(vm, qt)
        q = Qmp.connect(vm.qmp_path)
        full = q.execute("query-balloon")["actual"]
        q.execute("x-blimp-balloon-fault", queue="inflate", **{"delay-ms": 5000})
        q.execute("balloon", value=full - 64 * MiB)
        deadline = time.monotonic() + 30
        while q.execute("x-blimp-balloon-fault", queue="inflate")["queues"][0]["pending-kicks"] == 0:
            check(time.monotonic() < deadline, "the guest never notified the inflate queue")
            time.sleep(0.05)
        mark = len(vm.output)
        check(dev.reset() == 0, "device reset while an inflate buffer waits in the delay")
        i = q.execute("x-blimp-balloon-info")
        check(i["fault-cancelled-kicks"] >= 1 and i["fault-cancelled-buffers"] >= 1,
              f"the pending work was dropped ({i['fault-cancelled-kicks']} notifies, "
              f"{i['fault-cancelled-buffers']} buffers)")
        q.execute("x-blimp-balloon-fault", queue="inflate", **{"delay-ms": 0})
        vm.wait_for(r"device reset itself|reset by the host", 60, start=mark)
        wait_balloon(q, lambda a: a == full - 64 * MiB, 120, vm)
        check(vm.proc.poll() is None and i["stale-discards-refused"] == 0,
              "QEMU alive; the guest recovered and reached the target")
        qt.close()
        q.close()


@t.test
def test_sandbox(build):
    qemu = guest_build(build)
    print("[-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny]")
    extra = ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
             "-device", "virtio-balloon-pci,id=balloon0,page-states=on,coalesce-discard=on"]
    with BlimpVM(build, app="hello", machine="q35", memory="512M", extra=extra, limit=300,
                 qemu=qemu, name="sandbox") as vm:
        status = vm.wait_exit(240)
        check(status == 0, f"the guest booted and ran hello under the sandbox (status {status})")


if __name__ == "__main__":
    t.main()
