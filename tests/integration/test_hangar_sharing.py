#!/usr/bin/env python3
"""Targeted KSM through hangar, against real guest hints (docs/hangar.md, docs/sharing.md).

hangar runs three `dataset` VMs on the patched QEMU with `--ksm targeted`: twin1 and twin2 build
the same data set (seed 42), loner a different one (seed 7). The guests hash and seal their data;
hangar reads every QEMU's hints over QMP, finds the hashes with a twin in another VM and gives
each QEMU that hash filter, so QEMU marks only those runs mergeable. Checked, from the outside:

  - hangar holds /run/blimp/ksm.lock while it owns the KSM settings, and a hangar that finds
    the lock taken waits a bounded time and gives up with a clear error, starting nothing;
  - the sharing index found the twins (hangar's log, summary.json, CSV): twin1/twin2 every data
    page, loner only the kernel image and the zero page;
  - QEMU marked those runs and nothing else (VmFlags `mg` in /proc/PID/smaps), a small fraction of
    guest RAM;
  - KSM merged every non-zero data page of twin1 and twin2 (/proc/PID/ksm_stat, exact per VM) and
    pages_sharing rose by at least that much; loner merged nothing of its data;
  - every guest's data verifies; after hangar stops, KSM's settings are what they were, the save
    file is gone, the lock is free, no QEMU is left;
  - (host/qemu patch 0006, two qtest QEMUs, no hangar) a filter change that only adds twins
    leaves the pages KSM merged merged (ksm_merging_pages never falls), one that removes twins
    unmerges exactly those.

KSM is system-wide: the test only runs with KSM writable (root) and never beside another KSM
experiment (the lock; CTest RUN_SERIAL). Skips (77) without KSM, the patched QEMU, hangar or the
kernel.

    python3 tests/integration/test_hangar_sharing.py --build-dir build [-k name]
"""
import os
import re
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench", "sharing"))
import ksm_map  # noqa: E402
from blimp_vm import Skip, TestRunner, check, patched_qemu_path  # noqa: E402
from hangar import HangarRun, find_hangar  # noqa: E402
from dataset import (DATA_PAGES, NONZERO_PAGES, PAGE, SIZE_MIB, ZERO_MIB, ZERO_PAGES,  # noqa: E402
                     data_set_args, kernel_candidate_pages, kernel_readonly_pages,
                     verify_rounds)
from ksm import (KSM_DIR, LOCK_PATH, SAVE_PATH, KsmLock, KsmSession, KsmUnavailable,  # noqa: E402
                 lock_holders, lock_is_free, mergeable_vmas, merging_pages, other_mergeable,
                 read as read_ksm)

t = TestRunner()


def kernel_slack(build):
    """What a 256 MiB guest hints besides its data set: the kernel image's read-only pages (read
    from build/blimp.elf: about 300 since SQLite is linked in), its WRITABLE merge candidates
    (.data/.bss, page metadata, low memory: about 1200) and a little slack."""
    return kernel_readonly_pages(build) + kernel_candidate_pages(build, 256) + 100
DATASET = " ".join(data_set_args("3s"))
SETTINGS = ("run", "pages_to_scan", "sleep_millisecs", "use_zero_pages", "merge_across_nodes",
            "max_page_sharing", "stable_node_chains_prune_millisecs", "smart_scan", "advisor_mode")


def tools(build):
    hangar, kernel = find_hangar(build)
    qemu = patched_qemu_path(build)
    if not os.access(qemu, os.X_OK):
        raise Skip(f"patched QEMU (host/qemu/build.sh) not built: {qemu}")
    if not os.path.isdir(KSM_DIR):
        raise Skip(f"{KSM_DIR} is absent (kernel without CONFIG_KSM)")
    if not os.access(os.path.join(KSM_DIR, "run"), os.W_OK):
        raise Skip(f"{KSM_DIR}/run is not writable (not root?)")
    return hangar, kernel, qemu


def ksm_settings():
    return {n: read_ksm(n) for n in SETTINGS if os.path.exists(os.path.join(KSM_DIR, n))}


