"""Runs the hangar daemon (host/hangar, docs/hangar.md) for integration tests.

    hangar, kernel = find_hangar(build)          # Skip (exit 77) when either is not built
    with HangarRun(hangar, kernel, ["--status", "plain", "--vm", "name=a,app=hello"]) as r:
        r.wait_for(r"vm a: started QEMU pid (\\d+)")
        rc = r.wait()
        summary, vms = r.summary()               # run_dir/summary.json, and its VMs by name

Every run has its own run directory under a fresh temporary one. Leaving the `with` block (or
close()) stops hangar if it still runs, kills any QEMU of the run still alive and fails the test
if there was one, then removes the directory.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from blimp_vm import Skip, check


def find_hangar(build):
    """(hangar binary, blimp kernel) of a build directory, or $HANGAR and $BLIMP_KERNEL; Skip
    when either is missing."""
    hangar = os.environ.get("HANGAR") or os.path.join(build, "host", "hangar", "hangar")
    kernel = os.environ.get("BLIMP_KERNEL") or os.path.join(build, "blimp.elf")
    if not os.access(hangar, os.X_OK):
        raise Skip(f"{hangar} not built")
    if not os.path.exists(kernel):
        raise Skip(f"{kernel} not built")
    return hangar, kernel


def qemu_pids_of(run_dir):
    """Live processes whose command line mentions the run directory (its QEMUs)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if "qemu" in cmd and (run_dir in cmd or holds_file_in(pid, run_dir)):
            pids.append(int(pid))
    return pids


def holds_file_in(pid, run_dir):
    """Whether a process has a file of run_dir open: hangar hands its QEMUs their serial log as a
    descriptor, so the run directory is no longer on their command line."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(run_dir + "/"):
                return True
    except OSError:
        pass
    return False


class HangarRun:
    """`hangar run --kernel KERNEL --qemu QEMU --run-dir DIR [--csv CSV] ARGS...` in the
    background, stdout and stderr to files, stdin /dev/null.

    stop_signal: what close() sends a hangar still running (SIGKILL; SIGTERM lets it stop its
    VMs and restore KSM, and is followed by SIGKILL after 30 s). restore_ksm: close() runs
    `hangar ksm-restore` when the host's KSM save file (tests/lib/ksm.py SAVE_PATH) is left,
    for runs that change the real KSM. csv: write metrics to self.csv."""

    def __init__(self, hangar, kernel, args, qemu="stock", limit=240, csv=False,
                 stop_signal=signal.SIGKILL, restore_ksm=False, prefix="hangar-test-"):
        self.hangar, self.kernel = hangar, kernel
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.run_dir = os.path.join(self.tmp, "run")
        self.csv = os.path.join(self.tmp, "metrics.csv")
        self.cmd = [hangar, "run", "--kernel", kernel, "--qemu", qemu, "--run-dir", self.run_dir,
                    *(["--csv", self.csv] if csv else []), *args]
        self.out_path = os.path.join(self.tmp, "out.txt")
        self.err_path = os.path.join(self.tmp, "err.txt")
        self.stop_signal = stop_signal
        self.restore_ksm = restore_ksm
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL)
        self.limit = limit
        self.started = time.monotonic()

    def stderr(self):
        with open(self.err_path) as f:
            return f.read()

    def stdout(self):
        with open(self.out_path) as f:
            return f.read()

    def wait_for(self, pattern, timeout=120):
        """Waits until hangar's stderr matches; returns the match. AssertionError if hangar exits
        or the time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.stderr(), re.M)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"/{pattern}/ not in hangar's stderr\n{self.stderr()}")

    def wait(self, timeout=None):
        """hangar's exit status; AssertionError if it runs past `timeout` seconds (default:
        limit); close() then stops it."""
        timeout = timeout or self.limit
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"hangar did not finish in {timeout}s\n{self.stderr()}")

    def summary(self):
        with open(os.path.join(self.run_dir, "summary.json")) as f:
            s = json.load(f)
        return s, {v["name"]: v for v in s["vms"]}

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.restore_ksm:
            from ksm import SAVE_PATH
            # A hangar that had to be killed left its save in root's fixed place: put KSM back.
            if os.path.exists(SAVE_PATH):
                subprocess.run([self.hangar, "ksm-restore"], timeout=120)
        left = qemu_pids_of(self.run_dir)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)
        check(not left, f"QEMU processes left running: {left}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
