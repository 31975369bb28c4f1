"""The Blimp virtio-balloon extensions (docs/spec-virtio-balloon-blimp.md) driven from the host,
without a guest OS: QEMU runs with the qtest accelerator (or beside a guest, with a qtest socket)
and this module is the driver. It pokes virtio-mmio registers and guest RAM through qtest
(tests/lib/qtest.py), so every byte on the wire is chosen by the caller, malformed ones
included.

    from blimp_ext import F_PAGE_STATES, F_STATS, F_VERSION_1, QtestVm, register_array
    vm = QtestVm(qemu, "page-states=on")        # microvm, -accel qtest, QMP and qtest sockets
    try:
        vm.dev.init((1 << F_STATS) | (1 << F_VERSION_1) | (1 << F_PAGE_STATES))
        st, accepted, rejected, used = register_array(vm.dev)
        vm.qmp.execute("x-blimp-balloon-discard")
    finally:
        vm.stop()

Used by tests/integration/test_qemu_blimp_ext.py, test_qemu_fault_injection.py,
test_qemu_pstate_tcg.py, test_hangar_sharing.py and the benchmarks in bench/qemu/.
"""
import os
import shutil
import struct
import subprocess
import tempfile

from blimp_vm import check as _check
from qmp import Qmp
from qtest import QTest

PAGE = 4096
MEM_MB = 256
F_STATS = 1
F_FREE_PAGE_HINT = 3
F_REPORTING = 5
F_VERSION_1 = 32
F_PAGE_STATES = 56
F_SHARE_HINTS = 57

PS_STABLE, PS_UNUSED, PS_VOLATILE = 0x00, 0x01, 0x03
PS_RESERVED = 0x02  # was POT_VOLATILE; an undefined byte now, treated as STABLE
PS_DISCARDED_UNUSED, PS_DISCARDED_VOLATILE = 0x81, 0x83
S_OK, S_EINVAL, S_ERANGE, S_ENOSPC, S_EUNSUPP, S_EBUSY = range(6)
REQ_REGISTER, REQ_UNREGISTER, REQ_SEAL, REQ_UNSEAL, REQ_AGES = 1, 2, 3, 4, 5
AGE_MAGIC = 0x45474141

VIRTIO_MMIO_BASE = 0xFEB00000
# guest-physical layout used by this "driver" (VirtioMMIOBalloon takes others)
RING_GPA = 0x00100000      # virtqueues
BUF_GPA = 0x00180000       # request / response buffers (up to 512 KiB)
ARRAY_GPA = 0x00400000     # page-state array (MEM_MB * 256 bytes)
DATA_PFN = 0x2000          # test pages at 32 MiB
AGES_GPA = 0x00500000      # age block (64 + 4 * MEM_MB * 256 bytes)


def check(cond, what):
    """blimp_vm.check that also says `  ok: WHAT` when it holds: the device tests narrate every
    check they make."""
    _check(cond, what)
    print(f"  ok: {what}", flush=True)


