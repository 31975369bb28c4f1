#!/usr/bin/env python3
"""Device-level tests of the Blimp virtio-balloon extensions (host/qemu patches 0001-0003, 0005,
0006) against docs/spec-virtio-balloon-blimp.md, with no guest OS: QEMU runs with the qtest
accelerator and this script is the driver. It pokes virtio-mmio registers and guest RAM
through the qtest protocol (microvm, modern virtio-mmio), so every byte on the wire is
chosen here, including malformed ones.

Checks:
  * properties off: bits 56/57 not offered, no blimpq (the stock layout);
  * page states: register, QMP sweep discards exactly the UNUSED/VOLATILE pages (content zero,
    state DISCARDED_x), never STABLE / reserved (0x02) / invalid bytes / the array itself;
    timer-driven sweeps; EBUSY, unregister, reset;
  * page ages (patch 0012): PSTATE_AGES validation, x-blimp-balloon-working-set's buckets,
    limited sweeps that take each kind oldest first, to the page; page-ages=off answers EUNSUPP;
  * sharing hints (with share-roms=off: QEMU's own ROM blocks, patch 0014, are checked in
    integration.sharing): SEAL marks runs MADV_MERGEABLE (seen in /proc/PID/smaps), adjacent runs
    merge, UNSEAL unmarks, query/filter QMP, hint-max-runs limit; a filter change madvises
    only the difference (patch 0006: added/removed pages, smaps, against a model of the runs);
  * coalesce-discard: inflate and deflate buffers (unsorted, duplicates, more PFNs than one
    4096-PFN chunk, PFNs in MMIO / ROM / past RAM / far beyond) give one discard or one
    MADV_WILLNEED call per run of RAM, hostile PFNs are skipped and counted, deflated pages
    are usable again; with the property off the same buffers take the stock per-page path;
  * bad input: malformed headers, unknown types, unnegotiated features, ranges in MMIO or past
    RAM, arrays straddling RAM's end, oversized batches, buffers without a response part:
    each answered with the spec's status and counted, QEMU keeps running.

Exit 0 pass, 77 skip (patched QEMU not built), 1 fail. The driver (virtio-mmio over qtest) and the
constants are tests/lib/blimp_ext.py.
"""
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from blimp_ext import (AGES_GPA, ARRAY_GPA, BUF_GPA, DATA_PFN, F_PAGE_STATES, F_SHARE_HINTS,  # noqa: E402
                       F_STATS, F_VERSION_1, MEM_MB, PAGE, PS_DISCARDED_UNUSED,
                       PS_DISCARDED_VOLATILE, PS_RESERVED, PS_STABLE, PS_UNUSED, PS_VOLATILE,
                       REQ_REGISTER, REQ_SEAL, REQ_UNREGISTER, REQ_UNSEAL, S_EBUSY, S_EINVAL,
                       S_ENOSPC, S_EUNSUPP, S_ERANGE, S_OK, VIRTIO_MMIO_BASE, QtestVm as Vm, check,
                       fill, page_is, register_ages, register_array, seal, unseal, write_ages)
from blimp_vm import TestRunner, require_patched_qemu  # noqa: E402
from ksm import mergeable_bytes  # noqa: E402
from qmp import QmpError  # noqa: E402

t = TestRunner()


# ---------------------------------------------------------------------------------------------
@t.test
def test_props_off(build):
    qemu = require_patched_qemu(build)
    print("[props off] stock layout")
    vm = Vm(qemu, "")
    try:
        f = vm.dev.device_features()
        check(not f & (1 << F_PAGE_STATES) and not f & (1 << F_SHARE_HINTS),
              f"bits 56/57 not offered (features 0x{f:x})")
        check(vm.dev.qmax(3) == 0, "no queue after the stats queue")
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(not info["page-states"] and not info["coalesce-discard"], "info: all off")
        try:
            vm.qmp.execute("x-blimp-balloon-discard")
            check(False, "discard refused with page-states off")
        except QmpError as e:
            check(e.cls == "GenericError", f"discard refused with page-states off ({e.desc})")
    finally:
        vm.stop()


