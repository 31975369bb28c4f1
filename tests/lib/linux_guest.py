"""Launch the anchor Linux guest (image/linux/) in QEMU, under `timeout`, with a QMP socket.

    from linux_guest import LinuxGuest, find_qemu, guest_files
    g = LinuxGuest(qemu="/usr/bin/qemu-system-x86_64", build_dir="build", mem_mb=512,
                   balloon="free-page-reporting=on")
    g.start()                                   # boots, waits for "BLIMP-LINUX: ready"
    g.command("fill 64", "done fill")           # runs a console command, waits for its marker
    g.qmp.execute("balloon", value=256 << 20)
    print(g.rss_kib())                          # QEMU's resident set (KiB)
    g.stop()                                    # poweroff, then kills whatever is left

The console (ttyS0) is QEMU's stdio; every line is kept in g.lines. Standard library only.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blimp_vm import STOCK_QEMU, find_patched_qemu, patched_qemu_path  # noqa: E402,F401
from qmp import Qmp, QmpConnectError  # noqa: E402

patched_qemu = patched_qemu_path


def guest_files(build_dir):
    """(vmlinuz, initramfs) of the Linux guest, or None when image/linux/build.sh has not run."""
    d = os.path.join(build_dir, "linux-guest")
    k, i = os.path.join(d, "vmlinuz"), os.path.join(d, "initramfs.cpio.gz")
    return (k, i) if os.path.exists(k) and os.path.exists(i) else None


def find_qemu(build_dir, patched):
    if patched:
        return find_patched_qemu(build_dir)
    return STOCK_QEMU if os.access(STOCK_QEMU, os.X_OK) else None


class GuestError(Exception):
    pass


class LinuxGuest:
    def __init__(self, qemu, build_dir, mem_mb=512, balloon="", machine="pc",
                 workload="cmd", extra_args=(), timeout_s=600, name="linux", smp=1,
                 transport="pci", wrapper=(), cmdline="", accel="tcg"):
        self.qemu = qemu
        self.build_dir = build_dir
        self.mem_mb = mem_mb
        self.balloon = balloon
        self.machine = machine
        self.workload = workload
        self.extra_args = list(extra_args)
        self.timeout_s = timeout_s
        self.name = name
        self.smp = smp
        self.transport = transport
        self.wrapper = list(wrapper)      # e.g. ["strace", "-f", "-c", ...]
        self.cmdline = cmdline            # extra kernel command line
        self.accel = accel                # e.g. "tcg,thread=multi": each vCPU on a host thread
        self.tmp = tempfile.mkdtemp(prefix=f"blimp-{name}-")
        self.qmp_path = os.path.join(self.tmp, "qmp.sock")
        self.pidfile = os.path.join(self.tmp, "qemu.pid")
        self.proc = None
        self.qmp = None
        self.lines = []
        self._cv = threading.Condition()
        self._reader = None
        self._seen = 0

    # ---- lifecycle --------------------------------------------------------------------
    def argv(self):
        files = guest_files(self.build_dir)
        if not files:
            raise GuestError("Linux guest not built (image/linux/build.sh BUILD_DIR)")
        kernel, initrd = files
        dev = "virtio-balloon-pci" if self.transport == "pci" else "virtio-balloon-device"
        bopts = f"{dev},id=balloon0" + (f",{self.balloon}" if self.balloon else "")
        return ["timeout", "--kill-after=5", str(self.timeout_s)] + self.wrapper + [
            # mem-merge=off: the anchor's RSS is what the tests and benches measure, and the
            # host's KSM (run by other users, or left on by a killed experiment) would merge the
            # zero pages its fill writes.
            self.qemu, "-accel", self.accel, "-M", f"{self.machine},mem-merge=off", "-m", str(self.mem_mb),
            "-smp", str(self.smp), "-display", "none", "-serial", "stdio", "-monitor", "none",
            "-no-reboot", "-nodefaults", "-pidfile", self.pidfile,
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-kernel", kernel, "-initrd", initrd,
            "-append", f"console=ttyS0 quiet panic=-1 blimp.workload={self.workload} "
                       f"{self.cmdline}".strip(),
            "-device", bopts] + self.extra_args

    def start(self, ready_timeout=180):
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while self.qmp is None:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise GuestError(f"QEMU exited ({self.proc.returncode}) at startup: "
                                 + "\n".join(self.lines[-20:]))
            try:
                self.qmp = Qmp.connect(self.qmp_path, timeout=1)
            except QmpConnectError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
        self.wait_for(r"BLIMP-LINUX: ready", ready_timeout)
        return self

    def _read_console(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self.lines.append("<<EOF>>")
            self._cv.notify_all()

    def wait_for(self, pattern, timeout=60, since_last=True):
        """Wait for a console line matching regex `pattern` (after the last matched line when
        since_last). Returns the re.Match; raises GuestError on timeout or QEMU exit."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cv:
            i = self._seen if since_last else 0
            while True:
                while i < len(self.lines):
                    if self.lines[i] == "<<EOF>>":
                        raise GuestError(f"QEMU exited while waiting for {pattern!r}; "
                                         f"console tail:\n" + "\n".join(self.lines[-30:]))
                    m = rx.search(self.lines[i])
                    i += 1
                    if m:
                        self._seen = i
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestError(f"timeout ({timeout}s) waiting for {pattern!r}; console "
                                     "tail:\n" + "\n".join(self.lines[-30:]))
                self._cv.wait(left)

    def send(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def command(self, line, done_pattern, timeout=120):
        self.send(line)
        return self.wait_for(done_pattern, timeout)

    def meminfo(self, timeout=60):
        self.send("meminfo")
        self.wait_for(r"BLIMP-LINUX: meminfo-begin", timeout)
        start = self._seen
        self.wait_for(r"BLIMP-LINUX: meminfo-end", timeout)
        out = {}
        for ln in self.lines[start:self._seen - 1]:
            m = re.match(r"(\S+):\s+(\d+)", ln)
            if m:
                out[m.group(1)] = int(m.group(2))
        return out

    def qemu_pid(self):
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def rss_kib(self):
        pid = self.qemu_pid()
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/status") as f:
                for ln in f:
                    if ln.startswith("VmRSS:"):
                        return int(ln.split()[1])
        except OSError:
            return None
        return None

    def balloon_target(self, target_mb, timeout=120, tolerance_mb=2):
        """Set the balloon target (guest memory size) and wait until query-balloon reaches it.
        Returns seconds taken."""
        t0 = time.monotonic()
        self.qmp.execute("balloon", value=target_mb << 20)
        while True:
            actual = self.qmp.execute("query-balloon")["actual"] >> 20
            if abs(actual - target_mb) <= tolerance_mb:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise GuestError(f"balloon stuck at {actual} MiB, target {target_mb} MiB")
            time.sleep(0.05)

    def stop(self, timeout=30):
        """Power the guest off (falls back to quit, then SIGKILL of the process group)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.send("poweroff")
                self.proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    if self.qmp:
                        self.qmp.execute("quit", timeout=5)
                    self.proc.wait(timeout=10)
                except Exception:  # noqa: BLE001 - we are cleaning up, whatever failed
                    pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait(timeout=10)
        if self.qmp:
            self.qmp.close()
            self.qmp = None
        if self._reader:
            self._reader.join(timeout=5)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