class VirtioMMIOBalloon:
    """Minimal modern virtio-mmio driver for the balloon, one split ring per queue (rings at
    ring_gpa, 8 KiB per queue; blimpq requests and responses at buf_gpa)."""
    QN = 16

    def __init__(self, qt, ring_gpa=RING_GPA, buf_gpa=BUF_GPA):
        self.qt = qt
        self.ring_gpa, self.buf_gpa = ring_gpa, buf_gpa
        self.base = None
        for i in range(24):
            b = VIRTIO_MMIO_BASE + i * 512
            if qt.readl(b) == 0x74726976 and qt.readl(b + 8) == 5:
                self.base = b
                break
        if self.base is None:
            raise AssertionError("no virtio-balloon on virtio-mmio")
        if qt.readl(self.base + 4) != 2:
            raise AssertionError("virtio-mmio is legacy: use -global virtio-mmio.force-legacy=false")
        self.avail_idx = {}
        self.used_seen = {}

    def r(self, off):
        return self.qt.readl(self.base + off)

    def w(self, off, v):
        self.qt.writel(self.base + off, v)

    def device_features(self):
        self.w(0x14, 0)
        lo = self.r(0x10)
        self.w(0x14, 1)
        hi = self.r(0x10)
        return lo | (hi << 32)

    def init(self, accept_mask):
        self.w(0x70, 0)
        self.w(0x70, 1)
        self.w(0x70, 3)
        feats = self.device_features() & accept_mask
        self.w(0x24, 0)
        self.w(0x20, feats & 0xFFFFFFFF)
        self.w(0x24, 1)
        self.w(0x20, feats >> 32)
        self.w(0x70, 11)
        if not self.r(0x70) & 8:
            raise AssertionError("FEATURES_OK not accepted")
        self.features = feats
        nq = 2 + bool(feats & (1 << F_STATS))
        self.blimpq = None
        if feats & ((1 << F_PAGE_STATES) | (1 << F_SHARE_HINTS)):
            self.blimpq = nq
            nq += 1
        for q in range(nq):
            self.setup_queue(q)
        self.w(0x70, 15)
        return feats

    def qmax(self, q):
        self.w(0x30, q)
        return self.r(0x34)

    def ring(self, q):
        base = self.ring_gpa + q * 0x2000
        return base, base + 0x400, base + 0x800      # desc, avail, used

    def setup_queue(self, q):
        if self.qmax(q) < self.QN:
            raise AssertionError(f"queue {q} max {self.qmax(q)}")
        d, a, u = self.ring(q)
        self.qt.memwrite(d, bytes(0x2000))
        self.w(0x38, self.QN)
        for off, addr in ((0x80, d), (0x90, a), (0xA0, u)):
            self.w(off, addr & 0xFFFFFFFF)
            self.w(off + 4, addr >> 32)
        self.w(0x44, 1)
        self.avail_idx[q] = 0
        self.used_seen[q] = 0

    def submit(self, q, out_bufs, in_bufs):
        """out_bufs/in_bufs: lists of (gpa, len). Returns used length (None: not used)."""
        d, a, u = self.ring(q)
        descs = [(g, n, 0) for g, n in out_bufs] + [(g, n, 2) for g, n in in_bufs]
        raw = b""
        for i, (g, n, fl) in enumerate(descs):
            nxt = i + 1 if i + 1 < len(descs) else 0
            raw += struct.pack("<QIHH", g, n, fl | (1 if i + 1 < len(descs) else 0), nxt)
        self.qt.memwrite(d, raw)
        slot = self.avail_idx[q] % self.QN
        self.qt.memwrite(a + 4 + 2 * slot, struct.pack("<H", 0))
        self.avail_idx[q] += 1
        self.qt.memwrite(a, struct.pack("<HH", 0, self.avail_idx[q] & 0xFFFF))
        self.w(0x50, q)
        used_idx = struct.unpack("<H", self.qt.memread(u + 2, 2))[0]
        if used_idx == self.used_seen[q]:
            return None
        slot = self.used_seen[q] % self.QN
        _id, ln = struct.unpack("<II", self.qt.memread(u + 4 + 8 * slot, 8))
        self.used_seen[q] = used_idx
        self.w(0x64, self.r(0x60))     # ack interrupt
        return ln

    def request(self, typ, count, payload, flags=0, reserved=0, resp_len=16, raw=None):
        """Send one blimpq request; returns (status, accepted, rejected, used_len)."""
        body = raw if raw is not None else struct.pack("<HHIQ", typ, flags, count, reserved) + payload
        self.qt.memwrite(self.buf_gpa, body)
        resp_gpa = self.buf_gpa + ((len(body) + 4095) & ~4095)
        self.qt.memwrite(resp_gpa, b"\xee" * 16)
        ins = [(resp_gpa, resp_len)] if resp_len else []
        used = self.submit(self.blimpq, [(self.buf_gpa, len(body))], ins)
        if used is None:
            raise AssertionError("request not consumed by the device")
        st, acc, rej, _ = struct.unpack("<IIII", self.qt.memread(resp_gpa, 16))
        return st, acc, rej, used


