"""Boots blimp (or any kernel) in QEMU for integration tests.

    with BlimpVM(build_dir, app="hello", machine="microvm") as vm:
        vm.wait_for(r"heap works", timeout=30)
        status = vm.wait_exit(timeout=30)   # the app's exit status

Every QEMU runs under `timeout` (a hung guest fails the test, it never hangs CI), its serial
output is collected by a thread, and leaving the `with` block kills whatever is still running.

The harness refuses silent host faults (docs/testing.md):
  - a guest line matching HOST_FAULT_RE fails the test at wait_exit() or when the `with` block
    is left, unless the VM was made with expect_host_faults=True;
  - wait_exit() tells a guest that exited 0 (QEMU status 1 through isa-debug-exit) from a QEMU
    that exited 1 on an error of its own (bad option, missing device): the latter is a VMError
    quoting QEMU's message;
  - BLIMP_ACCEL=kvm runs the VMs with -accel kvm where /dev/kvm is usable hardware KVM
    (kvm_usable()); on kvm_pvm or without /dev/kvm they stay on TCG and say why, once.
"""

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

QEMU = os.environ.get("BLIMP_QEMU", "qemu-system-x86_64")
# The distribution's QEMU (hangar's `--qemu stock`, the Linux anchor's baseline).
STOCK_QEMU = "/usr/bin/qemu-system-x86_64"
QBOOT = "/usr/share/qemu/qboot.rom"
FAULT_STATUS = 125

# Guest lines that say the host misbehaved: the virtio core's "queue disabled until device
# reset" (a bogus used ring entry) and "queues stopped, driver must recover" (the device set
# DEVICE_NEEDS_RESET or reset itself), the balloon's "device reset by the host" and "the host did
# not return a buffer", and any driver's "host fault" / "... is broken". A test that provokes
# them on purpose passes expect_host_faults=True; anywhere else they fail the test.
HOST_FAULT_RE = re.compile(
    r"^.*(?:host fault|did not return a buffer|queue disabled until device reset"
    r"|driver must recover|device reset by the host|is broken).*$", re.M)
# smp.background=churn found a page changed under a CPU that held it (mm/background_churn.h): a
# lost or corrupted page, which no test may provoke, host faults or not.
CHURN_MISMATCH_RE = re.compile(r"^.*smp\.background=churn: .* changed while held.*$", re.M)
# QEMU's own errors on stderr ("qemu-system-x86_64: -device foo: ..."), not its warnings.
QEMU_ERROR_RE = re.compile(r"^qemu-system-[\w-]+: (?!warning:).*$", re.M)
# What kernel_main prints before it powers off with the app's status.
GUEST_EXIT_RE = re.compile(r"^blimp: app '[^']*' exited with status (\d+)$", re.M)


class VMError(Exception):
    pass


_kvm_verdict = None


def kvm_usable(qemu=None):
    """(True, reason) if QEMU can run guests with -accel kvm on hardware KVM here, else
    (False, reason). kvm_pvm (a software nested hypervisor behind /dev/kvm) counts as unusable:
    it is slower than TCG for these guests and not what the tests mean by KVM. The answer is
    computed once: /dev/kvm, /sys/module/kvm_pvm, then a probe QEMU that only starts the
    accelerator."""
    global _kvm_verdict
    if _kvm_verdict is not None:
        return _kvm_verdict
    if not os.path.exists("/dev/kvm"):
        _kvm_verdict = (False, "no /dev/kvm")
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        _kvm_verdict = (False, "/dev/kvm is not readable and writable by this user")
    elif os.path.exists("/sys/module/kvm_pvm"):
        _kvm_verdict = (False, "/dev/kvm is kvm_pvm (a software nested hypervisor, "
                               "/sys/module/kvm_pvm), not hardware KVM")
    else:
        try:
            r = subprocess.run(["timeout", "--kill-after=2", "20", qemu or QEMU, "-accel", "kvm",
                                "-M", "none", "-display", "none", "-nodefaults",
                                "-monitor", "stdio"],
                               input="quit\n", capture_output=True, text=True)
            if r.returncode == 0:
                _kvm_verdict = (True, "hardware KVM: a probe QEMU started with -accel kvm")
            else:
                msg = (r.stderr.strip() or f"exit status {r.returncode}").splitlines()[-1]
                _kvm_verdict = (False, f"a probe QEMU with -accel kvm failed: {msg}")
        except OSError as e:
            _kvm_verdict = (False, f"could not run the probe QEMU: {e}")
    return _kvm_verdict


