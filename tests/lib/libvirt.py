"""Blimp under libvirt, for the tests: a running libvirtd (started here when none is running, and
stopped again), Blimp domains made from the templates in image/libvirt/, and virsh.

    with Libvirtd() as lv:
        with BlimpDomain(lv, build, "blimp-stock.xml", name, app="kvcache", args=[...]) as dom:
            dom.create()
            dom.wait_serial(r"kvcache: t=")
            dom.setmem_kib(196608); dom.dommemstat(); dom.shutdown()

Everything goes through `virsh -c URI` under `timeout` (qemu:///system unless a domain is given
another daemon's URI). A domain is transient (virsh create): it is destroyed when the `with` block
is left, whatever happened. A second daemon standing for a second host:

    with SessionLibvirtd() as sess:                        # an unprivileged user's libvirtd
        with BlimpDomain(sess, build, "blimp-stock.xml", ...) as dom: ...

Standard library only.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from xml.sax.saxutils import escape

from blimp_vm import Skip

URI = "qemu:///system"
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "image",
                         "libvirt")
# The daemons libvirt's QEMU driver needs, in the order they are started; Debian's packages
# write their pid files here when started with -d.
DAEMONS = ("virtlogd", "libvirtd")
QEMU_LOG_DIR = "/var/log/libvirt/qemu"
QEMU_RUN_DIR = "/run/libvirt/qemu"
LIBVIRT_QEMU_LIB = "/var/lib/libvirt/qemu"


class VirshError(Exception):
    pass


def virsh(*args, timeout=120, check=True, uri=URI):
    """Runs virsh against `uri` (qemu:///system); returns its stdout. VirshError (with stderr)
    when it fails and `check`."""
    cmd = ["timeout", "--kill-after=5", str(timeout), "virsh", "-q", "-c", uri, *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise VirshError(f"`virsh {' '.join(args)}` exited with {r.returncode}"
                         f"{' (timed out)' if r.returncode == 124 else ''}: "
                         f"{(r.stderr or r.stdout).strip()}")
    return r.stdout


def _alive(pid):
    """True while `pid` runs (a zombie waiting for init to reap it has stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _pid_alive(pidfile):
    """The pid in `pidfile` if that process runs, else None."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _terminate(pid, grace=15):
    """SIGTERM, then SIGKILL after `grace` seconds; False when the process was already gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    return True


class Libvirtd:
    """A libvirtd answering on qemu:///system. When none answers and this process is root, starts
    virtlogd and libvirtd (`NAME -d`, no systemd needed) and stops exactly those two, by the pid
    they wrote, on exit. Skip only when libvirt cannot run here at all: not installed, or not
    running and not root to start it."""

    uri = URI

    def __init__(self, start_timeout=60):
        self.start_timeout = start_timeout
        self.started = []  # (name, pid) of the daemons this object started

    def __enter__(self):
        missing = [p for p in ("virsh", "libvirtd", "virtlogd") if shutil.which(p) is None]
        if missing:
            raise Skip(f"libvirt is not installed ({', '.join(missing)} not found): "
                       f"scripts/install-deps.sh installs libvirt-daemon-system and "
                       f"libvirt-clients")
        if self._answers():
            return self
        if os.geteuid() != 0:
            raise Skip("libvirtd is not running and only root can start it")
        try:
            for name in DAEMONS:
                pidfile = f"/run/{name}.pid"
                if _pid_alive(pidfile):
                    continue
                r = subprocess.run(["timeout", "30", name, "-d"], capture_output=True, text=True)
                if r.returncode != 0:
                    raise AssertionError(f"`{name} -d` failed ({r.returncode}): "
                                         f"{(r.stderr or r.stdout).strip()}")
                pid = None
                deadline = time.monotonic() + 10
                while pid is None and time.monotonic() < deadline:
                    pid = _pid_alive(pidfile)
                    time.sleep(0.1)
                if pid is None:
                    raise AssertionError(f"{name} -d wrote no live pid to {pidfile}")
                self.started.append((name, pid))
                print(f"  started {name} (pid {pid})", flush=True)
            deadline = time.monotonic() + self.start_timeout
            while not self._answers():
                if time.monotonic() > deadline:
                    raise AssertionError(f"libvirtd started but {URI} did not answer within "
                                         f"{self.start_timeout} s")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    @staticmethod
    def _answers():
        # `virsh uri` only opens the connection; `virsh version` would wait for libvirt's probe
        # of every emulator (a minute on some hosts, docs/libvirt.md).
        try:
            virsh("uri", timeout=30)
            return True
        except VirshError:
            return False

    def stop(self):
        """Stops the daemons this object started (libvirtd first), by pid."""
        for name, pid in reversed(self.started):
            if not _terminate(pid):
                continue
            print(f"  stopped {name} (pid {pid})", flush=True)
            if name == "libvirtd":
                self._reap_probes()
        self.started = []

    @staticmethod
    def _reap_probes():
        """A libvirtd stopped while it probes an emulator leaves the probe QEMU running
        (-daemonize, -S: it ignores SIGTERM); the libvirtd this object started is gone, so its
        probes are killed and their directories removed."""
        import glob
        for pidfile in glob.glob(os.path.join(LIBVIRT_QEMU_LIB, "qmp-*", "qmp.pid")):
            pid = _pid_alive(pidfile)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                print(f"  killed libvirt's emulator probe (pid {pid})", flush=True)
            shutil.rmtree(os.path.dirname(pidfile), ignore_errors=True)


class SessionLibvirtd:
    """A second, independent libvirt daemon on this machine, standing for a second host: an
    unprivileged user's session libvirtd (`libvirtd -d` as `user`, by default `blimp` when it
    exists, else `nobody`), with its home, configuration, cache and runtime directories in a
    fresh directory of that user's. Root reaches it through its socket:
    qemu+unix:///session?socket=DIR/run/libvirt/libvirt-sock (a connection libvirt accepts from
    root). Its QEMUs run as that user, TCG, and are created in seconds: /dev/kvm is closed to the
    user from the start, so libvirt's capability cache never goes stale (docs/libvirt.md, "Slow
    virsh create", is the system daemon's problem). Leaving the `with` block destroys its domains,
    stops the libvirtd and the virtlogd it spawned, kills any QEMU of it still running, and
    removes the directory."""

    def __init__(self, user=None, start_timeout=60):
        import pwd
        if shutil.which("libvirtd") is None:
            raise Skip("libvirt is not installed (libvirtd not found)")
        if os.geteuid() != 0:
            raise Skip("a session libvirtd for another user needs root")
        if user is None:
            user = "blimp"
            try:
                pwd.getpwnam(user)
            except KeyError:
                user = "nobody"
        pw = pwd.getpwnam(user)
        self.user, self.uid, self.gid = user, pw.pw_uid, pw.pw_gid
        self.start_timeout = start_timeout
        self.home = tempfile.mkdtemp(prefix="blimp-libvirt-session-")
        os.chown(self.home, self.uid, self.gid)
        self.run = os.path.join(self.home, "run")
        self.socket = os.path.join(self.run, "libvirt", "libvirt-sock")
        self.uri = f"qemu+unix:///session?socket={self.socket}"
        self.pid = None

    def __enter__(self):
        env = {"HOME": self.home, "XDG_RUNTIME_DIR": self.run,
               "XDG_CONFIG_HOME": os.path.join(self.home, "config"),
               "XDG_CACHE_HOME": os.path.join(self.home, "cache"),
               "XDG_DATA_HOME": os.path.join(self.home, "data"),
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        try:
            r = subprocess.run(["timeout", "30", "libvirtd", "-d"], env=env, user=self.uid,
                               group=self.gid, extra_groups=[], cwd=self.home,
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise AssertionError(f"session libvirtd as {self.user} failed ({r.returncode}): "
                                     f"{(r.stderr or r.stdout).strip()}")
            deadline = time.monotonic() + self.start_timeout
            while True:
                self.pid = self.pid or _pid_alive(os.path.join(self.run, "libvirt", "libvirtd.pid"))
                if self.pid and virsh("uri", timeout=30, check=False, uri=self.uri).strip():
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"session libvirtd as {self.user} did not answer on "
                                         f"{self.socket} within {self.start_timeout} s")
                time.sleep(0.3)
            print(f"  started a session libvirtd as {self.user} (pid {self.pid}): {self.uri}",
                  flush=True)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        import glob
        if self.pid and _alive(self.pid):
            for name in virsh("list", "--name", timeout=60, check=False, uri=self.uri).split():
                virsh("destroy", name, timeout=60, check=False, uri=self.uri)
        # libvirtd, then the virtlogd it started, then any QEMU (a domain or a capability probe)
        # a killed daemon left behind: every pid file under this daemon's directories.
        pids = [self.pid, _pid_alive(os.path.join(self.run, "libvirt", "virtlogd.pid"))]
        pids += [_pid_alive(p) for p in glob.glob(os.path.join(self.home, "**", "*.pid"),
                                                  recursive=True)
                 if not p.endswith(("driver.pid", "libvirtd.pid", "virtlogd.pid"))]
        for pid in dict.fromkeys(p for p in pids if p):
            _terminate(pid)
        if self.pid:
            print(f"  stopped the session libvirtd (pid {self.pid})", flush=True)
        self.pid = None
        shutil.rmtree(self.home, ignore_errors=True)


def others_can_read(path, execute=False):
    """True if a user other than the owner (libvirt runs QEMU as libvirt-qemu) can reach `path`:
    every directory above it searchable by others, the file readable (and executable)."""
    path = os.path.realpath(path)
    need = 0o004 | (0o001 if execute else 0)
    if os.stat(path).st_mode & need != need:
        return False
    d = os.path.dirname(path)
    while True:
        if not os.stat(d).st_mode & 0o001:
            return False
        if d == "/":
            return True
        d = os.path.dirname(d)


class BlimpDomain:
    """One transient Blimp domain made from image/libvirt/TEMPLATE. The kernel is copied into a
    temporary directory everyone can read (libvirt's QEMU runs as libvirt-qemu, which cannot
    reach a build directory under /root); so is the emulator when others cannot reach it. The
    serial console goes to a file there. Leaving the `with` block destroys the domain if it still
    runs and removes the directory."""

    def __init__(self, build, template, name, app="hello", args=(), memory_mib=512, emulator=None,
                 daemon=None, kernel=None, initrd=None, cmdline=None):
        """daemon: the Libvirtd or SessionLibvirtd to run it on (default qemu:///system).
        kernel, initrd, cmdline: another guest than Blimp (the Linux anchor guest,
        linux-anchor.xml); cmdline then replaces app= and args."""
        self.name = name
        self.uri = daemon.uri if daemon else URI
        self.tmp = tempfile.mkdtemp(prefix="blimp-libvirt-")
        os.chmod(self.tmp, 0o755)
        # A session daemon runs QEMU as its own user, which opens the serial log in here.
        if daemon is not None and getattr(daemon, "uid", None) is not None:
            os.chown(self.tmp, daemon.uid, daemon.gid)
        self.kernel = os.path.join(self.tmp, os.path.basename(kernel or "blimp.elf"))
        shutil.copyfile(kernel or os.path.join(build, "blimp.elf"), self.kernel)
        os.chmod(self.kernel, 0o644)
        self.initrd = ""
        if initrd:
            self.initrd = os.path.join(self.tmp, os.path.basename(initrd))
            shutil.copyfile(initrd, self.initrd)
            os.chmod(self.initrd, 0o644)
        if emulator and not others_can_read(emulator, execute=True):
            copy = os.path.join(self.tmp, "qemu-system-x86_64")
            shutil.copyfile(emulator, copy)
            os.chmod(copy, 0o755)
            emulator = copy
        self.emulator = emulator
        self.serial_path = os.path.join(self.tmp, "serial.log")
        self.cmdline = cmdline if cmdline is not None else " ".join([f"app={app}", *args])
        with open(os.path.join(TEMPLATES, template)) as f:
            xml = f.read()
        subs = {"NAME": name, "MEMORY_MIB": str(memory_mib), "KERNEL": self.kernel,
                "CMDLINE": self.cmdline, "SERIAL_LOG": self.serial_path, "INITRD": self.initrd,
                "EMULATOR": emulator or ""}
        for k, v in subs.items():
            xml = xml.replace(f"@{k}@", escape(v, {"'": "&apos;"}))
        left = re.findall(r"@[A-Z_]+@", xml)
        if left:
            raise AssertionError(f"{template}: placeholders not filled: {left}")
        self.xml_path = os.path.join(self.tmp, f"{name}.xml")
        with open(self.xml_path, "w") as f:
            f.write(xml)
        self.created = False
        self.log_start = 0  # offset of this run in libvirt's per-domain QEMU log

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.created and self.running():
            virsh("destroy", self.name, check=False, timeout=60, uri=self.uri)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def create(self, timeout=420):
        """virsh create; returns the seconds it took (libvirt probes the emulator first: up to a
        minute on some hosts, docs/libvirt.md)."""
        try:
            self.log_start = os.path.getsize(self.log_path())
        except OSError:
            self.log_start = 0
        t0 = time.monotonic()
        virsh("create", self.xml_path, timeout=timeout, uri=self.uri)
        self.created = True
        return time.monotonic() - t0

    def running(self):
        return self.name in virsh("list", "--name", check=False, timeout=60, uri=self.uri).split()

    def log_path(self):
        return os.path.join(QEMU_LOG_DIR, f"{self.name}.log")

    def libvirt_log(self):
        """This run's part of libvirt's log of the domain: QEMU's command line and stderr, and
        libvirt's 'shutting down, reason=...'."""
        try:
            with open(self.log_path(), errors="replace") as f:
                f.seek(self.log_start)
                return f.read()
        except OSError:
            return ""

    def pid(self):
        pid = _pid_alive(os.path.join(QEMU_RUN_DIR, f"{self.name}.pid"))
        if pid is None:
            raise AssertionError(f"{self.name}: no running QEMU")
        return pid

    def rss_kib(self):
        with open(f"/proc/{self.pid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def serial(self):
        try:
            with open(self.serial_path, errors="replace") as f:
                return f.read().replace("\r", "")
        except OSError:
            return ""

    def wait_serial(self, pattern, timeout=60, start=0):
        """Waits until the guest's console (from offset `start`) matches; returns the match."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            out = self.serial()
            m = rx.search(out, start)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: /{pattern}/ not seen within {timeout} s\n"
                                     f"--- console ---\n{out[-3000:]}")
            if self.created and not self.running():
                raise AssertionError(f"{self.name}: the domain stopped before /{pattern}/\n"
                                     f"--- console ---\n{out[-3000:]}\n--- libvirt log ---\n"
                                     f"{self.libvirt_log()[-2000:]}")
            time.sleep(0.25)

    def console(self, command, marker, timeout=120):
        """Types `command` (None: nothing) on the domain's pty console (linux-anchor.xml) and
        waits for output matching `marker`; returns everything read. What the guest printed
        while nobody read waits in the pty, so console(None, "ready") after boot sees it."""
        import select
        import termios
        import tty
        path = virsh("ttyconsole", self.name, timeout=60, uri=self.uri).strip()
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd, termios.TCSANOW)
            if command is not None:
                os.write(fd, command.encode() + b"\n")
            rx, out = re.compile(marker), ""
            deadline = time.monotonic() + timeout
            while not rx.search(out):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: /{marker}/ not seen {timeout} s after "
                                         f"`{command}`\n--- console ---\n{out[-2000:]}")
                if select.select([fd], [], [], min(left, 1.0))[0]:
                    out += os.read(fd, 4096).decode(errors="replace").replace("\r", "")
            return out
        finally:
            os.close(fd)

    def dommemstat(self):
        """virsh dommemstat as {tag: int} (libvirt's names; sizes in KiB)."""
        out = virsh("dommemstat", self.name, timeout=60, uri=self.uri)
        stats = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                stats[parts[0]] = int(parts[1])
        return stats

    def set_stats_period(self, seconds):
        virsh("dommemstat", self.name, "--period", str(seconds), "--live", timeout=60, uri=self.uri)

    def setmem_kib(self, kib):
        virsh("setmem", self.name, str(kib), "--live", timeout=60, uri=self.uri)

    def wait_actual(self, kib, timeout=90):
        """Waits until the balloon's actual (dommemstat) is `kib`; returns the seconds taken."""
        t0 = time.monotonic()
        while True:
            actual = self.dommemstat().get("actual")
            if actual == kib:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                balloon = "\n".join(ln for ln in self.serial().splitlines() if "balloon" in ln)
                raise AssertionError(f"{self.name}: actual {actual} KiB, not {kib} KiB after "
                                     f"{timeout} s\n--- guest balloon lines ---\n{balloon[-2000:]}")
            time.sleep(0.25)

    def monitor(self, command, **arguments):
        """A QMP command through virsh qemu-monitor-command; returns its 'return' value."""
        import json
        cmd = {"execute": command}
        if arguments:
            cmd["arguments"] = arguments
        out = virsh("qemu-monitor-command", self.name, json.dumps(cmd), timeout=60, uri=self.uri)
        return json.loads(out)["return"]

    def shutdown(self, timeout=90):
        """virsh shutdown (the ACPI power button); waits until the domain is gone and returns the
        seconds it took."""
        t0 = time.monotonic()
        virsh("shutdown", self.name, timeout=60, uri=self.uri)
        while self.running():
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{self.name}: still running {timeout} s after virsh "
                                     f"shutdown\n--- console ---\n{self.serial()[-2000:]}")
            time.sleep(0.25)
        return time.monotonic() - t0
