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
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import blimp_ext as ext  # noqa: E402
from blimp_vm import Skip, TestRunner, check, require_patched_qemu  # noqa: E402
from linux_guest import LinuxGuest, GuestError, guest_files  # noqa: E402
from qtest import QTest  # noqa: E402

t = TestRunner()

TOP = 0xC000000                 # 192 MiB: Linux's RAM ends here (mem=192M)
ARRAY = TOP + 0x400000          # page-state array (65536 bytes for 256 MiB)
DATA_PFN = 0xD000               # hammer pages at 208 MiB
NPAGES = 1024
ITERS = 3000000


def run(qemu, bd, smp):
    print(f"[smp={smp}]")
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
        qt = QTest.connect(qt_path, reply_timeout=60.0)
        dev = ext.VirtioMMIOBalloon(qt, ring_gpa=TOP + 0x100000, buf_gpa=TOP + 0x200000)
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


def hammer_build(build):
    """The patched QEMU and the Linux guest with /bin/pstate-hammer; Skip otherwise."""
    qemu = require_patched_qemu(build)
    if not guest_files(build):
        raise Skip(f"Linux guest not built (image/linux/build.sh {build})")
    if "pstate-hammer" not in open(os.path.join(build, "linux-guest", "stamp")).read() and \
            not os.path.exists(os.path.join(build, "linux-guest", "initramfs.cpio.gz")):
        raise Skip("guest has no pstate-hammer")
    return qemu


@t.test
def test_hammer_smp1(build):
    check(run(hammer_build(build), build, 1), "the hammer on -smp 1 (see the lines above)")


@t.test
def test_hammer_smp2(build):
    check(run(hammer_build(build), build, 2), "the hammer on -smp 2 (see the lines above)")


if __name__ == "__main__":
    t.main()