_accel_said = False


def requested_accel(qemu=None):
    """The accelerator BlimpVM uses: BLIMP_ACCEL (tcg, the default, or kvm). kvm where it is not
    usable falls back to tcg, and says why once per process."""
    global _accel_said
    want = os.environ.get("BLIMP_ACCEL", "tcg").strip() or "tcg"
    if want == "tcg":
        return "tcg"
    if want != "kvm":
        raise VMError(f"BLIMP_ACCEL={want!r}: expected tcg or kvm")
    ok, reason = kvm_usable(qemu)
    if not _accel_said:
        _accel_said = True
        print(f"BLIMP_ACCEL=kvm: {'using -accel kvm' if ok else 'skipped, using tcg'} ({reason})",
              flush=True)
    return "kvm" if ok else "tcg"


def requested_smp():
    """vCPUs for every VM whose test does not pass -smp itself: BLIMP_TEST_SMP (default 1)."""
    want = os.environ.get("BLIMP_TEST_SMP", "1").strip() or "1"
    if not want.isdigit() or not 1 <= int(want) <= 64:
        raise VMError(f"BLIMP_TEST_SMP={want!r}: expected 1 to 64")
    return int(want)


def requested_background():
    """Idle work for the APs of every VM booted with -kernel: BLIMP_TEST_BACKGROUND (off, spin
    or churn; default off), passed as smp.background= (mm/background_churn.h). With
    BLIMP_TEST_SMP=N it keeps every CPU busy while the test runs on the BSP."""
    want = os.environ.get("BLIMP_TEST_BACKGROUND", "off").strip() or "off"
    if want not in ("off", "spin", "churn"):
        raise VMError(f"BLIMP_TEST_BACKGROUND={want!r}: expected off, spin or churn")
    return want