class QtestVm:
    """A microvm QEMU with the qtest accelerator (no guest, no vCPU: virtual time moves only by
    qtest clock_step), one virtio-balloon-device with `balloon_opts`, a QMP socket (self.qmp), a
    qtest connection (self.qt) and the driver (self.dev). Runs under `timeout`; QEMU's output
    goes to a log file (logtext()). stop() quits it and removes its files."""

    def __init__(self, qemu, balloon_opts, extra=(), mem_mb=MEM_MB):
        self.tmp = tempfile.mkdtemp(prefix="blimp-ext-")
        self.qmp_path = os.path.join(self.tmp, "qmp.sock")
        self.qt_path = os.path.join(self.tmp, "qtest.sock")
        self.pidfile = os.path.join(self.tmp, "pid")
        self.log = open(os.path.join(self.tmp, "qemu.log"), "w+")
        argv = ["timeout", "--kill-after=5", "300", qemu, "-M", "microvm", "-accel", "qtest",
                "-m", str(mem_mb), "-display", "none", "-nodefaults", "-pidfile", self.pidfile,
                "-global", "virtio-mmio.force-legacy=false",
                "-qtest", f"unix:{self.qt_path},server=on,wait=off",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                "-device", "virtio-balloon-device,id=balloon0" + (
                    "," + balloon_opts if balloon_opts else "")] + list(extra)
        self.qmp = None
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self.qt = QTest.connect(self.qt_path, reply_timeout=60.0)
            self.qmp = Qmp.connect(self.qmp_path, timeout=30)
        except Exception:
            self.stop()
            raise
        self.dev = VirtioMMIOBalloon(self.qt)

    def pid(self):
        with open(self.pidfile) as f:
            return int(f.read())

    def alive(self):
        return self.proc.poll() is None

    def logtext(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        try:
            if self.alive():
                try:
                    self.qmp.execute("quit", timeout=5)
                except Exception:  # noqa: BLE001
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            if self.alive():
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
        finally:
            self.log.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def fill(qt, pfn, n, byte):
    qt.memwrite(pfn * PAGE, bytes([byte]) * (n * PAGE))


def page_is(qt, pfn, byte):
    data = qt.memread(pfn * PAGE, PAGE)
    return data == bytes([byte]) * PAGE


def register_array(dev, gpa=ARRAY_GPA, npages=MEM_MB * 256, base=0):
    return dev.request(REQ_REGISTER, 1, struct.pack("<QQQ", gpa, npages, base))


def register_ages(dev, gpa=AGES_GPA, npages=MEM_MB * 256, reserved=0):
    return dev.request(REQ_AGES, 1, struct.pack("<QQQ", gpa, npages, reserved))


def write_ages(qt, clock, stamps, gpa=AGES_GPA):
    """The age block's header (magic, clock) and stamps {index: stamp} (patch 0012)."""
    qt.memwrite(gpa, struct.pack("<II", AGE_MAGIC, clock) + bytes(56))
    for i, v in stamps.items():
        qt.memwrite(gpa + 64 + 4 * i, struct.pack("<I", v))


def seal(dev, entries):
    """SEAL of (pfn, npages, flags, hash) entries."""
    payload = b"".join(struct.pack("<QIIQ", p, n, fl, h) for p, n, fl, h in entries)
    return dev.request(REQ_SEAL, len(entries), payload)


def unseal(dev, entries):
    """UNSEAL of (pfn, npages) entries."""
    payload = b"".join(struct.pack("<QII", p, n, 0) for p, n in entries)
    return dev.request(REQ_UNSEAL, len(entries), payload)
