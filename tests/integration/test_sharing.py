#!/usr/bin/env python3
"""Enlightened page sharing end to end (docs/sharing.md): blimp guests running `dataset` on the
patched QEMU (q35, -machine mem-merge=off, virtio-balloon-pci share-hints=on), the host's KSM
merging only what the guests hinted.

  same seed:       KSM shares the data set across three VMs; every guest's data verifies; a guest
                   that unseals and writes one page gets its own copy, the others keep theirs
  different seeds: nothing is shared beyond the kernel image and zero pages; sharing=off hints
                   nothing and has nothing merged; sharing=vm hints only within-VM twins

KSM is system-wide: the settings changed are restored on exit (also on failure), and a lock file
keeps two KSM experiments from running at once. Skips (77) without a writable KSM or without the
patched QEMU."""
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench", "sharing"))
import ksm_map  # noqa: E402
from blimp_vm import BlimpVM, Skip, TestRunner, check, require_patched_qemu  # noqa: E402
from dataset import (DATA_PAGES, NONZERO_PAGES, PAGE, ZERO_PAGES, data_set_args,  # noqa: E402
                     last_verify as last_verify_in)
from ksm import (KsmSession, KsmUnavailable, mergeable_bytes, mergeable_vmas,  # noqa: E402
                 merging_pages, other_mergeable)
from qmp import Qmp  # noqa: E402

t = TestRunner()
KSM_FAST = dict(pages_to_scan=4000, sleep_millisecs=10)


def system_xxh3():
    import ctypes
    try:
        fn = ctypes.CDLL("libxxhash.so.0").XXH3_64bits
    except OSError:
        return None
    fn.restype = ctypes.c_uint64
    fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return fn


def sharing_vm(build, name, args, memory="256M"):
    return BlimpVM(build, app="dataset", args=args, machine="q35", memory=memory, qmp=True,
                   qemu=require_patched_qemu(build), name=name, limit=600,
                   extra=["-machine", "mem-merge=off",
                          "-device", "virtio-balloon-pci,id=balloon0,share-hints=on"])


def ksm_session():
    try:
        return KsmSession(**KSM_FAST)
    except KsmUnavailable as e:  # pragma: no cover
        raise Skip(str(e))


def enter_ksm():
    s = ksm_session()
    try:
        return s.__enter__()
    except KsmUnavailable as e:
        raise Skip(str(e))


def merging(vm):
    """The VM's KSM-merged pages of guest RAM (256 MiB: every sharing_vm here). QEMU's own
    read-only RAM blocks, which the device marks whatever the guest hints (share-roms, host/qemu
    patch 0014), merge alike in every VM and are left out."""
    pid = vm.pid
    beside_ram = sum(len(hs) for _, hs in ksm_map.outside_ram(pid, 256 << 20, mergeable_vmas(pid)))
    return merging_pages(pid) - beside_ram


