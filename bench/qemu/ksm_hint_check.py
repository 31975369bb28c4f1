#!/usr/bin/env python3
"""End-to-end check of patch 0003 with the host's KSM (run by hand: KSM is system-wide).

    python3 bench/qemu/ksm_hint_check.py --build-dir build [--pages 512]

Two VMs (qtest accelerator, `-machine mem-merge=off`, share-hints=on) get the same seeded,
distinct page contents at the same PFNs in two regions: region A is hinted with SEAL, region B
(identical content) is not. KSM is switched on; the script waits until KSM has merged region A
across the two VMs and checks that region B was not touched (only hinted runs are mergeable).
KSM's settings are saved and restored by tests/lib/ksm.py's KsmSession (under the machine-wide
KSM lock, also on SIGTERM, and undone by the next KSM user after a SIGKILL); run=2 unmerges
everything at the end. Refuses to run if KSM is already running (someone else's experiment).
"""
import argparse
import hashlib
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import blimp_ext as ext  # noqa: E402
from blimp_vm import find_patched_qemu  # noqa: E402
from ksm import KSM_DIR, KsmSession, KsmUnavailable, merging_pages, read as ksm  # noqa: E402


def page(i):
    return hashlib.sha256(b"blimp%d" % i).digest() * (4096 // 32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--pages", type=int, default=512)
    a = ap.parse_args()
    qemu = find_patched_qemu(os.path.abspath(a.build_dir))
    if not os.path.isdir(KSM_DIR) or not qemu:
        print("no KSM or no patched QEMU")
        return 77
    if ksm("run") == "1":
        print("KSM is already running (another experiment?): not touching it")
        return 77
    n = a.pages
    a_pfn, b_pfn = 0x4000, 0x8000
    content = b"".join(page(i) for i in range(n))
    try:
        session = KsmSession(pages_to_scan=5000, sleep_millisecs=10).__enter__()
    except KsmUnavailable as e:
        print(f"KSM not available: {e}")
        return 77
    vms = []
    try:
        for _ in range(2):
            vm = ext.QtestVm(qemu, "share-hints=on", extra=["-machine", "mem-merge=off"])
            vms.append(vm)
            vm.dev.init((1 << ext.F_STATS) | (1 << ext.F_VERSION_1) | (1 << ext.F_SHARE_HINTS))
            vm.qt.memwrite(a_pfn * 4096, content)
            vm.qt.memwrite(b_pfn * 4096, content)
            entries = b"".join(struct.pack("<QIIQ", a_pfn + i, 1, 0, i) for i in range(n))
            st, acc, *_ = vm.dev.request(ext.REQ_SEAL, n, entries)
            assert st == ext.S_OK and acc == n, (st, acc)
        session.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            m = [merging_pages(v.pid()) for v in vms]
            if all(x >= n for x in m):
                break
            time.sleep(0.5)
        dt = time.monotonic() - t0
        m = [merging_pages(v.pid()) for v in vms]
        print(f"after {dt:.1f}s: ksm_merging_pages per VM {m} (hinted region {n} pages, "
              f"unhinted identical region {n} pages); pages_shared={ksm('pages_shared')} "
              f"pages_sharing={ksm('pages_sharing')} full_scans={ksm('full_scans')}")
        ok = all(n <= x < 2 * n for x in m)
        print("PASS: only the hinted pages were merged" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for v in vms:
            v.stop()
        try:
            session.unmerge_all()              # unmerge whatever is left
        finally:
            session.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