@t.test
def test_page_states(build):
    qemu = require_patched_qemu(build)
    print("[page states]")
    vm = Vm(qemu, "page-states=on,page-states-interval-ms=100")
    qt, dev = vm.qt, vm.dev
    try:
        feats = dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_PAGE_STATES))
        check(feats & (1 << F_PAGE_STATES), "bit 56 offered and negotiated")
        check(dev.blimpq == 3, "blimpq is queue 3")
        npages = MEM_MB * 256
        # states: whole array STABLE; test pages at DATA_PFN
        qt.memwrite(ARRAY_GPA, bytes(npages))
        fill(qt, DATA_PFN, 512, 0xAB)
        layout = ([PS_UNUSED] * 100 + [PS_VOLATILE] * 50 + [PS_STABLE] * 10 +
                  [PS_RESERVED] * 10 + [0x7F] * 2 + [PS_UNUSED] * 3 + [PS_STABLE] +
                  [PS_VOLATILE] * 4)
        qt.memwrite(ARRAY_GPA + DATA_PFN, bytes(layout))
        # the array's own pages are marked UNUSED: must never be discarded
        arr_pfn = ARRAY_GPA // PAGE
        qt.memwrite(ARRAY_GPA + arr_pfn, bytes([PS_UNUSED] * (npages // PAGE)))

        st, acc, rej, used = register_array(dev)
        check((st, acc, rej, used) == (S_OK, 1, 0, 16), "PSTATE_REGISTER ok")
        st, *_ = register_array(dev)
        check(st == S_EBUSY, "second register -> EBUSY")

        res = vm.qmp.execute("x-blimp-balloon-discard")
        print("   ", res)
        check(res["claimed"] == 157, f"claimed 157 pages ({res['claimed']})")
        check(res["discarded-unused"] == 103 and res["discarded-volatile"] == 54,
              "103 unused + 54 volatile discarded")
        check(res["runs"] == 3, f"3 runs ({res['runs']})")
        states = qt.memread(ARRAY_GPA + DATA_PFN, len(layout))
        want = bytes({PS_UNUSED: PS_DISCARDED_UNUSED, PS_VOLATILE: PS_DISCARDED_VOLATILE}
                     .get(v, v) for v in layout)
        check(states == want, "state bytes after the sweep are exactly as specified")
        ok = all(page_is(qt, DATA_PFN + i, 0 if layout[i] in (PS_UNUSED, PS_VOLATILE)
                         else 0xAB) for i in range(len(layout)))
        check(ok, "discarded pages read as zero, stable / reserved / invalid keep content")
        check(qt.memread(ARRAY_GPA + arr_pfn, npages // PAGE) ==
              bytes([PS_UNUSED] * (npages // PAGE)), "the array's own pages were not claimed")
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(info["pstate-invalid-bytes"] == 12, "12 invalid bytes counted (10 reserved 0x02)")
        check(info["pstate-registered"] and info["pstate-gpa"] == ARRAY_GPA, "info shows array")

        # guest reuses: DISCARDED -> STABLE, marks new pages UNUSED, the timer sweeps them
        qt.memwrite(ARRAY_GPA + DATA_PFN, bytes([PS_STABLE] * 100))
        fill(qt, DATA_PFN + 200, 20, 0xCD)
        qt.memwrite(ARRAY_GPA + DATA_PFN + 200, bytes([PS_UNUSED] * 20))
        qt.clock_step(250 * 1000 * 1000)
        st_after = qt.memread(ARRAY_GPA + DATA_PFN + 200, 20)
        check(st_after == bytes([PS_DISCARDED_UNUSED] * 20), "timer sweep discarded new pages")
        check(page_is(qt, DATA_PFN + 210, 0), "timer-discarded page reads zero")

        # unregister: no more sweeps touch the array
        st, *_ = dev.request(REQ_UNREGISTER, 0, b"")
        check(st == S_OK, "PSTATE_UNREGISTER ok")
        qt.memwrite(ARRAY_GPA + DATA_PFN, bytes([PS_UNUSED] * 4))
        res = vm.qmp.execute("x-blimp-balloon-discard")
        check(res["claimed"] == 0 and qt.memread(ARRAY_GPA + DATA_PFN, 4) ==
              bytes([PS_UNUSED] * 4), "after unregister nothing is claimed")

        # bad registrations
        st, *_ = register_array(dev, gpa=ARRAY_GPA + 1)
        check(st == S_EINVAL, "unaligned array -> EINVAL")
        st, *_ = register_array(dev, gpa=VIRTIO_MMIO_BASE)
        check(st == S_ERANGE, "array in MMIO -> ERANGE")
        st, *_ = register_array(dev, gpa=MEM_MB * 1024 * 1024 - PAGE)
        check(st == S_ERANGE, "array running past the end of RAM -> ERANGE")
        st, *_ = register_array(dev, gpa=1 << 50)
        check(st == S_ERANGE, "array far beyond RAM -> ERANGE")
        st, *_ = register_array(dev, npages=0)
        check(st == S_ERANGE, "zero-length array -> ERANGE")
        st, *_ = register_array(dev, npages=(1 << 64) - 1)
        check(st == S_ERANGE, "huge length -> ERANGE")
        st, *_ = register_array(dev, base=(1 << 63))
        check(st == S_ERANGE, "huge base pfn -> ERANGE")
        bad_input_checks(vm, hints=False)

        # array registered again, then device reset unregisters it
        st, *_ = register_array(dev)
        check(st == S_OK, "register again")
        dev.w(0x70, 0)
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(not info["pstate-registered"], "device reset unregisters the array")
        check(vm.alive(), "QEMU alive")
        log = vm.logtext()
        check("blimp" in log, "rejections were logged (rate limited)")
    finally:
        vm.stop()


@t.test
def test_page_ages(build):
    qemu = require_patched_qemu(build)
    print("[page ages]")
    vm = Vm(qemu, "page-states=on")
    qt, dev = vm.qt, vm.dev
    try:
        dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_PAGE_STATES))
        npages = MEM_MB * 256
        qt.memwrite(ARRAY_GPA, bytes(npages))
        st, *_ = register_ages(dev)
        check(st == S_EINVAL, "PSTATE_AGES before PSTATE_REGISTER -> EINVAL")
        check(register_array(dev)[0] == S_OK, "array registered")
        # At DATA_PFN: 5 UNUSED idle 50 s, 5 UNUSED idle 1 s, 10 VOLATILE idle 100 s,
        # 10 VOLATILE idle 5 s, 9 VOLATILE idle 0 s and one stamped in the future (age 0).
        clock = 1000
        ages = [50] * 5 + [1] * 5 + [100] * 10 + [5] * 10 + [0] * 10
        layout = [PS_UNUSED] * 10 + [PS_VOLATILE] * 30
        stamps = {DATA_PFN + i: clock - a for i, a in enumerate(ages)}
        stamps[DATA_PFN + 39] = clock + 4000
        write_ages(qt, clock, stamps)
        fill(qt, DATA_PFN, len(layout), 0xAB)
        qt.memwrite(ARRAY_GPA + DATA_PFN, bytes(layout))

        for kw, want, what in ((dict(npages=npages - 1), S_EINVAL, "npages != the array's"),
                               (dict(gpa=AGES_GPA + 8), S_EINVAL, "unaligned block"),
                               (dict(reserved=1), S_EINVAL, "reserved field set"),
                               (dict(gpa=VIRTIO_MMIO_BASE), S_ERANGE, "block in MMIO"),
                               (dict(gpa=MEM_MB * 1024 * 1024 - PAGE), S_ERANGE,
                                "block running past the end of RAM"),
                               (dict(gpa=(1 << 64) - PAGE), S_ERANGE, "block wrapping")):
            st, acc, rej, _ = register_ages(dev, **kw)
            check((st, acc, rej) == (want, 0, 1), f"{what} -> status {want} ({st})")
        check(not vm.qmp.execute("x-blimp-balloon-info")["pstate-ages"], "nothing registered")
        check(register_ages(dev)[0] == S_OK, "PSTATE_AGES ok")
        check(vm.qmp.execute("x-blimp-balloon-info")["pstate-ages"], "info: ages registered")

        ws = vm.qmp.execute("x-blimp-balloon-working-set")
        buckets = {b["min-age-s"]: (b["unused"], b["volatile"]) for b in ws["buckets"]}
        print("   ", ws["clock-s"], buckets)
        check(ws["ages"] and ws["clock-s"] == clock, f"clock read from the block ({ws})")
        check(buckets == {32: (5, 0), 1: (5, 0), 64: (0, 10), 4: (0, 10), 0: (0, 10)},
              f"buckets by log2 of the age, the future stamp as age 0 ({buckets})")
        check(ws["stable"] == npages - 40 and ws["discarded"] == 0, f"the rest stable ({ws})")

        def states():
            return list(qt.memread(ARRAY_GPA + DATA_PFN, len(layout)))

        res = vm.qmp.execute("x-blimp-balloon-discard", {"max-pages": 3})
        got = states()
        check(res["claimed"] == 3 and got[:3] == [PS_DISCARDED_UNUSED] * 3 and
              got[3:] == layout[3:], f"3 pages: the oldest unused ones ({res}, {got[:12]})")
        # 2 + 5 unused left, then volatile: the 10 idle 100 s, then 2 of those idle 5 s.
        res = vm.qmp.execute("x-blimp-balloon-discard", {"max-pages": 19})
        got = states()
        want = ([PS_DISCARDED_UNUSED] * 10 + [PS_DISCARDED_VOLATILE] * 12 +
                [PS_VOLATILE] * 18)
        check(res["discarded-unused"] == 7 and res["discarded-volatile"] == 12 and got == want,
              f"unused first, then volatile oldest first ({res}, {got})")
        check(all(page_is(qt, DATA_PFN + i, 0) for i in range(22)) and
              all(page_is(qt, DATA_PFN + i, 0xAB) for i in range(22, 40)),
              "discarded pages read zero, the younger ones keep their content")
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(info["pstate-aged-passes"] > 0, f"aged passes counted ({info})")
        # Without a limit: everything, one pass, ages ignored.
        res = vm.qmp.execute("x-blimp-balloon-discard")
        check(res["discarded-volatile"] == 18, f"an unlimited sweep takes the rest ({res})")
        st, *_ = dev.request(REQ_UNREGISTER, 0, b"")
        check(not vm.qmp.execute("x-blimp-balloon-info")["pstate-ages"],
              "unregistering the array forgets the ages")
        check(vm.alive(), "QEMU alive")
    finally:
        vm.stop()
    vm = Vm(qemu, "page-states=on,page-ages=off")
    try:
        vm.dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_PAGE_STATES))
        vm.qt.memwrite(ARRAY_GPA, bytes(MEM_MB * 256))
        check(register_array(vm.dev)[0] == S_OK, "array registered (page-ages=off)")
        check(register_ages(vm.dev)[0] == S_EUNSUPP, "page-ages=off: PSTATE_AGES -> EUNSUPP")
    finally:
        vm.stop()


def pfn_buf(pfns):
    return struct.pack(f"<{len(pfns)}I", *pfns)


def send_pfns(vm, q, pfns):
    vm.qt.memwrite(BUF_GPA, pfn_buf(pfns))
    used = vm.dev.submit(q, [(BUF_GPA, 4 * len(pfns))], [])
    check(used == 0, f"queue {q} buffer of {len(pfns)} PFNs consumed (used {used})")


# PFNs that are not guest RAM on a 256 MiB microvm: past RAM's end, virtio-mmio, the IOAPIC,
# 16 TiB up. (microvm's firmware below 4 GiB is writable RAM, pc.bios, so not among them.)
HOSTILE_PFNS = [MEM_MB * 256, MEM_MB * 256 + 1, VIRTIO_MMIO_BASE // PAGE, 0xFEC00, 0xFFFFFFFF]


@t.test
def test_coalesce(build):
    qemu = require_patched_qemu(build)
    for coalesce in (True, False):
        print(f"[coalesce-discard={'on' if coalesce else 'off'}] inflate / deflate runs")
        vm = Vm(qemu, "coalesce-discard=on" if coalesce else "")
        qt, dev = vm.qt, vm.dev
        try:
            dev.init(1 << F_VERSION_1)
            base = vm.qmp.execute("x-blimp-balloon-info")
            check(base["coalesce-discard"] == coalesce, "info shows the property")
            # inflate 64 pages filled with 0xAB, sent in reverse order
            fill(qt, DATA_PFN, 64, 0xAB)
            send_pfns(vm, 0, list(range(DATA_PFN + 63, DATA_PFN - 1, -1)))
            check(all(page_is(qt, DATA_PFN + i, 0) for i in range(64)),
                  "inflated pages read as zero")
            info = vm.qmp.execute("x-blimp-balloon-info")
            check(info["discard-calls"] - base["discard-calls"] == (1 if coalesce else 64),
                  f"inflate: discard calls {info['discard-calls'] - base['discard-calls']}")

            # deflate the same pages shuffled, with duplicates and hostile PFNs mixed in
            good = list(range(DATA_PFN, DATA_PFN + 64))
            order = good[32:] + good[:32][::-1] + good[10:14] + HOSTILE_PFNS + good[:2]
            before = info
            send_pfns(vm, 1, order)
            info = vm.qmp.execute("x-blimp-balloon-info")
            d = {k: info[k] - before[k] for k in ("deflate-pfns", "deflate-bad-pfns",
                                                  "willneed-calls", "willneed-pages")}
            print("   ", d)
            check(d["deflate-pfns"] == len(order), "deflate-pfns counts every PFN received")
            check(d["deflate-bad-pfns"] == len(HOSTILE_PFNS),
                  "PFNs outside guest RAM skipped and counted")
            if coalesce:
                check(d["willneed-calls"] == 1 and d["willneed-pages"] == 64,
                      "one MADV_WILLNEED for the 64-page run (duplicates collapsed)")
            else:
                n = len(order) - len(HOSTILE_PFNS)
                check(d["willneed-calls"] == n and d["willneed-pages"] == n,
                      "stock path: one MADV_WILLNEED per RAM PFN, duplicates included")
            fill(qt, DATA_PFN, 64, 0x5A)
            check(all(page_is(qt, DATA_PFN + i, 0x5A) for i in range(64)),
                  "deflated pages are usable again")

            # one buffer of 5000 PFNs (two 4096-PFN chunks), two runs split by a hole
            pfns = list(range(0x3000, 0x3000 + 2500)) + list(range(0x4000, 0x4000 + 2500))
            before = info
            send_pfns(vm, 1, pfns[::-1])
            info = vm.qmp.execute("x-blimp-balloon-info")
            calls = info["willneed-calls"] - before["willneed-calls"]
            pages = info["willneed-pages"] - before["willneed-pages"]
            if coalesce:
                # reversed: chunk 1 = 0x4000 + 2500 .. and 0x3000 + 904 .., chunk 2 = the rest
                check(calls == 3 and pages == 5000, f"5000 PFNs: {calls} calls, {pages} pages")
            else:
                check(calls == 5000 and pages == 5000, f"5000 PFNs: {calls} calls")

            # a run that starts in RAM and runs off its end, and a buffer not a multiple of 4
            before = info
            send_pfns(vm, 1, list(range(MEM_MB * 256 - 8, MEM_MB * 256 + 8)))
            qt.memwrite(BUF_GPA, pfn_buf([DATA_PFN]) + b"\x01\x02")
            check(dev.submit(1, [(BUF_GPA, 6)], []) == 0, "6-byte buffer consumed")
            info = vm.qmp.execute("x-blimp-balloon-info")
            check(info["willneed-pages"] - before["willneed-pages"] == 9 and
                  info["deflate-bad-pfns"] - before["deflate-bad-pfns"] == 8,
                  "run off RAM's end: the RAM part hinted, the rest skipped")
            check(info["discard-pages"] == base["discard-pages"] + 64,
                  "deflating never discards")
            check(vm.alive(), "QEMU alive")
        finally:
            vm.stop()


def bad_input_checks(vm, hints):
    dev = vm.dev
    before = vm.qmp.execute("x-blimp-balloon-info")
    st, *_ = dev.request(REQ_REGISTER, 1, struct.pack("<QQQ", ARRAY_GPA, 1, 0), flags=1)
    check(st == S_EINVAL, "nonzero flags -> EINVAL")
    st, *_ = dev.request(REQ_REGISTER, 1, struct.pack("<QQQ", ARRAY_GPA, 1, 0), reserved=7)
    check(st == S_EINVAL, "nonzero reserved -> EINVAL")
    st, *_ = dev.request(REQ_REGISTER, 2, struct.pack("<QQQ", ARRAY_GPA, 1, 0))
    check(st == S_EINVAL, "register with count 2 -> EINVAL")
    st, *_ = dev.request(REQ_REGISTER, 1, struct.pack("<QQ", ARRAY_GPA, 1))
    check(st == S_EINVAL, "short register payload -> EINVAL")
    st, *_ = dev.request(99, 0, b"")
    check(st == S_EUNSUPP, "unknown type -> EUNSUPP")
    st, *_ = dev.request(0, 0, b"", raw=b"\x01\x00\x00")
    check(st == S_EINVAL, "3-byte buffer -> EINVAL")
    st, *_ = dev.request(REQ_SEAL, 5000, b"\0" * 24 * 5000)
    check(st == S_EINVAL, "5000-entry batch (limit 4096) -> EINVAL")
    st, *_ = dev.request(REQ_SEAL, 3, b"\0" * 24 * 2)
    check(st in (S_EINVAL, S_EUNSUPP), "count larger than payload -> rejected")
    if not hints:
        st, *_ = dev.request(REQ_SEAL, 1, struct.pack("<QIIQ", DATA_PFN, 1, 0, 1))
        check(st == S_EUNSUPP, "SEAL without share-hints negotiated -> EUNSUPP")
    _, _, _, used = dev.request(REQ_UNREGISTER if not hints else REQ_UNSEAL,
                                0 if not hints else 1,
                                b"" if not hints else struct.pack("<QII", DATA_PFN, 1, 0),
                                resp_len=0)
    check(used == 0, "buffer without a response part is consumed with used length 0")
    after = vm.qmp.execute("x-blimp-balloon-info")
    check(after["req-einval"] > before["req-einval"] and after["no-response-room"] >
          before["no-response-room"], "bad requests counted")
    check(vm.alive(), "QEMU survived the bad input")


@t.test
def test_share_hints(build):
    qemu = require_patched_qemu(build)
    print("[share hints]")
    vm = Vm(qemu, "share-hints=on,share-roms=off", extra=["-machine", "mem-merge=off"])
    dev = vm.dev
    try:
        feats = dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_SHARE_HINTS) |
                         (1 << F_PAGE_STATES))
        check(feats & (1 << F_SHARE_HINTS) and not feats & (1 << F_PAGE_STATES),
              "bit 57 offered and negotiated, 56 not offered")
        check(dev.blimpq == 3, "blimpq is queue 3")
        check(mergeable_bytes(vm.pid()) == 0, "nothing mergeable before hints (mem-merge=off)")
        # Unhinted pages between hints are marked with them only when none is zero-filled
        # (patch 0015; test_zero_gap_not_bridged): give the gaps below some data.
        fill(vm.qt, DATA_PFN, 400, 0x5A)
        h1, h2, h3, hz = 0x1111222233334444, 0xFEDCBA9876543210, 0x5, 0xC0FFEE
        st, acc, rej, _ = seal(dev, [(DATA_PFN, 1, 0, h1), (DATA_PFN + 1, 1, 0, h2),
                                     (DATA_PFN + 2, 1, 0, h1), (DATA_PFN + 100, 64, 1, hz),
                                     (DATA_PFN + 10, 1, 0, h3)])
        check((st, acc, rej) == (S_OK, 5, 0), "SEAL of 5 entries accepted")
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(info["hints"] == 5 and info["hint-pages"] == 68, "5 hints, 68 pages recorded")
        check(info["hint-marked-runs"] == 2 and info["hint-marked-pages"] == 75,
              f"adjacent and near runs merged: 2 runs, 75 pages "
              f"({info['hint-marked-runs']}, {info['hint-marked-pages']})")
        check(mergeable_bytes(vm.pid()) == 75 * PAGE, "smaps: exactly 75 pages MADV_MERGEABLE")
        q = vm.qmp.execute("x-blimp-balloon-query-hints")
        check(q["total"] == 5 and [h["pfn"] for h in q["hints"]] ==
              [DATA_PFN, DATA_PFN + 1, DATA_PFN + 2, DATA_PFN + 10, DATA_PFN + 100],
              "query-hints lists the hints in PFN order")
        check(q["hints"][1]["hash"] == "fedcba9876543210" and q["hints"][4]["zero"] and
              all(h["marked"] for h in q["hints"]), "hashes as hex strings, zero flag, marked")
        q = vm.qmp.execute("x-blimp-balloon-query-hints", start=3, max=1)
        check(len(q["hints"]) == 1 and q["hints"][0]["pfn"] == DATA_PFN + 10, "paging works")

        r = vm.qmp.execute("x-blimp-balloon-hint-filter", hashes=[f"{h1:016x}"])
        check(r == {"marked-runs": 1, "marked-pages": 3, "added-pages": 0, "removed-pages": 72},
              f"filter to h1: 1 run, 3 pages, 72 unmarked, the 3 kept untouched ({r})")
        check(mergeable_bytes(vm.pid()) == 3 * PAGE, "smaps: 3 pages mergeable after filter")
        q = vm.qmp.execute("x-blimp-balloon-query-hints")
        check([h["marked"] for h in q["hints"]] == [True, True, True, False, False],
              "only h1 hints (and the page between them) marked")
        r = vm.qmp.execute("x-blimp-balloon-hint-filter")
        check(r == {"marked-runs": 2, "marked-pages": 75, "added-pages": 72, "removed-pages": 0},
              f"filter cleared: all marked again, only the 72 missing pages madvised ({r})")
        try:
            vm.qmp.execute("x-blimp-balloon-hint-filter", hashes=["xyz"])
            check(False, "bad hash refused")
        except QmpError as e:
            check(e.cls == "GenericError", f"bad hash refused ({e.desc})")

        st, acc, rej, _ = unseal(dev, [(DATA_PFN + 100, 64)])
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(st == S_OK and info["hints"] == 4 and info["hint-marked-pages"] == 11,
              "UNSEAL drops the hint and unmarks its run")
        check(mergeable_bytes(vm.pid()) == 11 * PAGE, "smaps: 11 pages mergeable")

        # bad entries next to good ones
        st, acc, rej, _ = seal(dev, [(VIRTIO_MMIO_BASE // PAGE, 1, 0, 1),
                                     (DATA_PFN + 300, 1, 0, 2),
                                     (MEM_MB * 256 - 1, 2, 0, 3),
                                     (DATA_PFN + 301, 0, 0, 4),
                                     (DATA_PFN + 302, 1, 0x80, 5),
                                     (1 << 63, 1, 0, 6),
                                     ((1 << 64) - 1, 0xFFFFFFFF, 0, 7)])
        check((st, acc, rej) == (S_ERANGE, 1, 6),
              f"bad SEAL entries rejected one by one, the good one applied ({st}, {acc}, {rej})")
        st, *_ = register_array(dev)
        check(st == S_EUNSUPP, "PSTATE_REGISTER without page-states -> EUNSUPP")
        bad_input_checks(vm, hints=True)

        # order independence and overlaps
        base = DATA_PFN + 500
        n0 = vm.qmp.execute("x-blimp-balloon-info")["hints"]
        st, acc, rej, _ = seal(dev, [(base + i, 1, 0, 100 + i) for i in reversed(range(20))])
        check((st, acc) == (S_OK, 20), "descending SEAL batch accepted")
        st, acc, rej, _ = seal(dev, [(base + 5, 3, 1, 0)])
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(st == S_OK and info["hints"] == n0 + 18, "overlapping SEAL replaces 3 hints by 1")
        hs = vm.qmp.execute("x-blimp-balloon-query-hints")["hints"]
        ok = all(hs[i]["pfn"] + hs[i]["npages"] <= hs[i + 1]["pfn"] for i in range(len(hs) - 1))
        check(ok, "recorded hints stay sorted and disjoint")
        st, acc, rej, _ = unseal(dev, [(base + 5, 10), (base, 10)])
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(st == S_OK and acc == 2 and info["hints"] == n0 + 5,
              "overlapping UNSEAL ranges drop every hint they cover")
        t0 = time.monotonic()
        for rep in range(8):
            first = 0x4000 + (7 - rep) * 4096          # batches arrive high to low, too
            entries = [(first + i, 1, 0, i) for i in reversed(range(4096))]
            st, acc, *_ = seal(dev, entries)
            assert st == S_OK and acc == 4096, (st, acc)
        dt = time.monotonic() - t0
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(info["hints"] == n0 + 5 + 8 * 4096 and dt < 60,
              f"8 x 4096 reversed hints recorded in {dt:.1f}s (incl. qtest transfer)")
        dev.w(0x70, 0)
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(info["hints"] == 0 and info["hint-marked-pages"] == 0 and
              mergeable_bytes(vm.pid()) == 0, "device reset drops hints and unmarks")
    finally:
        vm.stop()

    print("[share hints limits]")
    vm = Vm(qemu, "share-hints=on,share-roms=off,hint-max-runs=4,hint-max-entries=8,hint-merge-gap=0",
            extra=["-machine", "mem-merge=off"])
    dev = vm.dev
    try:
        dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_SHARE_HINTS))
        st, acc, rej, _ = seal(dev, [(DATA_PFN + 2 * i, 1, 0, i) for i in range(10)])
        check((st, acc, rej) == (S_ENOSPC, 8, 2), f"hint-max-entries: 8 accepted, 2 ENOSPC "
              f"({st}, {acc}, {rej})")
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(info["hint-marked-runs"] == 4 and info["hint-limit-hits"] == 4,
              "hint-max-runs: 4 runs marked, 4 limit hits")
        check(mergeable_bytes(vm.pid()) == 4 * PAGE, "smaps: 4 pages mergeable")
        check("hint-max-runs (4) reached" in vm.logtext(), "limit stated clearly in the log")
        check(vm.alive(), "QEMU alive")
    finally:
        vm.stop()


@t.test
def test_zero_gap_not_bridged(build):
    """Patch 0015: a gap between two hinted runs is marked with them only when none of its pages
    is zero-filled, both when the hints arrive and when a filter change rebuilds the runs."""
    qemu = require_patched_qemu(build)
    print("[share hints: zero-filled gaps stay unmarked]")
    vm = Vm(qemu, "share-hints=on,share-roms=off", extra=["-machine", "mem-merge=off"])
    dev = vm.dev
    try:
        dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_SHARE_HINTS))
        d = DATA_PFN
        fill(vm.qt, d, 40, 0x5A)
        fill(vm.qt, d + 23, 1, 0)  # one zero page in the second gap
        # three hinted runs, 4-page gaps: d+10..d+13 all data, d+20..d+23 with a zero page
        st, acc, *_ = seal(dev, [(d + 5, 5, 0, 0xA), (d + 14, 6, 0, 0xB), (d + 24, 6, 0, 0xC)])
        check((st, acc) == (S_OK, 3), "3 hints sealed")
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(info["hint-marked-runs"] == 2 and info["hint-marked-pages"] == 15 + 6,
              f"the data gap bridged, the zero one not: 2 runs, 21 pages "
              f"({info['hint-marked-runs']}, {info['hint-marked-pages']})")
        check(mergeable_bytes(vm.pid()) == 21 * PAGE, "smaps: 21 pages MADV_MERGEABLE")
        set_filter(vm, [])
        r = set_filter(vm, [0xA, 0xB, 0xC])
        check(r["marked-runs"] == 2 and r["marked-pages"] == 21,
              f"a filter change rebuilds the same runs ({r})")
        # the zero page filled since: a rebuild bridges the gap now
        fill(vm.qt, d + 23, 1, 0x5A)
        set_filter(vm, [])
        r = set_filter(vm, [0xA, 0xB, 0xC])
        check(r["marked-runs"] == 1 and r["marked-pages"] == 25,
              f"gap filled with data: one run of 25 pages ({r})")
        check(mergeable_bytes(vm.pid()) == 25 * PAGE, "smaps: 25 pages MADV_MERGEABLE")
    finally:
        vm.stop()