def ksm_lock(timeout=300):
    """The machine-wide KSM lock (tests/lib/ksm.py); a skip when another experiment keeps it."""
    try:
        return KsmLock(timeout)
    except KsmUnavailable as e:
        raise Skip(str(e))


def mergeable_kib(pid):
    """Mergeable KiB of guest RAM (256 MiB VMs). QEMU's own read-only RAM blocks (firmware, ACPI
    blobs), which the device marks beside the hints (share-roms, host/qemu patch 0014), are not
    what the filter decides, and are left out."""
    vmas = mergeable_vmas(pid)
    beside_ram = sum(b for b, _ in ksm_map.outside_ram(pid, 256 << 20, vmas))
    return (sum(e - s for s, e in vmas) - beside_ram) // 1024


def merging(pid):
    return merging_pages(pid)


def Hangar(build, args):
    """hangar run in the background with its own run directory. close() always leaves KSM as it
    found it: SIGTERM (hangar restores), and `hangar ksm-restore` if hangar could not."""
    hangar, kernel, _ = tools(build)
    return HangarRun(hangar, kernel, ["--status", "off", "--policy", "none", *args], qemu="patched",
                     csv=True, stop_signal=signal.SIGTERM, restore_ksm=True,
                     prefix="hangar-sharing-")


def dataset_vm(name, seed):
    return ["--vm", f'name={name},app=dataset,machine=q35,memory=256M,args="seed={seed} {DATASET}"']


@t.test
def test_busy_ksm_lock_is_a_clear_error(build):
    tools(build)
    lock = ksm_lock()
    try:
        before = ksm_settings()
        h = Hangar(build, dataset_vm("a", 42) + ["--ksm", "targeted", "--ksm-lock-wait", "2s"])
        try:
            t0 = time.monotonic()
            rc = h.wait(60)
            took = time.monotonic() - t0
            err = h.stderr()
            check(rc == 3, f"exit {rc} (want 3: KSM in use)\n{err}")
            check(2 <= took < 30, f"gave up after {took:.1f}s, want about 2s")
            for want in (f"{LOCK_PATH} is held by pid {os.getpid()}", "waiting up to 2 s",
                         "KSM is in use by another experiment", "--ksm-lock-wait"):
                check(want in err, f"want {want!r} in\n{err}")
            check("started QEMU" not in err, f"a VM was started\n{err}")
            check(not os.path.exists(SAVE_PATH), "KSM save file written")
            check(ksm_settings() == before, f"KSM changed: {before} -> {ksm_settings()}")
            print(f"  gave up after {took:.1f}s: {err.strip().splitlines()[-1]}", flush=True)
        finally:
            h.close()
    finally:
        lock.release()