def wait_merging(vms, predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        m = [merging(v) for v in vms]
        if predicate(m):
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: ksm_merging_pages {m} after {timeout}s")
        time.sleep(0.5)


def query_hints(q):
    hints, start = [], 0
    while True:
        r = q.execute("x-blimp-balloon-query-hints", start=start, max=65536)
        hints += r["hints"]
        start += len(r["hints"])
        if start >= r["total"] or not r["hints"]:
            return hints


def last_verify(vm):
    return last_verify_in(vm.output)


def wait_verified_after(vm, rounds_before, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        v = last_verify(vm)
        if v and v[0] > rounds_before:
            return v
        check(time.monotonic() < deadline, f"{vm.name}: no new verify round\n{vm.output}")
        time.sleep(0.5)


def candidate_runs(vm):
    """The guest's WRITABLE merge-candidate runs as [(first_pfn, end_pfn)], from its boot log."""
    return [(int(a, 16) >> 12, int(b, 16) >> 12) for a, b in
            re.findall(r"sharing: candidate run (0x[0-9a-f]+|0)-(0x[0-9a-f]+)", vm.output)]


@t.test
def test_share_roms_marks_qemu_read_only_blocks_and_nothing_else(build):
    """host/qemu patch 0014: with share-hints=on (mem-merge=off) QEMU marks its own read-only RAM
    blocks (the BIOS, the fw_cfg ACPI blobs) mergeable, which blind KSM merges and no guest hint
    can reach; share-roms=off leaves them. With the guest hinting nothing (sharing=off) those
    blocks are exactly what is mergeable."""
    qemu = require_patched_qemu(build)
    seen = {}
    for props in ("", ",share-roms=off"):
        with BlimpVM(build, app="memhog", args=["steps=wait:60s", "sharing=off"], machine="q35",
                     memory="256M", qmp=True, qemu=qemu, limit=120,
                     extra=["-machine", "mem-merge=off",
                            "-device", f"virtio-balloon-pci,id=balloon0,share-hints=on{props}"]) as vm:
            vm.wait_for(r"blimp: starting app", 60)
            info = Qmp.connect(vm.qmp_path).execute("x-blimp-balloon-info")
            seen[props] = (info["hint-rom-pages"], mergeable_bytes(vm.pid), info["hints"])
    (rom, mg, hints), (rom_off, mg_off, _) = seen[""], seen[",share-roms=off"]
    print(f"  share-roms on: {rom} ROM pages marked, {mg // PAGE} pages mergeable; off: {rom_off}, "
          f"{mg_off // PAGE}", flush=True)
    check(hints == 0, f"sharing=off hinted {hints} runs")
    # qboot, pc.rom, the table-loader, ACPI tables and RSDP, over their whole reservations.
    check(16 <= rom <= 1024, f"share-roms marked {rom} pages")
    check(mg == rom * PAGE, f"mergeable {mg} bytes, ROM pages marked {rom}: something else is marked")
    check(rom_off == 0 and mg_off == 0, f"share-roms=off still marked {rom_off} pages ({mg_off} bytes)")


@t.test
def test_same_seed_shares_and_write_gets_own_copy(build):
    ksm = enter_ksm()
    try:
        common = ["seed=42", *data_set_args("2s")]
        vms = [sharing_vm(build, "vm0", common + ["write_after=30s", "write_page=5"]),
               sharing_vm(build, "vm1", common), sharing_vm(build, "vm2", common)]
        try:
            for v in vms:
                v.wait_for(r"dataset: ready", 120)
            qs = [Qmp.connect(v.qmp_path) for v in vms]
            # The device recorded and marked every hint; the three VMs hinted the same hashes.
            sets = []
            for v, q in zip(vms, qs):
                info = q.execute("x-blimp-balloon-info")
                check(info["share-hints"] and info["hint-pages"] >= DATA_PAGES,
                      f"{v.name}: hints {info}")
                check(info["hint-marked-pages"] >= DATA_PAGES, f"{v.name}: marked {info}")
                check(info["entries-rejected"] == 0, f"{v.name}: rejected {info}")
                # Merge candidates (kernel .data/.bss, page metadata, low memory) hold per-VM
                # state, so only the sealed data and the kernel image must hash alike.
                cands = candidate_runs(v)
                check(cands, f"{v.name}: no merge candidates hinted")
                sets.append({h["hash"] for h in query_hints(q)
                             if not any(a <= h["pfn"] < b for a, b in cands)})
            check(sets[0] == sets[1] == sets[2], "same seed, different hint hashes")
            others = other_mergeable(exclude={v.pid for v in vms})
            t0 = time.monotonic()
            ksm.start()
            # Each VM: every non-zero data page merged (plus the kernel image's read-only pages).
            m = wait_merging(vms, lambda m: min(m) >= NONZERO_PAGES, 120, "same seed")
            took = time.monotonic() - t0
            # pages_sharing is host-wide and updated lazily (rmap items of exited processes go
            # when ksmd next passes): read it after two more full scans, and only trust it when no
            # other process is mergeable (QEMU's default is mem-merge=on).
            scans = ksm.counters()["full_scans"]
            while ksm.counters()["full_scans"] < scans + 2 and time.monotonic() - t0 < 60:
                time.sleep(0.2)
            sharing = ksm.counters()["pages_sharing"]
            print(f"  merged {m} pages per VM in {took:.1f}s; pages_sharing {sharing} "
                  f"(other mergeable processes: {len(others)})", flush=True)
            if not others and not other_mergeable(exclude={v.pid for v in vms}):
                check(sharing >= 2 * NONZERO_PAGES, f"pages_sharing is only {sharing}")
            else:
                print("  (other mergeable processes: pages_sharing not checked)", flush=True)
            for v in vms:
                check(v.proc.poll() is None, f"{v.name} died\n{v.output}")
            # vm0 unseals page 5 and writes it: COW gives it its own copy.
            before = [merging(v) for v in vms]
            vms[0].wait_for(r"dataset: wrote page 5 pfn=(0x[0-9a-f]+) unsealed=1", 60)
            rounds = [last_verify(v)[0] for v in vms]
            for v, r in zip(vms, rounds):
                n, ok, bad = wait_verified_after(v, r)
                check(bad == 0 and ok == DATA_PAGES, f"{v.name}: verify ok={ok} bad={bad}")
            after = [merging(v) for v in vms]
            print(f"  after the write: merging {before} -> {after}", flush=True)
            # Compared with its peers, not with its own earlier count: other users' VMs booted
            # from the same blimp.elf (mem-merge=on) can merge kernel pages with all three VMs
            # at any time, which moves every VM's count alike.
            check(after[0] < min(after[1], after[2]),
                  f"vm0 merges {after[0]} pages, not fewer than its peers {after[1:]}")
            for i in (1, 2):
                check(after[i] >= NONZERO_PAGES,
                      f"vm{i} lost its sharing: {before[i]} -> {after[i]}")
            info0 = qs[0].execute("x-blimp-balloon-info")
            check(info0["hint-pages"] < qs[1].execute("x-blimp-balloon-info")["hint-pages"],
                  f"vm0's UNSEAL did not drop its hint: {info0}")
            for v in vms:
                check("MISMATCH" not in v.output, f"{v.name}: mismatch\n{v.output}")
        finally:
            for v in vms:
                v.kill()
    finally:
        ksm.__exit__(None, None, None)


@t.test
def test_different_seeds_share_nothing_false(build):
    ksm = enter_ksm()
    try:
        common = data_set_args("2s")
        vms = [sharing_vm(build, "seed1-all", ["seed=1", "sharing=all"] + common),
               sharing_vm(build, "seed2-vm", ["seed=2", "sharing=vm"] + common),
               sharing_vm(build, "seed1-off", ["seed=1", "sharing=off"] + common)]
        try:
            for v in vms:
                v.wait_for(r"dataset: ready", 120)
            qs = [Qmp.connect(v.qmp_path) for v in vms]
            infos = [q.execute("x-blimp-balloon-info") for q in qs]
            check(infos[2]["hints"] == 0, f"sharing=off sent hints: {infos[2]}")
            # sharing=vm: only within-VM twins, i.e. the zero run (and duplicate kernel pages).
            check(ZERO_PAGES <= infos[1]["hint-pages"] < ZERO_PAGES + 64,
                  f"sharing=vm hinted {infos[1]['hint-pages']} pages")
            check(infos[0]["hint-pages"] >= DATA_PAGES, f"sharing=all: {infos[0]}")
            start_scans = ksm.counters()["full_scans"]
            ksm.start()
            # Let KSM finish several full scans over everything mergeable.
            deadline = time.monotonic() + 120
            while ksm.counters()["full_scans"] < start_scans + 4:
                check(time.monotonic() < deadline, "KSM did not complete 4 full scans")
                time.sleep(0.5)
            m = [merging(v) for v in vms]
            print(f"  merging pages after 4 full scans: {m}", flush=True)
            check(m[2] == 0, f"sharing=off VM has merged pages: {m[2]}")
            # seed1-all's data has its twin only in seed1-off, which marked nothing: at most the
            # kernel image pages (twins in seed2-vm, or in other users' VMs booted from the same
            # blimp.elf with mem-merge=on) and zero pages may merge.
            baseline = ZERO_PAGES + 128
            check(m[0] <= baseline, f"seed1-all merged {m[0]} > {baseline} pages: false sharing")
            check(m[1] <= baseline, f"seed2-vm merged {m[1]} > {baseline} pages")
            for v in vms:
                n, ok, bad = wait_verified_after(v, last_verify(v)[0] if last_verify(v) else 0)
                check(bad == 0 and ok == DATA_PAGES, f"{v.name}: verify ok={ok} bad={bad}")
        finally:
            for v in vms:
                v.kill()
    finally:
        ksm.__exit__(None, None, None)


@t.test
def test_device_hint_limit_is_reported_and_harmless(build):
    # No KSM needed: the device records at most hint-max-entries hints and answers ENOSPC; the
    # guest stops hinting (LIMIT-REACHED, the rest counted as dropped), and everything else works.
    # sharing.candidates=off: the re-hash below holds for sealed pages only. The WRITABLE merge
    # candidates (.data/.bss, page metadata, low RAM) are hinted once and written at run time by
    # design, so their recorded hash goes stale (CI: a sampled .bss page, pfn 0x2c4, once the
    # image's layout moved); experiments_sharing covers them.
    with BlimpVM(build, app="dataset", machine="q35", memory="256M", qemu=require_patched_qemu(build),
                 args=[*data_set_args("1s"), "duration=3s", "write_after=1s",
                       "write_page=3000", "sharing.candidates=off"],
                 extra=["-machine", "mem-merge=off",
                        "-device", "virtio-balloon-pci,share-hints=on,hint-max-entries=1000"],
                 qmp=True, limit=120, name="limit") as vm:
        vm.wait_for(r"dataset: ready", 60)
        q = Qmp.connect(vm.qmp_path)
        info = q.execute("x-blimp-balloon-info")
        check(info["hints"] == 1000 and info["req-enospc"] >= 1, f"device: {info}")
        # End to end: the hash the device recorded for a page is XXH3-64 of the page's content
        # as the host reads it (guest memory dumped with pmemsave, hashed by the system
        # libxxhash): what hangar and KSM-side tools rely on.
        xxh3 = system_xxh3()
        if xxh3:
            hints = q.execute("x-blimp-balloon-query-hints", start=0, max=1000)["hints"]
            dump = os.path.join(vm.tmp, "page.bin")
            for h in hints[::50]:
                q.execute("pmemsave", val=h["pfn"] * PAGE, size=PAGE, filename=dump)
                with open(dump, "rb") as f:
                    data = f.read()
                check(f"{xxh3(data, len(data)):016x}" == h["hash"],
                      f"pfn {h['pfn']:#x}: device hash {h['hash']} != XXH3 of the page")
            check(len(hints) == 1000, f"query-hints listed {len(hints)} hints")
            print(f"  {len(hints[::50])} hinted pages re-hashed on the host: equal", flush=True)
        m = vm.wait_for(r"dataset: sharing: .* entries=(\d+) pages=(\d+) .*dropped=(\d+) .*"
                        r"LIMIT-REACHED", 10)
        entries, pages, dropped = (int(x) for x in m.groups())
        check(pages + dropped >= DATA_PAGES + 48 - 72 and dropped > 0,
              f"hinted {pages} + dropped {dropped}")
        status = vm.wait_exit(60)
        check(status == 0 and "bad=0" in vm.output and "MISMATCH" not in vm.output, vm.output)


if __name__ == "__main__":
    t.main()
