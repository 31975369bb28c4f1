#!/usr/bin/env python3
"""virtio-balloon benchmark: Blimp against the anchor (Debian 12's Linux), same stock QEMU.

    python3 bench/balloon/run.py [--build-dir build] [--runs 3] [--quick] [--mem 1024]
                                 [--machines q35,microvm] [--out bench/balloon/RESULTS.md]
                                 [--qemu-variants stock,coalesce,patched]

Boots, in the same run and one VM at a time, the anchor Linux guest (image/linux/) and Blimp
(build/blimp.elf, app memhog) under the same /usr/bin/qemu-system-x86_64 (-accel tcg, -smp 1,
same -m) and measures for each:

  boot      wall clock from QEMU's start to the workload's ready line
            (Linux: "BLIMP-LINUX: ready", SeaBIOS + -kernel bzImage + initramfs;
             Blimp: "blimp: starting app", qboot + -kernel PVH ELF). Each run also boots each
            guest once with the other's firmware (Linux via qboot, Blimp via SeaBIOS) so the
            firmware's share is visible.
  inflate   free page reporting off. The guest touches FILL MiB (~80% of RAM) and frees it, so
            the host backs it (Linux: `fill`/`drop` on tmpfs; Blimp: memhog alloc/free). Then
            QMP `balloon` to TARGET MiB; query-balloon polled every 5 ms until it reports the
            target. MiB/s = inflated MiB / that time.
  returned  QEMU's VmRSS before the inflate and 1 s after it, as a fraction of the inflated MiB.
  deflate   QMP `balloon` back to the full size, timed the same way.
  reporting free-page-reporting=on, fresh VM. The guest touches REPORT MiB and frees it (Linux:
            `fill`/`drop`; Blimp: memhog alloc, wait 1 s, free). QEMU's VmRSS is polled every
            20 ms until it has fallen by 90% of the freed amount from its peak (give up after
            60 s). Timed from the free's completion marker ("done drop" / "step 3 freed") and,
            second figure, from the moment the free started (Linux: `drop` sent; Blimp: the
            "step 2 waited" line, after which memhog frees at once).

QEMU variants (--qemu-variants, default "stock"): everything above runs on the stock QEMU.
"coalesce" (Blimp's patched QEMU, build/qemu/, with coalesce-discard=on) and "patched" (the
same binary, coalesce-discard=off) repeat only the inflate/deflate measurement, right after the
stock one of the same guest, and read QMP x-blimp-balloon-info before and after the inflate
(discard calls/pages) and after the deflate (MADV_WILLNEED calls/pages). Their results get a
table of their own.

Each measurement is repeated --runs times (median, min-max). A Markdown table goes to
RESULTS.md (and stdout), raw samples to results.json beside it. Exit status: 0 when every
guest booted and every balloon target was reached (a reporting give-up is a result, not an
error), 1 otherwise, 2 on bad usage/missing inputs. Standard library only; every QEMU runs under
`timeout` in its own process group and is killed on the way out.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from blimp_vm import QBOOT, STOCK_QEMU, patched_qemu_path  # noqa: E402
from qmp import Qmp, QmpConnectError, QmpError  # noqa: E402

QEMU = STOCK_QEMU   # stock: every measurement of the main table
# QEMU variants: name -> (binary: "stock" or "patched", extra virtio-balloon properties)
VARIANTS = {
    "stock": ("stock", ""),
    "coalesce": ("patched", "coalesce-discard=on"),
    "patched": ("patched", "coalesce-discard=off"),
}
MiB = 1 << 20
VM_LIMIT_S = 900          # `timeout` around every QEMU
BOOT_TIMEOUT_S = 300
BALLOON_TIMEOUT_S = 120   # a balloon that has not reached its target by then is an error
REPORT_GIVE_UP_S = 60
POLL_BALLOON_S = 0.005
POLL_RSS_S = 0.020

LIVE = set()              # running guests, killed on exit whatever happens
GUEST_COPY = None         # private copy of the Linux guest's files for this run
PATCHED_QEMU = None       # private copy of the patched QEMU binary (--qemu-variants)
TSC_KHZ = None            # host TSC kHz for the Linux guest on microvm (see linux_tsc_khz)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(Exception):
    """A real failure: a guest that does not boot, a balloon that never reaches its target."""


class KilledFromOutside(BenchError):
    """QEMU died of a signal that neither we nor its `timeout` sent (someone else's cleanup on
    this shared machine): the measurement is retried once."""


# --------------------------------------------------------------------------------------------
# One QEMU process with a console reader (timestamped lines) and a QMP connection.
class Guest:
    def __init__(self, kind, machine, mem_mb, build_dir, blimp_elf, balloon_props="",
                 memhog_steps="", firmware="default", blimp_words="", qemu=QEMU,
                 variant="stock", smp=1):
        self.kind = kind                    # "linux" | "blimp"
        self.machine = machine              # "q35" | "microvm"
        self.variant = variant              # key of VARIANTS, for messages only
        self.mem_mb = mem_mb
        self.tmp = tempfile.mkdtemp(prefix=f"bench-balloon-{kind}-")
        self.qmp_path = os.path.join(self.tmp, "qmp.sock")
        self.pidfile = os.path.join(self.tmp, "qemu.pid")
        dev = "virtio-balloon-device" if machine == "microvm" else "virtio-balloon-pci"
        # Several vCPUs run one host thread each (MTTCG), as on KVM; one keeps the default.
        accel = "tcg,thread=multi" if smp > 1 else "tcg"
        argv = ["timeout", "--kill-after=5", str(VM_LIMIT_S), qemu, "-accel", accel,
                # mem-merge=off: the host's KSM (others run it here) must not merge guest pages
                # (Linux's fill writes zeros) and hide what the balloon returns.
                "-M", f"{machine},mem-merge=off", "-m", str(mem_mb), "-smp", str(smp), "-display", "none",
                "-serial", "stdio", "-monitor", "none", "-nodefaults", "-no-reboot",
                "-pidfile", self.pidfile, "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                "-device", f"{dev},id=balloon0" + (f",{balloon_props}" if balloon_props else "")]
        if kind == "linux":
            d = GUEST_COPY or os.path.join(build_dir, "linux-guest")
            # microvm has neither HPET nor ACPI PM timer: see linux_tsc_khz().
            tsc = f" tsc_early_khz={TSC_KHZ}" if machine == "microvm" and TSC_KHZ else ""
            argv += ["-kernel", os.path.join(d, "vmlinuz"),
                     "-initrd", os.path.join(d, "initramfs.cpio.gz"),
                     "-append", f"console=ttyS0 quiet panic=-1 blimp.workload=cmd{tsc}"]
            if firmware == "qboot":
                argv += ["-bios", QBOOT]
            self.ready_rx = r"BLIMP-LINUX: ready"
        else:
            argv += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                     "-kernel", blimp_elf,
                     "-append", f"app=memhog steps={memhog_steps} chunk=1020K {blimp_words}".strip()]
            if machine != "microvm" and firmware != "seabios":
                argv += ["-bios", QBOOT]
            self.ready_rx = r"blimp: starting app"
        self.argv = argv
        self.lines = []                     # (monotonic time, text)
        self._cv = threading.Condition()
        self._seen = 0
        self.proc = None
        self.qmp = None
        self.t_start = None

    def start(self):
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        LIVE.add(self)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 60
        while self.qmp is None:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise BenchError(f"{self.name()}: QEMU exited ({self.proc.returncode}) at "
                                 "startup:\n" + self.tail())
            try:
                self.qmp = Qmp.connect(self.qmp_path, timeout=1)
            except QmpConnectError:
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name()}: no QMP socket after 60 s")
        _, t = self.wait_for(self.ready_rx, BOOT_TIMEOUT_S, what="boot")
        return t - self.t_start

    def name(self):
        v = "" if self.variant == "stock" else f"/{self.variant}"
        return f"{self.kind}/{self.machine}{v}"

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            now = time.monotonic()
            line = raw.decode(errors="replace").replace("\r", "").rstrip("\n")
            with self._cv:
                self.lines.append((now, line))
                self._cv.notify_all()
        with self._cv:
            self.lines.append((time.monotonic(), None))
            self._cv.notify_all()

    def tail(self, n=30):
        with self._cv:
            return "\n".join(l for _, l in self.lines[-n:] if l is not None)

    def wait_for(self, pattern, timeout, what=None):
        """Next console line (after the last one matched) matching `pattern`:
        (re.Match, arrival time)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cv:
            i = self._seen
            while True:
                while i < len(self.lines):
                    t, line = self.lines[i]
                    i += 1
                    if line is None:
                        try:
                            rc = self.proc.wait(timeout=5)
                        except subprocess.TimeoutExpired:
                            rc = "?"
                        how = {124: " (killed by its timeout)", -9: " (SIGKILL)",
                               137: " (SIGKILL)", -15: " (SIGTERM)", 143: " (SIGTERM)"}
                        err = KilledFromOutside if rc in (-9, -15, 137, 143) else BenchError
                        raise err(f"{self.name()}: QEMU exited with status {rc}"
                                         f"{how.get(rc, '')} while waiting for /{pattern}/ "
                                         f"({what or 'console'}); console tail:\n"
                                         + self.tail())
                    m = rx.search(line)
                    if m:
                        self._seen = i
                        return m, t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"{self.name()}: /{pattern}/ not seen within {timeout} s "
                                     f"({what or 'console'}); console tail:\n" + self.tail())
                self._cv.wait(left)

    def grep(self, pattern):
        rx = re.compile(pattern)
        with self._cv:
            return [(t, m) for t, l in self.lines if l is not None for m in [rx.search(l)] if m]

    def send(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def rss_kib(self):
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/status") as f:
                for ln in f:
                    if ln.startswith("VmRSS:"):
                        return int(ln.split()[1])
        except (OSError, ValueError):
            pass
        raise BenchError(f"{self.name()}: cannot read QEMU's RSS")

    def anon_huge_kib(self):
        """QEMU's AnonHugePages (transparent huge pages backing guest RAM), None if unknown."""
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for ln in f:
                    if ln.startswith("AnonHugePages:"):
                        return int(ln.split()[1])
        except (OSError, ValueError):
            pass
        return None

    def cpu_s(self):
        """QEMU's (user, system) CPU seconds so far (clock ticks: 10 ms resolution)."""
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            hz = os.sysconf("SC_CLK_TCK")
            return int(fields[11]) / hz, int(fields[12]) / hz
        except (OSError, ValueError, IndexError):
            return None

    def cpu_ns(self):
        """QEMU's on-CPU time so far in ns, summed over its threads (/proc/PID/task/*/schedstat):
        precise where cpu_s()'s 10 ms ticks are not (a coalesced inflate takes ~10 ms). A thread
        that exits in between loses its share (QEMU's threads live as long as the VM here)."""
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
            total = 0
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        total += int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    pass
            return total
        except (OSError, ValueError):
            return None

    def actual_mb(self):
        return self.qmp.execute("query-balloon", timeout=10)["actual"] / MiB

    def balloon(self, target_mb):
        """QMP balloon to target_mb; poll query-balloon every 5 ms until it reports the target.
        Returns (seconds, QEMU user CPU s, QEMU system CPU s, QEMU CPU s from schedstat) over
        that time. (BALLOON_CHANGE events are no use for timing: QEMU throttles them to one a
        second.)"""
        c0 = self.cpu_s()
        n0 = self.cpu_ns()
        t0 = time.monotonic()
        self.qmp.execute("balloon", value=int(target_mb * MiB))
        while True:
            actual = self.actual_mb()
            if abs(actual - target_mb) < 1:
                t = time.monotonic() - t0
                break
            if time.monotonic() - t0 > BALLOON_TIMEOUT_S:
                raise BenchError(f"{self.name()}: balloon never reached {target_mb} MiB: stuck "
                                 f"at {actual:.0f} MiB after {BALLOON_TIMEOUT_S} s; console "
                                 "tail:\n" + self.tail())
            time.sleep(POLL_BALLOON_S)
        c1 = self.cpu_s()
        n1 = self.cpu_ns()
        self.qmp.events()   # drop the BALLOON_CHANGE events
        ns = (n1 - n0) / 1e9 if n0 is not None and n1 is not None else None
        if c0 and c1:
            return t, c1[0] - c0[0], c1[1] - c0[1], ns
        return t, None, None, ns

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                if self.kind == "linux":
                    self.send("poweroff")
                    self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None and self.qmp is not None:
            try:
                self.qmp.execute("quit", timeout=5)
                self.proc.wait(timeout=10)
            except (QmpError, QmpConnectError, OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        LIVE.discard(self)
        shutil.rmtree(self.tmp, ignore_errors=True)


def kill_all():
    for g in list(LIVE):
        g.kill()


# --------------------------------------------------------------------------------------------
# The measurements.
def qemu_for(variant):
    """(binary, extra virtio-balloon properties) of a QEMU variant."""
    binary, props = VARIANTS[variant]
    return (QEMU if binary == "stock" else PATCHED_QEMU), props


def blimp_balloon_info(g):
    """The patched QEMU's discard counters (QMP x-blimp-balloon-info), None on stock QEMU."""
    if g.variant == "stock":
        return None
    try:
        return g.qmp.execute("x-blimp-balloon-info", timeout=10)
    except QmpError as e:
        raise BenchError(f"{g.name()}: x-blimp-balloon-info failed: {e}")


def measure_inflate(cfg, a):
    """One VM, reporting off: boot, touch+free FILL MiB, inflate to TARGET, deflate back."""
    kind, machine, variant = cfg
    qemu, props = qemu_for(variant)
    steps = f"alloc:{a.fill}M,free:all,wait:{VM_LIMIT_S}s"
    g = Guest(kind, machine, a.mem, a.build_dir, a.blimp_elf_run,
              "free-page-reporting=off" + (f",{props}" if props else ""), steps,
              qemu=qemu, variant=variant)
    r = {}
    try:
        r["boot_s"] = g.start()
        r["rss_boot_mib"] = g.rss_kib() / 1024
        log(f"  {g.name()}: ready after {r['boot_s']:.2f} s; touching {a.fill} MiB and freeing")
        if kind == "linux":
            g.send(f"fill {a.fill}")
            g.wait_for(r"BLIMP-LINUX: done fill", 300, "fill")
            g.send("drop")
            g.wait_for(r"BLIMP-LINUX: done drop", 120, "drop")
        else:
            g.wait_for(r"memhog: step 2 freed", 300, "memhog alloc/free")
        time.sleep(1.0)
        full = g.actual_mb()
        rss0 = g.rss_kib() / 1024
        r["rss_before_mib"] = rss0
        huge = g.anon_huge_kib()
        if huge is not None:
            r["anon_huge_before_mib"] = huge / 1024
        info0 = blimp_balloon_info(g)
        t, cu, cs, cn = g.balloon(a.target)
        rss_now = g.rss_kib() / 1024
        info1 = blimp_balloon_info(g)
        if info0 is not None and info1 is not None:
            # counters over the inflate alone (the deflate does not touch them)
            r["coalesce_discard"] = info1.get("coalesce-discard")
            for k in ("discard-calls", "discard-pages", "inflate-pfns", "bad-pfns"):
                r[k.replace("-", "_")] = info1[k] - info0[k]
        time.sleep(1.0)
        rss1 = g.rss_kib() / 1024
        inflated = full - a.target
        r.update(inflated_mib=inflated, inflate_s=t, inflate_cpu_user_s=cu, inflate_cpu_sys_s=cs,
                 inflate_mibs=inflated / t, rss_at_target_mib=rss_now, rss_after_mib=rss1,
                 returned_frac=(rss0 - rss1) / inflated)
        # MiB per CPU-second and on-CPU share from schedstat's ns when there, else the ticks
        cpu = cn if cn is not None else (cu + cs if cu is not None else None)
        if cpu is not None:
            r["inflate_cpu_s"] = cpu
            r["inflate_mib_per_cpu_s"] = inflated / max(cpu, 0.001)
            r["inflate_oncpu_frac"] = cpu / t
        log(f"  {g.name()}: inflate {inflated:.0f} MiB in {t * 1000:.0f} ms "
            f"({inflated / t:.0f} MiB/s); RSS {rss0:.0f} -> {rss1:.0f} MiB "
            f"({100 * (rss0 - rss1) / inflated:.0f}% of inflated)"
            + (f"; {r['discard_calls']} discard calls for {r['discard_pages']} pages"
               if "discard_calls" in r else ""))
        t, cu, cs, cn = g.balloon(full)
        info2 = blimp_balloon_info(g)
        if info1 is not None and info2 is not None and "willneed-calls" in info2:
            # counters over the deflate alone (host/qemu patch 5; older binaries lack them)
            for k in ("willneed-calls", "willneed-pages", "deflate-pfns", "deflate-bad-pfns"):
                r[k.replace("-", "_")] = info2[k] - info1[k]
        r.update(deflate_s=t, deflate_cpu_user_s=cu, deflate_cpu_sys_s=cs,
                 deflate_mibs=inflated / t)
        cpu = cn if cn is not None else (cu + cs if cu is not None else None)
        if cpu is not None:
            r["deflate_cpu_s"] = cpu
            r["deflate_mib_per_cpu_s"] = inflated / max(cpu, 0.001)
        log(f"  {g.name()}: deflate {inflated:.0f} MiB in {t * 1000:.0f} ms "
            f"({inflated / t:.0f} MiB/s)"
            + (f"; {r['willneed_calls']} MADV_WILLNEED calls for {r['willneed_pages']} pages"
               if "willneed_calls" in r else ""))
        time.sleep(0.2)
        gl = g.grep(r"balloon: (inflated|deflated) (\d+) MiB in (\d+) ms")
        r["guest_log"] = [m.group(0) for _, m in gl]
        for _, m in gl:
            key = "guest_" + m.group(1)[:-1] + "_ms"
            r.setdefault(key, int(m.group(3)))
    finally:
        g.stop()
    return r


def measure_reporting(cfg, a):
    """One VM, free-page-reporting=on: touch REPORT MiB, free it, time RSS's fall by 90%."""
    kind, machine, _ = cfg     # stock QEMU only
    steps = f"alloc:{a.report}M,wait:1s,free:all,wait:{VM_LIMIT_S}s"
    g = Guest(kind, machine, a.mem, a.build_dir, a.blimp_elf_run, "free-page-reporting=on", steps,
              blimp_words="balloon.verbose")
    r = {}
    try:
        r["boot_s"] = g.start()
        if kind == "linux":
            time.sleep(3)   # let Linux report its boot-time free memory first (2 s delay)
            g.send(f"fill {a.report}")
            g.wait_for(r"BLIMP-LINUX: done fill", 300, "fill")
            time.sleep(0.5)
            peak = g.rss_kib() / 1024
            c0 = g.cpu_s()
            t_free = time.monotonic()
            g.send("drop")
            _, t_marker = g.wait_for(r"BLIMP-LINUX: done drop", 120, "drop")
        else:
            g.wait_for(r"memhog: step 1 alloc", 300, "memhog alloc")
            time.sleep(0.5)
            peak = g.rss_kib() / 1024
            c0 = g.cpu_s()
            _, t_free = g.wait_for(r"memhog: step 2 waited", 30, "memhog wait")
            _, t_marker = g.wait_for(r"memhog: step 3 freed", 120, "memhog free")
        goal = 0.9 * a.report
        rss = peak
        while True:
            rss = g.rss_kib() / 1024
            now = time.monotonic()
            if peak - rss >= goal:
                break
            if now - t_marker > REPORT_GIVE_UP_S:
                now = None
                break
            time.sleep(POLL_RSS_S)
        c1 = g.cpu_s()
        if c0 and c1:
            r.update(report_cpu_user_s=c1[0] - c0[0], report_cpu_sys_s=c1[1] - c0[1])
        r.update(peak_rss_mib=peak, final_rss_mib=rss, fell_mib=peak - rss,
                 free_s=t_marker - t_free)
        if now is None:
            r.update(report_gave_up=True, report_from_marker_s=None, report_from_free_s=None)
            log(f"  {g.name()}: reporting: RSS fell only {peak - rss:.0f} of {a.report} MiB "
                f"in {REPORT_GIVE_UP_S} s: gave up")
        else:
            r.update(report_gave_up=False, report_from_marker_s=max(0.0, now - t_marker),
                     report_from_free_s=now - t_free,
                     report_mibs=goal / (now - t_free))
            log(f"  {g.name()}: reporting: 90% of {a.report} MiB back {now - t_marker:.2f} s "
                f"after the free marker ({now - t_free:.2f} s after the free started; the "
                f"free itself took {t_marker - t_free:.2f} s)")
        time.sleep(0.3)
        r["guest_log"] = [m.group(0) for _, m in g.grep(r"balloon: reported .*")]
    finally:
        g.stop()
    return r


def measure_boot_other_firmware(cfg, a):
    kind, machine, _ = cfg     # stock QEMU only
    fw = "qboot" if kind == "linux" else "seabios"
    g = Guest(kind, machine, a.mem, a.build_dir, a.blimp_elf_run, "",
              f"wait:{VM_LIMIT_S}s", firmware=fw)
    try:
        t = g.start()
        log(f"  {g.name()}: boot via {fw}: {t:.2f} s")
        return t
    finally:
        g.stop()


# --------------------------------------------------------------------------------------------
def retry_once(fn, cfg, a):
    try:
        return fn(cfg, a)
    except KilledFromOutside as e:
        log(f"  {cfg_key(cfg)}: QEMU was killed from outside ({str(e).splitlines()[0]}); "
            "retrying once")
        return fn(cfg, a)


def cfg_key(cfg):
    """"kind/machine" for stock QEMU (the keys of older RESULTS.json), else
    "kind/machine/variant"."""
    return "/".join(cfg if cfg[2] != "stock" else cfg[:2])


def cfg_from_key(key):
    parts = key.split("/")
    return tuple(parts) if len(parts) == 3 else (parts[0], parts[1], "stock")


def linux_tsc_khz():
    """The host's TSC frequency in kHz, for the Linux guest's `tsc_early_khz=` on microvm.

    microvm has no HPET and no ACPI PM timer, so Linux can calibrate its TSC only against the
    PIT, in a timed loop. Under TCG on a busy host the vCPU thread is preempted inside that
    loop, both PIT methods fail ("Fast TSC calibration failed", "Unable to calibrate against
    PIT", "No reference (HPET/PMTIMER) available"), Linux marks the TSC unusable and boots no
    further. Under TCG the guest's TSC is the host's (QEMU's rdtsc returns host ticks), so the
    host's rate, which /proc/cpuinfo's "cpu MHz" gives on a constant-TSC host, lets Linux skip
    the calibration. q35 has an HPET and a PM timer: its argv is left alone."""
    try:
        flags, mhz = "", None
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("flags") and not flags:
                    flags = ln
                elif ln.startswith("cpu MHz") and mhz is None:
                    mhz = float(ln.split(":", 1)[1])
        if mhz and "constant_tsc" in flags.split():
            return int(round(mhz * 1000))
    except (OSError, ValueError):
        pass
    return None


def ensure_inputs(a, variants):
    if not os.access(QEMU, os.X_OK):
        raise BenchError(f"{QEMU} not found (apt-get install qemu-system-x86)")
    global PATCHED_QEMU, TSC_KHZ
    TSC_KHZ = linux_tsc_khz()
    if any(VARIANTS[v][0] == "patched" for v in variants):
        if not os.access(a.patched_qemu, os.X_OK):
            raise BenchError(f"{a.patched_qemu} missing: build it first "
                             f"(host/qemu/build.sh {a.build_dir})")
    lg = os.path.join(a.build_dir, "linux-guest")
    if not (os.path.exists(os.path.join(lg, "vmlinuz")) and
            os.path.exists(os.path.join(lg, "initramfs.cpio.gz"))):
        log(f"building the Linux guest: image/linux/build.sh {a.build_dir}")
        rc = subprocess.call([os.path.join(ROOT, "image", "linux", "build.sh"), a.build_dir])
        if rc != 0:
            raise BenchError("image/linux/build.sh failed")
    if not os.path.exists(a.blimp_elf):
        raise BenchError(f"{a.blimp_elf} missing: build it first "
                         f"(cmake --build {a.build_dir} --target blimp.elf)")
    # Private copies, so that someone rebuilding either guest mid-run changes nothing here.
    global GUEST_COPY
    GUEST_COPY = tempfile.mkdtemp(prefix="bench-balloon-guests-")
    for f in ("vmlinuz", "initramfs.cpio.gz"):
        shutil.copy(os.path.join(lg, f), GUEST_COPY)
    elf = os.path.join(GUEST_COPY, "blimp.elf")
    shutil.copy(a.blimp_elf, elf)
    a.blimp_elf_run = elf
    if any(VARIANTS[v][0] == "patched" for v in variants):
        PATCHED_QEMU = os.path.join(GUEST_COPY, "qemu-system-x86_64")
        shutil.copy(a.patched_qemu, PATCHED_QEMU)


def fmt(vals, digits=0, scale=1.0):
    vals = [v * scale for v in vals if v is not None]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    f = f"{{:.{digits}f}}"
    if len(vals) == 1:
        return f.format(med)
    return f"{f.format(med)} ({f.format(min(vals))}–{f.format(max(vals))})"


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


VERDICTS = []


def label(c):
    v = {"stock": "", "coalesce": ", coalesce-discard=on",
         "patched": ", patched, coalesce-discard=off"}[c[2]]
    return f"{c[0].capitalize()} {c[1]}{v}"


def report(a, results, meta):
    VERDICTS.clear()
    allcfgs = list(results)
    cfgs = [c for c in allcfgs if c[2] == "stock"]     # the main table: stock QEMU
    cols = [label(c) for c in cfgs]
    lq, bq = ("linux", "q35", "stock"), ("blimp", "q35", "stock")
    lm, bm = ("linux", "microvm", "stock"), ("blimp", "microvm", "stock")
    mv_ratio = lm in results and bm in results
    L = []
    L.append("# virtio-balloon benchmark: Blimp vs the Linux anchor (stock QEMU, TCG)\n")
    L.append(f"- date: {meta['date']}")
    L.append(f"- machine: {meta['machine']}")
    L.append(f"- load average: {meta['load_start']} at start, {meta['load_end']} at end "
             f"({meta['cpus']} CPUs, shared with other builds)")
    L.append(f"- QEMU: `{QEMU}` {meta['qemu']}, `-accel tcg -smp 1 -m {a.mem} "
             "-M <machine>,mem-merge=off` (host KSM run="
             f"{meta['ksm']}: guest RAM is kept out of it)")
    L.append(f"- Linux guest: {meta['kernel']} (Debian 12 kernel, virtio_balloon module, busybox "
             "initramfs), SeaBIOS + `-kernel bzImage`")
    L.append(f"- Blimp: `{meta['blimp_elf']}` ({meta['blimp_rev']}), app memhog, qboot + PVH "
             "`-kernel` (microvm: its own qboot firmware)")
    L.append(f"- command: `{meta['command']}`")
    L.append(f"- sizes: {a.mem} MiB RAM; inflate: touch+free {a.fill} MiB then balloon to "
             f"{a.target} MiB; reporting: touch+free {a.report} MiB; {a.runs} run(s), "
             "median (min–max)\n")
    if len(cfgs) < len(allcfgs):
        L.append(f"- patched QEMU (section \"QEMU variants\" below): `{meta.get('patched_qemu')}` "
                 f"{meta.get('patched_qemu_version', '?')}, host/qemu at "
                 f"{meta.get('patched_qemu_rev', '?')}, same argv plus the variant's "
                 "virtio-balloon property\n")
    L.append("| metric | " + " | ".join(cols) + " | Blimp/Linux (q35, medians) |" +
             (" Blimp/Linux (microvm) |" if mv_ratio else ""))
    L.append("|---|" + "---|" * len(cols) + "---|" + ("---|" if mv_ratio else ""))

    def row(name, key, digits, scale=1.0, better="higher", src="inflate", note=""):
        cells = []
        for c in cfgs:
            vals = [x.get(key) for x in results[c][src]]
            cells.append(fmt(vals, digits, scale))
        def ratio_of(lc, bc, verdicts):
            if lc not in results or bc not in results:
                return ""
            lv = med([x.get(key) for x in results[lc][src]])
            bv = med([x.get(key) for x in results[bc][src]])
            if lv and bv:
                x = bv / lv if better == "higher" else lv / bv
                verdict = "Blimp faster" if x >= 1 else "**Blimp slower**"
                if better == "higher" and key == "returned_frac":
                    verdict = "Blimp better" if x >= 1 else "**Blimp worse**"
                if verdicts:
                    VERDICTS.append((name, x))
                return f"{x:.2f}× ({verdict})"
            if bv is None and lv:
                return "**Blimp n/a**"
            return "n/a"
        ratio = ratio_of(lq, bq, True)
        mv = f" {ratio_of(lm, bm, False)} |" if mv_ratio else ""
        L.append(f"| {name} | " + " | ".join(cells) + f" | {ratio}{note} |" + mv)

    row("boot to ready, s (own firmware)", "boot_s", 2, better="lower", src="boot")
    row("boot to ready, s (other firmware: Linux via qboot, Blimp via SeaBIOS)", "boot_other_s",
        2, better="lower", src="boot")
    row(f"inflate {a.mem}→{a.target} MiB, MiB/s", "inflate_mibs", 0)
    row("inflate time, ms", "inflate_s", 0, 1000, better="lower")
    row("host RSS returned / inflated, %", "returned_frac", 1, 100)
    row("inflate, MiB per QEMU CPU-second (load-independent)", "inflate_mib_per_cpu_s", 0)
    row(f"deflate {a.target}→{a.mem} MiB, MiB/s", "deflate_mibs", 0)
    row("deflate time, ms", "deflate_s", 0, 1000, better="lower")
    row("deflate, MiB per QEMU CPU-second (load-independent)", "deflate_mib_per_cpu_s", 0)
    row(f"reporting: 90% of {a.report} MiB back, s after the free marker", "report_from_marker_s",
        2, better="lower", src="report")
    row("reporting: same, s after the free started", "report_from_free_s", 2, better="lower",
        src="report")
    row("reporting: effective MiB/s (0.9×freed / time from free start)", "report_mibs", 0,
        src="report")
    row("guest free itself (free start → marker), s", "free_s", 2, better="lower", src="report")
    L.append("")
    gave = {label(c): sum(1 for x in results[c]["report"] if x.get("report_gave_up"))
            for c in cfgs}
    if any(gave.values()):
        L.append("Reporting gave up (RSS had not fallen by 90% within "
                 f"{REPORT_GIVE_UP_S} s) in: " +
                 ", ".join(f"{k} {v}/{a.runs}" for k, v in gave.items() if v) + "\n")
    if lm in results:
        L.append("Linux on microvm: virtio_mmio finds the balloon through microvm's ACPI tables "
                 "(acpi=on, the default; QEMU then adds no `virtio_mmio.device=` words, which "
                 "Debian's kernel would ignore anyway: it lacks "
                 "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES). Its command line has "
                 f"`tsc_early_khz={meta.get('tsc_khz', '?')}` (the host's TSC rate, which is the "
                 "TCG guest's): microvm has no HPET and no ACPI PM timer, and without it Linux's "
                 "PIT-only TSC calibration fails when the host is busy and the boot stops after "
                 "`tsc: Marking TSC unstable due to could not calculate TSC khz`. Linux boots "
                 "microvm through its default firmware (qboot).\n")
    elif any(c[1] == "microvm" for c in cfgs):
        L.append("Linux on microvm: not measured in this series. (The reason then given, that "
                 "busybox insmod ignores `virtio_mmio.device=`, was wrong: with microvm's "
                 "default acpi=on virtio_mmio finds the balloon through ACPI. What stopped it "
                 "is a boot hang: microvm has no HPET and no ACPI PM timer, and under TCG on a "
                 "busy host Linux's PIT-only TSC calibration fails and the boot stops after "
                 "`tsc: Marking TSC unstable due to could not calculate TSC khz`. The script now "
                 "passes `tsc_early_khz=` and measures Linux on microvm.)\n")
    # Guest-side timings (Blimp's own log lines).
    for c in cfgs:
        if c[0] != "blimp":
            continue
        ms = [x.get("guest_inflate_ms") for x in results[c]["inflate"]]
        dms = [x.get("guest_deflate_ms") for x in results[c]["inflate"]]
        L.append(f"{label(c)} guest log, per run: inflate " +
                 ", ".join(f"{v} ms" for v in ms) + "; deflate " +
                 ", ".join(f"{v} ms" for v in dms) + " (the guest's own `balloon: inflated/"
                 "deflated N MiB in M ms`, which includes waiting for QEMU's acknowledgements)."
                 + (" Reporting lines: " + "; ".join(
                     "`" + "`, `".join(x.get("guest_log", [])[:4]) + "`"
                     for x in results[c]["report"][:1]) if results[c]["report"] else ""))
        L.append("")
    L.append("QEMU's own CPU time during each phase (from /proc/PID/stat, 10 ms ticks; user = "
             "TCG running the guest and QEMU's device code, system = the host kernel, mostly "
             "madvise(DONTNEED) discards on inflate/reporting and page faults on deflate), "
             "median seconds user/system" +
             ("; the MiB per QEMU CPU-second rows and the on-CPU share use the precise total "
              "of /proc/PID/task/*/schedstat instead:\n"
              if any("inflate_cpu_s" in x for c in cfgs for x in results[c]["inflate"])
              else ":\n"))
    L.append("| phase | " + " | ".join(cols) + " |")
    L.append("|---|" + "---|" * len(cols))
    for ph, src in (("inflate", "inflate"), ("deflate", "inflate"), ("report", "report")):
        cells = []
        for c in cfgs:
            u = med([x.get(f"{ph}_cpu_user_s") for x in results[c][src]])
            y = med([x.get(f"{ph}_cpu_sys_s") for x in results[c][src]])
            cells.append("n/a" if u is None else f"{u:.2f} / {y:.2f}")
        L.append(f"| {ph} | " + " | ".join(cells) + " |")
    L.append("| inflate: QEMU on CPU, % of wall | " + " | ".join(
        fmt([x.get("inflate_oncpu_frac") for x in results[c]["inflate"]], 0, 100)
        for c in cfgs) + " |")
    L.append("")
    L.append("QEMU's VmRSS (MiB, medians) around the inflate: after boot → after touch+free → "
             f"1 s after reaching {a.target} MiB:\n")
    L.append("| | " + " | ".join(cols) + " |")
    L.append("|---|" + "---|" * len(cols))
    L.append("| RSS boot → before → after | " + " | ".join(
        " → ".join(f"{med([x.get(k) for x in results[c]['inflate']]) or 0:.0f}"
                   for k in ("rss_boot_mib", "rss_before_mib", "rss_after_mib"))
        for c in cfgs) + " |")
    L.append("")
    if len(cfgs) < len(allcfgs):
        L += variants_report(a, results)
    lose = [(n, x) for n, x in VERDICTS if x < 1]
    thin = [(n, x) for n, x in VERDICTS if 1 <= x and round(x, 2) < 3]
    L.append("## Verdict (q35, medians; goal: Blimp several times better on every figure)\n")
    if lose:
        L.append("**Blimp loses on:** " + "; ".join(f"{n} ({x:.2f}×)" for n, x in lose) + ".\n")
    if thin:
        L.append("**Blimp wins by less than 3× on:** " +
                 "; ".join(f"{n} ({x:.2f}×)" for n, x in thin) + ".\n")
    if not lose and not thin:
        L.append("Blimp is at least 3× better on every figure.\n")
    notes = os.path.join(HERE, "observations.md")
    if os.path.exists(notes):
        L.append(open(notes).read().rstrip() + "\n")
    return "\n".join(L) + "\n"


def variants_report(a, results):
    """The QEMU-variant section: inflate/deflate of each guest on stock QEMU and on the patched
    one (coalesce-discard on / off), with the patched QEMU's discard counters."""
    order = {"stock": 0, "patched": 1, "coalesce": 2}
    cfgs = sorted(results, key=lambda c: (list(results).index(c[:2] + ("stock",))
                                          if c[:2] + ("stock",) in results else 99,
                                          order[c[2]]))
    short = {"stock": "stock", "patched": "patched, off", "coalesce": "coalesce=on"}
    L = ["## QEMU variants: inflate/deflate on stock and patched QEMU\n",
         "Same guests and argv; *stock* = `/usr/bin/qemu-system-x86_64`, *patched, off* = "
         "Blimp's patched QEMU (host/qemu/) with `coalesce-discard=off`, *coalesce=on* = the "
         "same binary with `coalesce-discard=on` (patch 1: each inflate buffer's PFNs sorted "
         "and merged into runs, one `ram_block_discard_range()` per run instead of one per "
         "4 KiB page; patch 5: the same for the deflate, one `madvise(MADV_WILLNEED)` per run "
         "instead of one per 4 KiB page). In every run the variants of one guest are measured "
         "back to back. Discard / WILLNEED calls and pages: QMP `x-blimp-balloon-info` before "
         "and after the inflate and the deflate (patched QEMU only; stock QEMU makes one call "
         "per 4 KiB page). Median (min–max).\n"]
    cols = [f"{c[0].capitalize()} {c[1]} {short[c[2]]}" for c in cfgs]
    L.append("| metric | " + " | ".join(cols) + " |")
    L.append("|---|" + "---|" * len(cols))

    def vals(c, key):
        return [x.get(key) for x in results[c]["inflate"]]

    def row(name, key, digits, scale=1.0):
        cells = [fmt(vals(c, key), digits, scale) for c in cfgs]
        if any(x != "n/a" for x in cells):      # rows an older series did not record: left out
            L.append(f"| {name} | " + " | ".join(cells) + " |")

    def cpu_row(name, ph):
        cells = []
        for c in cfgs:
            u, y = med(vals(c, f"{ph}_cpu_user_s")), med(vals(c, f"{ph}_cpu_sys_s"))
            cells.append("n/a" if u is None else f"{u:.2f} / {y:.2f}")
        L.append(f"| {name} | " + " | ".join(cells) + " |")

    for c in cfgs:
        for x in results[c]["inflate"]:
            if x.get("discard_calls") is not None and x.get("inflated_mib"):
                x["discard_calls_per_gib"] = x["discard_calls"] * 1024 / x["inflated_mib"]
            if x.get("willneed_calls") is not None and x.get("inflated_mib"):
                x["willneed_calls_per_gib"] = x["willneed_calls"] * 1024 / x["inflated_mib"]
    row(f"inflate {a.mem}→{a.target} MiB, MiB/s", "inflate_mibs", 0)
    row("inflate time, ms", "inflate_s", 0, 1000)
    row("inflate, MiB per QEMU CPU-second", "inflate_mib_per_cpu_s", 0)
    row("inflate: QEMU CPU s (schedstat, all threads)", "inflate_cpu_s", 3)
    cpu_row("inflate: QEMU CPU s, user / system (ticks, medians)", "inflate")
    row("inflate: QEMU on CPU, % of wall", "inflate_oncpu_frac", 0, 100)
    row("host RSS returned / inflated, %", "returned_frac", 1, 100)
    row("QEMU RSS before the inflate, MiB", "rss_before_mib", 0)
    row("of which transparent huge pages (AnonHugePages), MiB", "anon_huge_before_mib", 0)
    row("inflate: discard calls (x-blimp-balloon-info)", "discard_calls", 0)
    row("inflate: pages discarded", "discard_pages", 0)
    row("inflate: discard calls per GiB inflated", "discard_calls_per_gib", 0)
    row(f"deflate {a.target}→{a.mem} MiB, MiB/s", "deflate_mibs", 0)
    row("deflate, MiB per QEMU CPU-second", "deflate_mib_per_cpu_s", 0)
    row("deflate: QEMU CPU s (schedstat, all threads)", "deflate_cpu_s", 3)
    cpu_row("deflate: QEMU CPU s, user / system (ticks, medians)", "deflate")
    row("deflate: MADV_WILLNEED calls (x-blimp-balloon-info)", "willneed_calls", 0)
    row("deflate: pages hinted", "willneed_pages", 0)
    row("deflate: MADV_WILLNEED calls per GiB deflated", "willneed_calls_per_gib", 0)
    L.append("")
    # coalesce-discard=on against stock, per guest.
    pairs = [(c[:2] + ("stock",), c) for c in cfgs
             if c[2] == "coalesce" and c[:2] + ("stock",) in results]
    if pairs:
        L.append("coalesce-discard=on against stock QEMU, ratio of medians (>1: the patched "
                 "QEMU is faster / cheaper):\n")
        L.append("| guest | inflate MiB/s | inflate MiB per CPU-s | inflate system CPU s "
                 "(stock → coalesce) | deflate MiB/s | deflate MiB per CPU-s | deflate CPU s "
                 "(stock → coalesce) | deflate system CPU s (stock → coalesce) |")
        L.append("|---|---|---|---|---|---|---|---|")
        for st, co in pairs:
            def rt(key, st=st, co=co):
                sv, cv = med(vals(st, key)), med(vals(co, key))
                return f"{cv / sv:.2f}×" if sv and cv else "n/a"
            def arrow(key, digits, st=st, co=co):
                sv, cv = med(vals(st, key)), med(vals(co, key))
                return "n/a" if sv is None or cv is None else f"{sv:.{digits}f} → {cv:.{digits}f}"
            L.append(f"| {st[0].capitalize()} {st[1]} | {rt('inflate_mibs')} | "
                     f"{rt('inflate_mib_per_cpu_s')} | {arrow('inflate_cpu_sys_s', 2)} | "
                     f"{rt('deflate_mibs')} | {rt('deflate_mib_per_cpu_s')} | "
                     f"{arrow('deflate_cpu_s', 3)} | {arrow('deflate_cpu_sys_s', 2)} |")
        L.append("")
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--blimp-elf", help="default: BUILD_DIR/blimp.elf")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="smoke mode: 1 run, 512 MiB guests, smaller sizes")
    ap.add_argument("--mem", type=int, default=1024, help="guest RAM, MiB (both guests)")
    ap.add_argument("--fill", type=int, help="MiB touched and freed before inflating (80%%)")
    ap.add_argument("--target", type=int, help="balloon target, MiB (default 256)")
    ap.add_argument("--report", type=int, help="MiB freed for the reporting test (default 512)")
    ap.add_argument("--machines", default="q35,microvm",
                    help="q35 and/or microvm (Linux and Blimp on each)")
    ap.add_argument("--qemu-variants", default="stock",
                    help="stock (always measured), coalesce (patched QEMU, "
                    "coalesce-discard=on), patched (patched QEMU, coalesce-discard=off); the "
                    "non-stock ones repeat the inflate/deflate measurement only")
    ap.add_argument("--patched-qemu", help="default: BUILD_DIR/qemu/qemu-system-x86_64")
    ap.add_argument("--blimp-rev", help="Blimp's revision for the report (default: git "
                    "rev-parse in the ELF's directory)")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--render", metavar="JSON",
                    help="only rewrite --out from the raw samples of an earlier run (its .json)")
    a = ap.parse_args()
    if a.render:
        with open(a.render) as f:
            raw = json.load(f)
        for k, v in raw["args"].items():
            if k not in ("out", "render"):
                setattr(a, k, v)
        results = {cfg_from_key(k): v for k, v in raw["results"].items()}
        md = report(a, results, raw["meta"])
        print(md, flush=True)
        with open(a.out, "w") as f:
            f.write(md)
        return 0
    if a.quick:
        a.runs = 1
        if a.mem == 1024:
            a.mem = 512
    a.fill = a.fill or int(a.mem * 0.8) // 4 * 4
    a.target = a.target or (128 if a.mem <= 512 else 256)
    a.report = a.report or min(512, a.mem // 2)
    a.build_dir = os.path.abspath(a.build_dir)
    a.blimp_elf = os.path.abspath(a.blimp_elf or os.path.join(a.build_dir, "blimp.elf"))
    a.patched_qemu = os.path.abspath(a.patched_qemu or
                                     patched_qemu_path(a.build_dir))
    variants = [v.strip() for v in a.qemu_variants.split(",") if v.strip()]
    if any(v not in VARIANTS for v in variants):
        ap.error("--qemu-variants: stock, coalesce, patched")
    variants = ["stock"] + [v for v in VARIANTS if v != "stock" and v in variants]
    if a.runs < 1 or a.target >= a.mem or a.fill >= a.mem:
        ap.error("need runs >= 1, target < mem, fill < mem")
    machines = [m.strip() for m in a.machines.split(",") if m.strip()]
    cfgs = [(k, m, "stock") for m in ("q35", "microvm") if m in machines
            for k in ("linux", "blimp")]
    if not cfgs:
        ap.error("--machines: q35 and/or microvm")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda *_: (kill_all(), sys.exit(1)))
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {sh(['uname', '-sr'])}, {cpu_model()}",
        "cpus": os.cpu_count(),
        "load_start": open("/proc/loadavg").read().split()[:3],
        "ksm": sh(["cat", "/sys/kernel/mm/ksm/run"]),
        "qemu": sh([QEMU, "--version"]).splitlines()[0].replace("QEMU emulator version ", "")
        if os.path.exists(QEMU) else "?",
        "command": " ".join(["python3 bench/balloon/run.py"] +
                            [shlex.quote(x) for x in sys.argv[1:]]),
        "blimp_elf": os.path.relpath(a.blimp_elf, ROOT) if a.blimp_elf.startswith(ROOT)
        else a.blimp_elf,
        "blimp_rev": a.blimp_rev or sh(["git", "-C", os.path.dirname(a.blimp_elf), "rev-parse",
                                        "--short", "HEAD"]) or "?",
    }
    if len(variants) > 1:
        meta["patched_qemu"] = (os.path.relpath(a.patched_qemu, ROOT)
                                if a.patched_qemu.startswith(ROOT) else a.patched_qemu)
        meta["patched_qemu_version"] = (sh([a.patched_qemu, "--version"]).splitlines() or
                                        ["?"])[0].replace("QEMU emulator version ", "")
        meta["patched_qemu_rev"] = sh(["git", "-C", ROOT, "log", "-1", "--format=%h",
                                       "--", "host/qemu"]) or "?"
    results = {}
    for c in cfgs:
        for v in variants:
            results[c[:2] + (v,)] = {"boot": [], "inflate": [], "report": []}
    try:
        ensure_inputs(a, variants)
        meta["tsc_khz"] = TSC_KHZ
        if TSC_KHZ is None and ("linux", "microvm", "stock") in results:
            log("WARNING: no constant-TSC rate in /proc/cpuinfo: Linux on microvm boots without "
                "tsc_early_khz= and may hang in TSC calibration on a busy host")
        meta["kernel"] = open(os.path.join(a.build_dir, "linux-guest",
                                           "KERNEL_VERSION")).read().strip()
        log(f"{len(results)} configurations x {a.runs} run(s): "
            f"{[cfg_key(c) for c in results]}; mem {a.mem} MiB, fill "
            f"{a.fill}, target {a.target}, report {a.report}")
        for run in range(a.runs):
            log(f"run {run + 1}/{a.runs}")
            for c in cfgs:
                log(f" {c[0]}/{c[1]}: inflate/deflate")
                r = retry_once(measure_inflate, c, a)
                results[c]["inflate"].append(r)
                for v in variants[1:]:
                    cv = c[:2] + (v,)
                    log(f" {cfg_key(cv)}: inflate/deflate")
                    results[cv]["inflate"].append(retry_once(measure_inflate, cv, a))
                log(f" {c[0]}/{c[1]}: free page reporting")
                rr = retry_once(measure_reporting, c, a)
                results[c]["report"].append(rr)
                b = {"boot_s": r["boot_s"]}
                if c[1] == "q35":
                    b["boot_other_s"] = retry_once(measure_boot_other_firmware, c, a)
                results[c]["boot"].append(b)
                results[c]["boot"].append({"boot_s": rr["boot_s"]})
    except BenchError as e:
        kill_all()
        print(f"\nbench/balloon: ERROR: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        kill_all()
        print("\nbench/balloon: interrupted", file=sys.stderr)
        return 1
    finally:
        kill_all()
        if GUEST_COPY:
            shutil.rmtree(GUEST_COPY, ignore_errors=True)
    meta["load_end"] = open("/proc/loadavg").read().split()[:3]
    for k in ("load_start", "load_end"):
        meta[k] = " ".join(meta[k])
    md = report(a, results, meta)
    print("\n" + md, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(md)
    raw = os.path.splitext(a.out)[0] + ".json"
    with open(raw, "w") as f:
        json.dump({"meta": meta, "args": vars(a),
                   "results": {cfg_key(c): v for c, v in results.items()}}, f, indent=1)
    log(f"wrote {a.out} and {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