@t.test
def test_targeted_sharing_through_hangar(build):
    tools(build)
    KERNEL_SLACK = kernel_slack(build)
    # KSM's settings at rest: read under the lock (every holder restores before it releases).
    lock = ksm_lock()
    before = ksm_settings()
    sharing_before = int(read_ksm("pages_sharing"))
    lock.release()
    h = Hangar(build, dataset_vm("twin1", 42) + dataset_vm("twin2", 42) + dataset_vm("loner", 7) +
               ["--ksm", "targeted", "--ksm-pages-to-scan", "4000", "--ksm-sleep-ms", "10",
                "--ksm-lock-wait", "300s", "--interval", "1s", "--duration", "240s"])
    try:
        t0 = time.monotonic()
        h.wait_for(rf"KSM targeted \(.*holding {re.escape(LOCK_PATH)}\)", 330)
        # hangar owns KSM now: the lock is its, not free.
        check(not lock_is_free(), f"{LOCK_PATH} is free while hangar runs KSM")
        check(h.proc.pid in lock_holders(), f"lock held by {lock_holders()}, not hangar {h.proc.pid}")
        pids = {n: int(h.wait_for(rf"vm {n}: started QEMU pid (\d+)").group(1))
                for n in ("twin1", "twin2", "loner")}
        others = other_mergeable(exclude=set(pids.values()))
        # The index: every VM's filter sent once all three were read.
        marked = {}
        for n in pids:
            m = h.wait_for(rf"vm {n}: KSM targeted at (\d+) twin hashes: QEMU marked (\d+) pages in (\d+) runs", 120)
            marked[n] = tuple(int(x) for x in m.groups())
        index = re.findall(r"sharing index: (\d+) VM\(s\), (\d+) hinted pages; twin hashes (.*); best case saves "
                           r"(\d+) pages", h.stderr())
        check(index, f"no sharing index line\n{h.stderr()}")
        twins = {k: int(v) for k, v in (x.split() for x in index[-1][2].split(", "))}
        print(f"  index: {index[-1][1]} hinted pages, twin hashes {twins}, best case {index[-1][3]} pages; "
              f"filters (hashes, pages marked, runs): {marked}", flush=True)
        for n in ("twin1", "twin2"):
            # every data page's hash (distinct per page) plus the zero page's, plus kernel pages
            check(twins[n] >= NONZERO_PAGES + 1, f"{n}: only {twins[n]} twin hashes")
            check(DATA_PAGES <= marked[n][1] <= DATA_PAGES + KERNEL_SLACK, f"{n}: QEMU marked {marked[n]}")
        check(twins["loner"] < KERNEL_SLACK, f"loner has {twins['loner']} twin hashes: its data has no twin")
        check(marked["loner"][1] <= ZERO_PAGES + KERNEL_SLACK, f"loner: QEMU marked {marked['loner']}")

        # KSM merges every non-zero data page of both twins (exact per process).
        deadline = time.monotonic() + 120
        while True:
            m = {n: merging(p) for n, p in pids.items()}
            if m["twin1"] >= NONZERO_PAGES and m["twin2"] >= NONZERO_PAGES:
                break
            check(time.monotonic() < deadline, f"KSM merged only {m} pages after 120s\n{h.stderr()}")
            time.sleep(0.5)
        took = time.monotonic() - t0
        mg = {n: mergeable_kib(p) for n, p in pids.items()}
        sharing = int(read_ksm("pages_sharing"))
        print(f"  merged {m} pages {took:.1f}s after hangar started; pages_sharing {sharing_before} -> "
              f"{sharing} (expected >= {NONZERO_PAGES}); mergeable KiB {mg}", flush=True)
        # QEMU marked only the twins: the data set (16 MiB) plus the kernel in the twins, the
        # kernel and the zero run in loner; a small fraction of the 768 MiB of guest RAM.
        for n in ("twin1", "twin2"):
            check(SIZE_MIB * 1024 <= mg[n] <= SIZE_MIB * 1024 + KERNEL_SLACK * 4 + 1024,
                  f"{n}: {mg[n]} KiB mergeable")
        check(mg["loner"] <= ZERO_MIB * 1024 + KERNEL_SLACK * 4, f"loner: {mg['loner']} KiB mergeable")
        # Each guest also hints its writable merge candidates (kernel .data/.bss, page metadata,
        # low RAM: about 3 MiB of 256): still under a tenth of the guest RAM in all.
        check(sum(mg.values()) < 0.08 * 3 * 256 * 1024, f"{sum(mg.values())} KiB mergeable of 768 MiB")
        check(m["loner"] <= KERNEL_SLACK, f"loner merged {m['loner']} pages: its data has no twin")
        # Host-wide: our twins alone add NONZERO_PAGES (other processes can only add to it).
        check(sharing >= NONZERO_PAGES, f"pages_sharing is only {sharing}")
        if not others and not other_mergeable(exclude=set(pids.values())):
            check(sharing <= NONZERO_PAGES + 2 * KERNEL_SLACK, f"pages_sharing {sharing}: more than ours")
        else:
            print(f"  other mergeable processes (pages_sharing upper bound not checked): "
                  f"{[(p, c) for p, c, _, _ in others]}", flush=True)

        # Every guest verifies its data after the merge.
        time.sleep(3.5)
        for n in pids:
            with open(os.path.join(h.run_dir, f"{n}.serial.log")) as f:
                out = f.read()
            rounds = verify_rounds(out)
            check(rounds and all(b == 0 and ok == DATA_PAGES for _, ok, b in rounds),
                  f"{n}: verify {rounds}\n{out[-2000:]}")

        # Orderly stop: KSM restored, lock released, summary and CSV tell the story.
        h.proc.send_signal(signal.SIGTERM)
        rc = h.wait(60)
        check(rc == 128 + signal.SIGTERM, f"exit {rc}\n{h.stderr()}")
        s, vms = h.summary()
        print(f"  summary: ksm {s['ksm']}, sharing {s.get('sharing')}", flush=True)
        check(s["ksm"]["restored"] and s["ksm"]["lock"] == LOCK_PATH, s["ksm"])
        check(s["sharing"]["potential_saving_pages"] >= NONZERO_PAGES, s["sharing"])
        for n in ("twin1", "twin2"):
            check(vms[n]["twin_hashes"] == twins[n] and vms[n]["marked_pages"] == marked[n][1], vms[n])
            check(vms[n]["hint_pages"] >= DATA_PAGES, vms[n])
        check(vms["loner"]["twin_hashes"] == twins["loner"], vms["loner"])
        check(all(v["outcome"] == "stopped" for v in vms.values()), s)
        check(not os.path.exists(SAVE_PATH), "KSM save file left")
        with open(h.csv) as f:
            head, *rows = [r.split(",") for r in f.read().splitlines()]
        col = {c: i for i, c in enumerate(head)}
        peak = max(int(r[col["ksm_pages_sharing"]] or 0) for r in rows)
        check(peak >= NONZERO_PAGES, f"CSV ksm_pages_sharing peaked at {peak}")
        per_vm = {n: max(int(r[col["vm_ksm_merging_pages"]] or 0) for r in rows if r[col["vm"]] == n) for n in pids}
        check(per_vm["twin1"] >= NONZERO_PAGES and per_vm["twin2"] >= NONZERO_PAGES, f"CSV merging {per_vm}")
        # Once merged, stays merged: hangar never sends a filter from a half-read index (a hash
        # dropped from a filter makes QEMU unmerge its pages).
        for n in ("twin1", "twin2"):
            series = [int(r[col["vm_ksm_merging_pages"]] or 0) for r in rows
                      if r[col["vm"]] == n and r[col["state"]] == "running"]
            first = next(i for i, v in enumerate(series) if v >= NONZERO_PAGES)
            check(min(series[first:]) >= NONZERO_PAGES, f"{n} was unmerged after merging: {series}")
        check(lock_is_free() or h.proc.pid not in lock_holders(), "hangar kept the KSM lock")
    finally:
        h.close()
    # At rest again: compare under the lock (another KSM user may have come and gone meanwhile;
    # it restores too).
    lock = ksm_lock()
    after = ksm_settings()
    lock.release()
    check(after == before, f"KSM settings not restored: {before} -> {after}")


