#!/usr/bin/env python3
"""End-to-end check of patch 0003 with the host's KSM (run by hand: KSM is system-wide).

    python3 bench/qemu/ksm_hint_check.py --build-dir build [--pages 512]

Two VMs (qtest accelerator, `-machine mem-merge=off`, share-hints=on) get the same seeded,
distinct page contents at the same PFNs in two regions: region A is hinted with SEAL, region B
(identical content) is not. KSM is switched on; the script waits until KSM has merged region A
across the two VMs and checks that region B was not touched (only hinted runs are mergeable).
KSM's settings are saved and restored (run=2 unmerges everything at the end, then the old
value). Refuses to run if KSM is already running (someone else's experiment).
"""
import argparse
import hashlib
import importlib.util
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
spec = importlib.util.spec_from_file_location(
    "ext", os.path.join(ROOT, "tests", "integration", "test_qemu_blimp_ext.py"))
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)
KSM = "/sys/kernel/mm/ksm"


def ksm(name, value=None):
    path = os.path.join(KSM, name)
    if value is None:
        with open(path) as f:
            return f.read().strip()
    with open(path, "w") as f:
        f.write(str(value))


def merging_pages(pid):
    try:
        with open(f"/proc/{pid}/ksm_merging_pages") as f:
            return int(f.read())
    except OSError:
        return -1


def page(i):
    return hashlib.sha256(b"blimp%d" % i).digest() * (4096 // 32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--pages", type=int, default=512)
    a = ap.parse_args()
    qemu = os.path.join(os.path.abspath(a.build_dir), "qemu", "qemu-system-x86_64")
    if not os.path.isdir(KSM) or not os.access(qemu, os.X_OK):
        print("no KSM or no patched QEMU")
        return 77
    if ksm("run") == "1":
        print("KSM is already running (another experiment?): not touching it")
        return 77
    saved = {k: ksm(k) for k in ("run", "pages_to_scan", "sleep_millisecs")}
    n = a.pages
    a_pfn, b_pfn = 0x4000, 0x8000
    content = b"".join(page(i) for i in range(n))
    vms = []
    try:
        for _ in range(2):
            vm = ext.Vm(qemu, "share-hints=on", extra=["-machine", "mem-merge=off"])
            vms.append(vm)
            vm.dev.init((1 << ext.F_STATS) | (1 << ext.F_VERSION_1) | (1 << ext.F_SHARE_HINTS))
            vm.qt.memwrite(a_pfn * 4096, content)
            vm.qt.memwrite(b_pfn * 4096, content)
            entries = b"".join(struct.pack("<QIIQ", a_pfn + i, 1, 0, i) for i in range(n))
            st, acc, *_ = vm.dev.request(ext.REQ_SEAL, n, entries)
            assert st == ext.S_OK and acc == n, (st, acc)
        ksm("pages_to_scan", 5000)
        ksm("sleep_millisecs", 10)
        ksm("run", 1)
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
        ksm("run", 2)                      # unmerge whatever is left
        for k in ("pages_to_scan", "sleep_millisecs"):
            ksm(k, saved[k])
        ksm("run", saved["run"] if saved["run"] != "2" else 0)


if __name__ == "__main__":
    sys.exit(main())
