#!/usr/bin/env python3
"""Page-state protocol race test under real TCG vCPUs (host/qemu patch 0002).

The anchor Linux guest boots on microvm with `mem=192M` (Linux leaves the top 64 MiB of the
256 MiB alone) and without its virtio_balloon driver. This script drives the balloon device
from the host through qtest (virtio-mmio, rings in the top 64 MiB) and registers a page-state
array there. Inside the guest, /bin/pstate-hammer (image/linux/pstate_hammer.c) plays the
guest half of the protocol on 1024 pages of that region through /dev/mem: allocate (CAS to
STABLE), write, check, free (UNUSED) or make VOLATILE, pin, over and over, while the host
sweeps the same array every 20 ms of virtual time and on back-to-back QMP requests.

Pass: the hammer sees no lost write on a STABLE page, every discarded page reads zero, no
undefined state; and the host did race with it (discarded pages seen by the guest). Run with
-smp 1 (TCG's guest cmpxchg is not atomic against host threads: the device pauses the vCPUs
for the claim pass) and -smp 2 (MTTCG, atomic). Exit 0 pass, 77 skip, 1 fail.
"""
import argparse
import importlib.util
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from linux_guest import LinuxGuest, GuestError, find_qemu, guest_files  # noqa: E402

spec = importlib.util.spec_from_file_location("ext", os.path.join(HERE, "test_qemu_blimp_ext.py"))
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)

TOP = 0xC000000                 # 192 MiB: Linux's RAM ends here (mem=192M)
ARRAY = TOP + 0x400000          # page-state array (65536 bytes for 256 MiB)
DATA_PFN = 0xD000               # hammer pages at 208 MiB
NPAGES = 1024
ITERS = 3000000


def run(qemu, bd, smp):
    print(f"[smp={smp}]")
    ext.RING_GPA = TOP + 0x100000
    ext.BUF_GPA = TOP + 0x200000
    qt_path = os.path.join(tempfile.mkdtemp(prefix="blimp-qt-"), "qtest.sock")
    g = LinuxGuest(qemu, bd, mem_mb=256, machine="microvm,pit=on,pic=on,rtc=on",
                   transport="mmio", smp=smp, name=f"hammer{smp}", timeout_s=600,
                   balloon="page-states=on,page-states-interval-ms=20",
                   cmdline="mem=192M blimp.skipmod=virtio_balloon tsc_early_khz=2000000",
                   extra_args=["-global", "virtio-mmio.force-legacy=false",
                               "-qtest", f"unix:{qt_path},server=on,wait=off"])
    errors = []
    try:
        g.start(ready_timeout=300)
        qt = ext.QTest(qt_path)
        dev = ext.VirtioMMIOBalloon(qt)
        dev.init((1 << ext.F_STATS) | (1 << ext.F_VERSION_1) | (1 << ext.F_PAGE_STATES))
        qt.memwrite(ARRAY, bytes(65536))
        st, *_ = ext.register_array(dev, gpa=ARRAY, npages=65536)
        if st != ext.S_OK:
            raise GuestError(f"register failed: {st}")
        g.send(f"hammer 0x{ARRAY:x} 0x{DATA_PFN:x} {NPAGES} {ITERS} {smp * 7919}")
        g.wait_for(r"BLIMP-HAMMER: start", 120)
        sweeps = 0
        deadline = time.monotonic() + 500
        m = None
        while m is None and time.monotonic() < deadline:
            g.qmp.execute("x-blimp-balloon-discard", timeout=60)
            sweeps += 1
            try:
                m = g.wait_for(r"BLIMP-HAMMER: done (.*)", 0.05)
            except GuestError as e:
                if "exited" in str(e):
                    raise
        if m is None:
            raise GuestError("hammer did not finish")
        res = dict(kv.split("=") for kv in m.group(1).split())
        res = {k: int(v) for k, v in res.items()}
        rc = g.wait_for(r"BLIMP-LINUX: done hammer rc=(\d+)", 30).group(1)
        info = g.qmp.execute("x-blimp-balloon-info")
        print(f"  hammer: {res}")
        print(f"  host: {sweeps} QMP sweeps, {info['pstate-sweeps']} total, claimed "
              f"{info['pstate-claimed']}, discarded unused {info['pstate-discarded-unused']} "
              f"volatile {info['pstate-discarded-volatile']}, skipped {info['pstate-skipped']}")
        for k in ("lost_writes", "bad_zero", "bad_state"):
            if res[k]:
                errors.append(f"{k}={res[k]}")
        if rc != "0":
            errors.append(f"hammer exit {rc}")
        if res["discarded_unused"] == 0 or res["lost_volatile"] == 0:
            errors.append("the host never discarded a page under the hammer (no race tested)")
        mi = g.meminfo()
        if "MemTotal" not in mi:
            errors.append("guest not responsive after the hammer")
    except GuestError as e:
        errors.append(str(e))
    finally:
        g.stop()
    for e in errors:
        print(f"  FAIL: {e}")
    if not errors:
        print("  ok")
    return not errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    a = ap.parse_args()
    bd = os.path.abspath(a.build_dir)
    qemu = find_qemu(bd, patched=True)
    if not qemu:
        print(f"SKIP: patched QEMU not built (host/qemu/build.sh {bd})")
        return 77
    if not guest_files(bd):
        print(f"SKIP: Linux guest not built (image/linux/build.sh {bd})")
        return 77
    if "pstate-hammer" not in open(os.path.join(bd, "linux-guest", "stamp")).read() and \
            not os.path.exists(os.path.join(bd, "linux-guest", "initramfs.cpio.gz")):
        print("SKIP: guest has no pstate-hammer")
        return 77
    ok = run(qemu, bd, 1) & run(qemu, bd, 2)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