class BlimpVM:
    PROMPT_WAIT = 0.2  # seconds a partial line waits before `output` takes it anyway

    def __init__(self, build_dir, app="hello", args=(), machine="microvm", memory="256M",
                 extra=(), iso=False, qmp=False, limit=600, qemu=None, kernel=None,
                 name=None, qtest=False, expect_host_faults=False, accel=None, image=None,
                 image_device="ide-cd"):
        """expect_host_faults=True: the test provokes host faults on purpose, so guest lines
        matching HOST_FAULT_RE are allowed (the test checks them itself). accel: tcg or kvm;
        None follows BLIMP_ACCEL (requested_accel()).

        image=PATH boots a disk or CD image (image/make-image.sh) through the firmware, like
        iso=True but any image, its app and arguments being the image's own (app and args are
        unused): a raw drive behind image_device, a QEMU device that takes drive= ("ide-cd",
        "ide-hd", "virtio-blk-pci,disable-modern=on", "scsi-cd,bus=scsi0.0" with a
        virtio-scsi-pci in extra, ...)."""
        self.build_dir = build_dir
        self.expect_host_faults = expect_host_faults
        self._faults_checked = False
        self.accel = accel or requested_accel(qemu)
        # BLIMP_TEST_SMP=N: every VM a test does not size itself gets N vCPUs (multi-threaded
        # under TCG), so the whole suite can be run on an SMP guest.
        smp = requested_smp()
        if smp > 1 and "-smp" not in extra:
            extra = ["-smp", str(smp), *extra]
            if self.accel == "tcg":
                self.accel = "tcg,thread=multi"
        self.machine = machine
        self.background = "off"  # smp.background= this harness added (BLIMP_TEST_BACKGROUND)
        self.tmp = tempfile.mkdtemp(prefix="blimp-vm-")
        self.qmp_path = os.path.join(self.tmp, "qmp.sock") if qmp else None
        # qtest=True: a qtest socket beside TCG (tests/lib/qtest.py reads and writes guest
        # memory and device registers through it).
        self.qtest_path = os.path.join(self.tmp, "qtest.sock") if qtest else None
        self.name = name or app
        cmd = ["timeout", "--kill-after=5", str(limit), qemu or QEMU, "-accel", self.accel,
               "-m", memory, "-display", "none", "-serial", "stdio", "-no-reboot",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-nodefaults"]
        if machine == "microvm":
            cmd += ["-M", "microvm"]
        elif machine in ("q35", "pc"):
            cmd += ["-M", machine]
            if not iso and not image:
                cmd += ["-bios", QBOOT]
        else:
            cmd += ["-M", machine]
        if iso:
            cmd += ["-cdrom", os.path.join(build_dir, "blimp.iso")]
        elif not image:
            background = requested_background()
            words = [f"app={app}", *args]
            if background != "off" and not any(a.startswith("smp.background=") for a in args):
                words.append(f"smp.background={background}")
                self.background = background
            cmd += ["-kernel", kernel or os.path.join(build_dir, "blimp.elf"),
                    "-append", " ".join(words)]
        if self.qmp_path:
            cmd += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if self.qtest_path:
            cmd += ["-qtest", f"unix:{self.qtest_path},server=on,wait=off",
                    "-qtest-log", "/dev/null"]
        cmd += list(extra)
        if image:
            # After extra: image_device may sit on a controller that extra adds.
            cd = image_device.split(",")[0].endswith("-cd")
            cmd += ["-drive", f"file={image},format=raw,if=none,id=blimp-image"
                              + (",readonly=on" if cd else ""),
                    "-device", f"{image_device},drive=blimp-image,bootindex=0"]
        self.cmd = cmd
        self.kernel = kernel
        # output: the serial console and QEMU's stderr, as they arrive; serial and stderr: each
        # alone.
        self.output = ""
        self.serial = ""
        self.stderr = ""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout, False),
                                        daemon=True)
        self._err_reader = threading.Thread(target=self._read, args=(self.proc.stderr, True),
                                            daemon=True)
        self._reader.start()
        self._err_reader.start()
        self.started = time.monotonic()

    def _read(self, pipe, is_stderr):
        # `output` takes whole lines from each stream: a QEMU warning that arrives while the
        # guest is halfway through a line must not split that line (a test's pattern would no
        # longer match it). A line left open for PROMPT_WAIT s (a firmware prompt, a countdown)
        # goes in as it is. serial and stderr get the text as it comes.
        fd = pipe.fileno()
        partial = ""
        while True:
            if partial and not select.select([fd], [], [], self.PROMPT_WAIT)[0]:
                with self._changed:
                    self.output += partial
                    partial = ""
                    self._changed.notify_all()
                continue
            raw = os.read(fd, 4096)
            if not raw:
                break
            text = raw.decode("utf-8", "replace").replace("\r", "")
            with self._changed:
                if is_stderr:
                    self.stderr += text
                else:
                    self.serial += text
                partial += text
                cut = partial.rfind("\n") + 1
                if cut:
                    self.output += partial[:cut]
                    partial = partial[cut:]
                self._changed.notify_all()
        with self._changed:
            self.output += partial
            self._changed.notify_all()

    def _readers_alive(self):
        return self._reader.is_alive() or self._err_reader.is_alive()

    def _join_readers(self):
        self._reader.join(timeout=5)
        self._err_reader.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if exc_type is None:
            self.check_host_faults()
        elif not self.expect_host_faults and self.host_faults():
            # The test failed already; its error stays the one reported, with the faults beside.
            print(f"{self.name}: host fault lines in the guest output:\n  "
                  + "\n  ".join(self.host_faults()), flush=True)

    def host_faults(self):
        """The guest's lines that report a host fault (HOST_FAULT_RE)."""
        return HOST_FAULT_RE.findall(self.serial)

    def check_host_faults(self):
        """Raises VMError quoting the host-fault lines, unless expect_host_faults, and quoting
        smp.background=churn's changed-page lines in any case. Runs once, at wait_exit() or when
        the `with` block is left."""
        if self._faults_checked:
            return
        self._faults_checked = True
        if (self.background != "off" and "blimp: starting app" in self.serial
                and f"smp: background {self.background} on" not in self.serial):
            raise VMError(f"{self.name}: BLIMP_TEST_BACKGROUND={self.background} but the guest "
                          f"did not start it\n--- output ---\n{self.output[-4000:]}")
        lost = CHURN_MISMATCH_RE.findall(self.serial)
        if lost:
            raise VMError(f"{self.name}: a page changed while a CPU held it:\n  "
                          + "\n  ".join(lost) + f"\n--- output ---\n{self.output[-4000:]}")
        if self.expect_host_faults:
            return
        lines = self.host_faults()
        if lines:
            raise VMError(f"{self.name}: the guest reported host faults the test did not ask for "
                          f"(BlimpVM(expect_host_faults=True) if it provokes them):\n  "
                          + "\n  ".join(lines) + f"\n--- output ---\n{self.output[-4000:]}")

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self._join_readers()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if not self._readers_alive():
                pipe.close()

    @property
    def pid(self):
        """The QEMU process (the child of `timeout`)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        pids = out.stdout.split()
        return int(pids[0]) if pids else None

    def wait_for(self, pattern, timeout=60, start=0):
        """Waits until the serial output (from offset `start`) matches; returns the match."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                m = rx.search(self.output, start)
                if m:
                    return m
                if self.proc.poll() is not None and not self._readers_alive():
                    raise VMError(f"{self.name}: QEMU exited before /{pattern}/ appeared\n"
                                  f"--- output ---\n{self.output}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VMError(f"{self.name}: /{pattern}/ not seen within {timeout}s\n"
                                  f"--- output ---\n{self.output}")
                self._changed.wait(min(left, 0.5))

    def wait_exit(self, timeout=120):
        """Waits for QEMU to exit and returns the guest's status (isa-debug-exit decoding).
        VMError if QEMU exited on an error of its own, or if the guest reported host faults the
        test did not expect."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise VMError(f"{self.name}: guest did not exit within {timeout}s\n"
                          f"--- output ---\n{self.output}")
        self._join_readers()
        if rc == 124:
            raise VMError(f"{self.name}: QEMU was killed by its timeout\n{self.output}")
        if not rc & 1:
            raise VMError(f"{self.name}: QEMU exited with {rc} without a guest status\n"
                          f"{self.output}")
        status = rc >> 1
        if status == 0:
            self._check_not_qemu_error()
        self.check_host_faults()
        return status

    def _check_not_qemu_error(self):
        """QEMU exits 1 both when the guest wrote 0 to isa-debug-exit and when QEMU itself fails
        (bad option, missing device). The guest's exit line tells them apart; without it, QEMU's
        error lines on stderr, or no guest output at all, mean QEMU failed."""
        if GUEST_EXIT_RE.search(self.serial):
            return
        errors = QEMU_ERROR_RE.findall(self.stderr)
        if errors or (self.kernel is None and not self.serial.strip()):
            raise VMError(f"{self.name}: QEMU exited with status 1 on an error of its own, not "
                          f"a guest exit status 0:\n  "
                          + "\n  ".join(errors or [self.stderr.strip() or "(no output at all)"])
                          + f"\n--- command ---\n{' '.join(self.cmd)}")

    def rss_kib(self):
        pid = self.pid
        if pid is None:
            return None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None


class TestRunner:
    """Minimal runner: python3 test_x.py --build-dir DIR [-k substring]. Prints one line per test
    and the closing line 'N passed, N failed'. A script's own options: option() before main(),
    their values in `options` once main() has parsed the command line."""

    def __init__(self):
        self.tests = []
        self.options = None
        self._options = []

    def test(self, fn):
        self.tests.append(fn)
        return fn

    def option(self, *args, **kwargs):
        """One more command-line option (argparse's add_argument arguments)."""
        self._options.append((args, kwargs))

    def main(self):
        import argparse
        ap = argparse.ArgumentParser()
        ap.add_argument("--build-dir", default="build")
        ap.add_argument("-k", dest="filter", default="")
        for args, kwargs in self._options:
            ap.add_argument(*args, **kwargs)
        opts = self.options = ap.parse_args()
        build = os.path.abspath(opts.build_dir)
        passed = failed = 0
        for fn in self.tests:
            if opts.filter not in fn.__name__:
                continue
            t0 = time.monotonic()
            try:
                fn(build)
            except Skip as e:
                print(f"SKIP {fn.__name__}: {e}", flush=True)
                continue
            except Exception as e:  # noqa: BLE001 - report every failure the same way
                failed += 1
                print(f"FAIL {fn.__name__} ({time.monotonic() - t0:.1f}s): {e}", flush=True)
                continue
            passed += 1
            print(f"ok   {fn.__name__} ({time.monotonic() - t0:.1f}s)", flush=True)
        print(f"{passed} passed, {failed} failed")
        sys.exit(1 if failed else (0 if passed else 77))


class Skip(Exception):
    pass


def wait_balloon(q, predicate, timeout=60, vm=None):
    """Polls QMP query-balloon until predicate(actual) holds; returns actual. On timeout the
    error carries the guest's output (balloon lines first) when `vm` is given."""
    deadline = time.monotonic() + timeout
    while True:
        actual = q.execute("query-balloon")["actual"]
        if predicate(actual):
            return actual
        if time.monotonic() > deadline:
            tail = ""
            if vm is not None:
                lines = vm.output.splitlines()
                tail = "\n--- guest balloon lines ---\n" + "\n".join(
                    ln for ln in lines if "balloon" in ln)[-2000:] + "\n--- output tail ---\n" + \
                    "\n".join(lines[-20:])
            raise AssertionError(f"balloon did not get there in {timeout}s: actual={actual >> 20} MiB"
                                 + tail)
        time.sleep(0.05)


PAGE_STATES_REGISTERED = r"page-states: registered (\d+) pages"


def require_page_states(vm, timeout=120):
    """For VMs on the patched QEMU with page-states=on: the guest must have registered its
    page-state array before its app started (kernel_main calls page_states::init()). No
    registration ("page-states: off", a failed PSTATE_REGISTER, nothing said) fails the test; it is
    not a skip: the only legitimate skip is the patched QEMU not being built, decided before the
    VM starts. Returns the registration match."""
    m = vm.wait_for(r"blimp: starting app", timeout)
    boot = vm.output[:m.end()]
    reg = re.search(PAGE_STATES_REGISTERED, boot)
    if not reg:
        said = [ln for ln in boot.splitlines() if "page-states" in ln or "page_states" in ln]
        raise AssertionError(
            f"{vm.name}: the patched QEMU offered page states but the guest did not register "
            f"its page-state array before the app started; it said:\n  "
            + ("\n  ".join(said) or "(no page-states line at all)")
            + f"\n--- boot output ---\n{boot[-3000:]}")
    return reg


def patched_qemu_path(build):
    """Where host/qemu/build.sh BUILD_DIR puts the patched QEMU (built or not)."""
    return os.path.join(build, "qemu", "qemu-system-x86_64")


def find_patched_qemu(build):
    """The patched QEMU of a build directory, or None when it is not built."""
    qemu = patched_qemu_path(build)
    return qemu if os.access(qemu, os.X_OK) else None


def require_patched_qemu(build):
    """The patched QEMU of a build directory; Skip (exit 77) when it is not built."""
    qemu = find_patched_qemu(build)
    if not qemu:
        raise Skip(f"patched QEMU not built ({patched_qemu_path(build)}; host/qemu/build.sh BUILD_DIR)")
    return qemu


def check(cond, message):
    if not cond:
        raise AssertionError(message)