def model_runs(hints, eligible, gap=16, max_runs=16384):
    """The device's wanted runs (spec 6.2/6.3): eligible hints in PFN order, joined when at most
    gap pages apart, at most max_runs runs. Returns (set of pages, number of runs, skipped)."""
    runs, skipped = [], 0
    for pfn, n, h in sorted(hints):
        if h not in eligible:
            continue
        if runs and pfn - runs[-1][1] <= gap:
            runs[-1][1] = pfn + n
        elif len(runs) >= max_runs:
            skipped += 1
        else:
            runs.append([pfn, pfn + n])
    return {p for a, b in runs for p in range(a, b)}, len(runs), skipped


def set_filter(vm, hashes):
    return vm.qmp.execute("x-blimp-balloon-hint-filter", hashes=[f"{h:016x}" for h in hashes])


@t.test
def test_filter_incremental(build):
    """Patch 0006: a filter change madvises only the difference (spec section 6.3)."""
    qemu = require_patched_qemu(build)
    print("[share hints: incremental filter changes]")
    vm = Vm(qemu, "share-hints=on,share-roms=off", extra=["-machine", "mem-merge=off"])
    dev = vm.dev
    try:
        dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_SHARE_HINTS))
        ha, hb, hc, hd = 0xA, 0xB, 0xC, 0xD
        d = DATA_PFN
        fill(vm.qt, d, 7000, 0x5A)  # no zero-filled gap (patch 0015): the model bridges all
        hints = ([(d + i, 1, ha) for i in range(10)] + [(d + 100 + i, 1, hb) for i in range(10)] +
                 [(d + 200 + i, 1, hc) for i in range(10)] + [(d + 115, 1, hd)])
        st, acc, *_ = seal(dev, [(p, n, 0, h) for p, n, h in reversed(hints)])
        check((st, acc) == (S_OK, len(hints)), "31 hints sealed (descending)")
        steps = [([], 0, 36, 0, 0, "empty filter: all 36 marked pages (A, B+gap+D, C) unmarked"),
                 ([ha], 10, 0, 10, 1, "add A: A marked"),
                 ([ha, hb], 10, 0, 20, 2, "add B: only B madvised, A untouched"),
                 ([ha, hb, hd], 6, 0, 26, 2, "add D (5 pages past B): the gap and D joined to B"),
                 ([hb, hd, hc], 10, 10, 26, 2, "swap A for C: A unmarked, C marked, B+D untouched"),
                 ([hc], 0, 16, 10, 1, "drop B and D: their 16 pages unmarked, C untouched"),
                 ([hc], 0, 0, 10, 1, "same filter again: nothing madvised")]
        for hashes, add, rem, pages, runs, what in steps:
            r = set_filter(vm, hashes)
            check(r == {"marked-runs": runs, "marked-pages": pages, "added-pages": add,
                        "removed-pages": rem}, f"{what} ({r})")
            check(mergeable_bytes(vm.pid()) == pages * PAGE, f"  smaps: {pages} pages mergeable")
        info = vm.qmp.execute("x-blimp-balloon-info")
        check(info["hint-filter-updates"] == len(steps) and
              info["hint-remark-added-pages"] == 36 and info["hint-remark-removed-pages"] == 62,
              "info counts filter updates and the pages they madvised")

        # random hints (sealed in random order, some unsealed) and random filter changes,
        # against the model; a filter change must converge to exactly the model's runs
        import random
        rnd = random.Random(1234)
        st, *_ = unseal(dev, [(d, 300)])
        set_filter(vm, [])
        base = d + 1000
        pool = [rnd.randrange(1 << 64) for _ in range(6)]
        hints, pfn = [], base
        for _ in range(400):
            pfn += rnd.choice([0, 0, 1, 3, 10, 17, 40])
            n = rnd.choice([1, 1, 2, 5])
            hints.append((pfn, n, rnd.choice(pool)))
            pfn += n
        order = hints[:]
        rnd.shuffle(order)
        for i in range(0, len(order), 100):
            st, acc, *_ = seal(dev, [(p, n, 0, h) for p, n, h in order[i:i + 100]])
            assert st == S_OK and acc == len(order[i:i + 100]), (st, acc)
        gone = hints[50:60]
        unseal(dev, [(p, n) for p, n, _ in gone])
        hints = [h for h in hints if h not in gone]
        old = set()
        bad = 0
        for step in range(20):
            elig = set(rnd.sample(pool, rnd.randrange(len(pool) + 1)))
            r = set_filter(vm, sorted(elig))
            want, nruns, _ = model_runs(hints, elig)
            exp = {"marked-runs": nruns, "marked-pages": len(want),
                   "added-pages": len(want - old), "removed-pages": len(old - want)}
            if r != exp or mergeable_bytes(vm.pid()) != len(want) * PAGE:
                bad += 1
                print(f"    step {step}: {r} != {exp}")
            old = want
        check(bad == 0, "20 random filter changes: marked runs, added and removed pages as the "
              "model, smaps agrees")
        q = vm.qmp.execute("x-blimp-balloon-query-hints")["hints"]
        check(all(h["marked"] == (h["pfn"] in old) for h in q), "query-hints: marked flags agree")

        # hostile filters: refused whole, the marking is left as it was
        before = vm.qmp.execute("x-blimp-balloon-info")
        for badh in ["", "0x", "1" * 17, "-1", "12 34", "0x-5"]:
            try:
                vm.qmp.execute("x-blimp-balloon-hint-filter", hashes=["a", badh])
                check(False, f"bad hash {badh!r} refused")
            except QmpError:
                pass
        after = vm.qmp.execute("x-blimp-balloon-info")
        check(after["hint-marked-pages"] == before["hint-marked-pages"] and
              after["hint-filter-updates"] == before["hint-filter-updates"],
              "bad hashes refused, marking unchanged")
        big = [f"{rnd.randrange(1 << 64):x}" for _ in range(100000)] + [f"{h:x}" for h in pool]
        r = vm.qmp.execute("x-blimp-balloon-hint-filter", hashes=big, timeout=60)
        want, nruns, _ = model_runs(hints, set(pool))
        check(r["marked-pages"] == len(want) and r["removed-pages"] == 0,
              f"100006-hash filter accepted ({r})")
        check(vm.alive(), "QEMU alive")
    finally:
        vm.stop()

    print("[share hints: incremental filter changes at hint-max-runs]")
    vm = Vm(qemu, "share-hints=on,share-roms=off,hint-max-runs=3,hint-merge-gap=0",
            extra=["-machine", "mem-merge=off"])
    dev = vm.dev
    try:
        dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_SHARE_HINTS))
        hints = [(DATA_PFN + 2 * i, 1, i % 3) for i in range(9)]      # hashes 0 1 2 0 1 2 ...
        set_filter(vm, [])
        seal(dev, [(p, n, 0, h) for p, n, h in hints])
        for elig in ([0], [0, 1], [1], [0, 1, 2], [2]):
            r = set_filter(vm, elig)
            want, nruns, skipped = model_runs(hints, set(elig), gap=0, max_runs=3)
            check(r["marked-runs"] == nruns <= 3 and r["marked-pages"] == len(want) and
                  mergeable_bytes(vm.pid()) == len(want) * PAGE,
                  f"filter {elig}: {nruns} runs (limit 3, {skipped} hints over it) ({r})")
        check("hint-max-runs (3) reached" in vm.logtext(), "limit stated in the log")
        check(vm.alive(), "QEMU alive")
    finally:
        vm.stop()


if __name__ == "__main__":
    t.main()