FILTER_PAGES = 1024     # pages per hash group in test_filter_update_keeps_merged


def filter_churn(qemu, ks, n=FILTER_PAGES, timeout=90):
    """Two qtest QEMUs (no guest: the test writes guest RAM and seals over qtest with
    tests/lib/blimp_ext.py) hold the same two groups of n distinct pages, A and B, sealed with
    one hash per page. Filters go {A} -> {A, B} -> {B} in both VMs while ksmd runs; every 0.1 s
    /proc/PID/ksm_merging_pages of each QEMU is sampled. Returns per phase: the lowest and the
    last merging count (min over both VMs), seconds until the expected count, ksmd CPU seconds,
    and QEMU's filter answers."""
    from blimp_ext import F_SHARE_HINTS, F_STATS, F_VERSION_1, DATA_PFN, QtestVm as Vm, seal
    import struct as st
    groups = {"A": (1, DATA_PFN), "B": (2, DATA_PFN + 4 * n)}
    vms = []
    try:
        for _ in range(2):
            # share-roms=off: merging counts here are the hinted groups alone (QEMU's ROM
            # blocks, patch 0014, have their own test in integration.sharing).
            vm = Vm(qemu, "share-hints=on,share-roms=off", extra=["-machine", "mem-merge=off"])
            vms.append(vm)
            vm.dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_SHARE_HINTS))
            vm.qmp.execute("x-blimp-balloon-hint-filter", hashes=[])
            for g, (tag, pfn) in groups.items():
                data = b"".join(st.pack("<QQ", tag, i) * (PAGE // 16) for i in range(n))
                vm.qt.memwrite(pfn * PAGE, data)
                for i in range(0, n, 1024):
                    r = seal(vm.dev, [(pfn + j, 1, 0, tag << 32 | j) for j in range(i, min(n, i + 1024))])
                    check(r[0] == 0, f"SEAL status {r[0]}")
        pids = [vm.pid() for vm in vms]

        def hashes(gs):
            return [f"{groups[g][0] << 32 | j:016x}" for g in gs for j in range(n)]

        def phase(gs, want):
            answers = [vm.qmp.execute("x-blimp-balloon-hint-filter", hashes=hashes(gs), timeout=60)
                       for vm in vms]
            cpu0, t0, low, took = ks.ksmd_cpu_seconds(), time.monotonic(), None, None
            series = []
            while time.monotonic() - t0 < timeout:
                m = min(merging(p) for p in pids)
                series.append(m)
                low = m if low is None else min(low, m)
                if took is None and m == want:
                    took = time.monotonic() - t0
                if took is not None and time.monotonic() - t0 > took + 3:
                    break       # settled: 3 s more at the expected count
                time.sleep(0.1)
            return {"filter": "+".join(gs), "want": want, "min": low, "last": series[-1],
                    "seconds": took, "ksmd_cpu_s": round(ks.ksmd_cpu_seconds() - cpu0, 2),
                    "answers": answers, "series": series[::5]}

        ks.start()
        return [phase(["A"], n), phase(["A", "B"], 2 * n), phase(["B"], n)]
    finally:
        for vm in vms:
            vm.stop()


@t.test
def test_filter_update_keeps_merged(build):
    """host/qemu patch 0006: a filter change that only adds twins leaves KSM's merged pages
    merged (ksm_merging_pages of the QEMU never falls), one that removes twins unmerges exactly
    those."""
    _, _, qemu = tools(build)
    # As hangar's targeted mode does (KsmConfig::smart_scan): with smart scan on, the two QEMUs'
    # B runs, marked one QMP call apart (a dozen 15 ms scans here), fell into skip schedules that
    # never visit both twins in one scan; 4 of 8 runs never merged B, 0 of 8 with it off.
    smart = {"smart_scan": 0} if os.path.exists(os.path.join(KSM_DIR, "smart_scan")) else {}
    try:
        with KsmSession(pages_to_scan=4000, sleep_millisecs=10, **smart) as ks:
            res = filter_churn(qemu, ks)
    except KsmUnavailable as e:
        raise Skip(str(e))
    n = FILTER_PAGES
    for p in res:
        print(f"  filter {p['filter']}: merging min {p['min']} last {p['last']} (want {p['want']}), "
              f"settled after {p['seconds']} s, ksmd CPU {p['ksmd_cpu_s']} s; QEMU {p['answers'][0]}",
              flush=True)
    a, ab, b = res
    check(a["seconds"] is not None, f"A merged in both VMs: {a}")
    check(ab["answers"][0]["added-pages"] == n and ab["answers"][0]["removed-pages"] == 0, ab["answers"])
    check(ab["min"] >= n, f"adding B unmerged A: merging fell to {ab['min']} ({ab['series']})")
    check(ab["seconds"] is not None and ab["last"] == 2 * n, f"A and B merged: {ab}")
    check(b["answers"][0]["added-pages"] == 0 and b["answers"][0]["removed-pages"] == n, b["answers"])
    check(b["min"] >= n and b["last"] == n, f"removing A left B merged, unmerged A: {b}")


if __name__ == "__main__":
    t.main()
