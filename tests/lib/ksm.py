"""KSM control for the sharing tests and benchmarks (standard library only). The one module that
touches /sys/kernel/mm/ksm from Python: tests and bench/ import it from tests/lib.

KSM is system-wide: everything changed here is saved first and written back on exit, also on an
exception, SIGTERM, SIGINT, SIGHUP or SIGQUIT. Only one KSM experiment may run at a time on a host:
KsmSession takes an exclusive flock on /run/blimp/ksm.lock (0600 in root's 0700 /run/blimp), the
same lock hangar's KsmControl holds while it owns the KSM settings (docs/hangar.md), so a test, a
benchmark and a hangar fleet take turns. The lock is advisory: anything else that writes
/sys/kernel/mm/ksm is not held back by it.

The original values are also saved to /run/blimp/ksm-saved.json (the file hangar uses, same
format) before the first write, so a session killed with SIGKILL is undone by the next KSM user:
every KsmSession and every hangar restores a save whose owner pid is dead once it holds the lock.

    with KsmSession(pages_to_scan=2000, sleep_millisecs=10) as ksm:   # run stays 0
        ...start VMs...
        ksm.start()                       # run=1
        ksm.counters()                    # pages_sharing, pages_scanned, full_scans, ...
        ksm.ksmd_cpu_seconds()
        proc_ksm(pid)                     # per process: ksm_merging_pages, ksm_rmap_items, ...
        merging_pages(pid)                # a process's pages merged by KSM
        mergeable_bytes(pid)              # its VMAs marked MADV_MERGEABLE (smaps VmFlags `mg`)
        ksm_frames(pids)                  # (pages backed by KSM, distinct KSM pages) of a set

    lock = KsmLock(timeout=300)           # the lock alone (a test that lets hangar own KSM)
    ...read(name), lock_holders(), lock_is_free()...
    lock.release()

KsmUnavailable (with the reason) when /sys/kernel/mm/ksm is missing or not writable, or the lock
is held by another run: tests turn it into a skip (exit 77).
"""

import errno
import fcntl
import json
import os
import re
import signal
import stat
import sys
import time

KSM_DIR = "/sys/kernel/mm/ksm"
STATE_DIR = "/run/blimp"
LOCK_PATH = STATE_DIR + "/ksm.lock"
SAVE_PATH = STATE_DIR + "/ksm-saved.json"
# What a save file may name (hangar's KsmControl list) and hold.
SAVE_NAMES = ("run", "pages_to_scan", "sleep_millisecs", "merge_across_nodes", "use_zero_pages",
              "max_page_sharing", "stable_node_chains_prune_millisecs", "smart_scan", "advisor_mode")
_VALUE_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# Settings this module may change; restored in reverse order, `run` last.
TUNABLES = ("pages_to_scan", "sleep_millisecs", "smart_scan", "use_zero_pages", "advisor_mode")
COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "pages_scanned",
            "full_scans", "ksm_zero_pages", "pages_skipped", "general_profit")


class KsmUnavailable(Exception):
    pass


def _state_dir():
    """/run/blimp, root's own (0700): refuse it if anyone else could plant or hold things there."""
    try:
        os.mkdir(STATE_DIR, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(STATE_DIR)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise KsmUnavailable(f"{STATE_DIR} is not a private directory of uid {os.geteuid()} "
                             f"(mode {stat.filemode(st.st_mode)}, uid {st.st_uid}): remove it")


def open_lock():
    """The KSM lock file, opened (not locked): 0600 in root's /run/blimp, no symlink followed."""
    _state_dir()
    return os.fdopen(os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "r+")


def _start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22
    except (OSError, ValueError, IndexError):
        return None


def _write_save(saved):
    doc = {"sysfs": KSM_DIR, "owner": "ksm.py " + " ".join(sys.argv)[:120], "pid": os.getpid(),
           "pid_start": _start_time(os.getpid()),
           "saved": [{"name": n, "value": str(v)} for n, v in saved]}
    tmp = f"{SAVE_PATH}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, SAVE_PATH)


def restore_stale(log=print):
    """Restores a save file whose owner is gone (a hangar or KsmSession killed with SIGKILL).
    Call with the lock held. Raises KsmUnavailable if its owner still runs."""
    try:
        fd = os.open(SAVE_PATH, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    with os.fdopen(fd) as f:
        doc = json.load(f)
    pid, start = doc.get("pid"), doc.get("pid_start")
    if isinstance(pid, int) and pid != os.getpid() and _start_time(pid) is not None and \
            (start is None or _start_time(pid) == start):
        raise KsmUnavailable(f"KSM settings saved in {SAVE_PATH} by running pid {pid} are not restored yet")
    saved = doc.get("saved", [])
    for e in saved:
        if e.get("name") not in SAVE_NAMES or not _VALUE_RE.match(str(e.get("value", ""))):
            raise KsmUnavailable(f"{SAVE_PATH}: refusing entry {e!r}")
    done = []
    for e in reversed(saved):
        if _read(e["name"]) != e["value"]:
            _write(e["name"], e["value"])
            done.append(f'{e["name"]}={e["value"]}')
    os.unlink(SAVE_PATH)
    log(f"ksm: restored KSM settings left by pid {pid} ({doc.get('owner', '?')}), no longer running: "
        f"{', '.join(done) or 'already in place'}", flush=True)


def read(name):
    """A KSM sysfs value as a string; for a selection file ("[none] scan-time") the selected one."""
    return _read(name)


def _read(name):
    with open(os.path.join(KSM_DIR, name)) as f:
        v = f.read().strip()
    if "[" in v:  # selection file: "[none] scan-time"
        v = v[v.index("[") + 1:v.index("]")]
    return v


def _write(name, value):
    with open(os.path.join(KSM_DIR, name), "w") as f:
        f.write(str(value))


def ksmd_pid():
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "ksmd":
                        return int(pid)
            except OSError:
                pass
    return None


def proc_ksm(pid):
    """A process's /proc/PID/ksm_stat as a dict of ints (bools as 0/1); {} if gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/ksm_stat") as f:
            for line in f:
                k, _, v = line.replace(":", " ").partition(" ")
                v = v.strip()
                out[k] = 1 if v == "yes" else 0 if v == "no" else int(v)
    except (OSError, ValueError):
        return {}
    return out


def merging_pages(pid):
    """A process's pages merged by KSM (ksm_stat's ksm_merging_pages); 0 if gone."""
    return proc_ksm(pid).get("ksm_merging_pages", 0)


def mergeable_vmas(pid):
    """A process's VMAs marked MADV_MERGEABLE (`mg` in smaps' VmFlags), as [(start, end)]."""
    vmas, vma = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = _VMA_RE.match(line)
            if m:
                vma = (int(m.group(1), 16), int(m.group(2), 16))
            elif line.startswith("VmFlags:") and " mg" in line:
                vmas.append(vma)
    return vmas


def mergeable_bytes(pid):
    """Total size of a process's VMAs marked MADV_MERGEABLE (`mg` in smaps' VmFlags)."""
    return sum(end - start for start, end in mergeable_vmas(pid))


_VMA_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")
_PAGE = 4096
_PFN_MASK = (1 << 55) - 1
_KPF_KSM = 1 << 21


def ksm_frames(pids):
    """Which KSM pages a set of processes maps, from /proc/PID/pagemap and /proc/kpageflags
    (root: PFNs are hidden otherwise): (mappings, frames), mappings = their pages backed by a KSM
    page (the sum of their ksm_merging_pages), frames = distinct KSM pages among them. What KSM
    saves these processes is mappings - frames, exact whatever else on the host merges (the
    host-wide pages_sharing counts every process). Processes that are gone count nothing."""
    from array import array
    pfns = []
    for pid in pids:
        try:
            vmas = mergeable_vmas(pid)
            with open(f"/proc/{pid}/pagemap", "rb") as pm:
                for start, end in vmas:
                    pm.seek(start // _PAGE * 8)
                    entries = array("Q")
                    entries.frombytes(pm.read((end - start) // _PAGE * 8))
                    pfns.extend(e & _PFN_MASK for e in entries if e >> 63 and e & _PFN_MASK)
        except (OSError, ValueError):
            continue
    ksm = set()
    with open("/proc/kpageflags", "rb") as kf:
        uniq = sorted(set(pfns))
        i = 0
        while i < len(uniq):  # one read per run of consecutive frames
            j = i
            while j + 1 < len(uniq) and uniq[j + 1] == uniq[j] + 1 and j - i < 4095:
                j += 1
            kf.seek(uniq[i] * 8)
            flags = array("Q")
            flags.frombytes(kf.read((j - i + 1) * 8))
            ksm.update(uniq[i + k] for k, fl in enumerate(flags) if fl & _KPF_KSM)
            i = j + 1
    return sum(1 for p in pfns if p in ksm), len(ksm)


def other_mergeable(exclude=()):
    """Other processes with KSM-mergeable memory (e.g. QEMUs with mem-merge=on): they disturb
    system-wide counters and ksmd CPU. Returns [(pid, comm, rss_kib, ksm_rmap_items)]."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in exclude:
            continue
        st = proc_ksm(pid)
        if not st.get("ksm_mergeable"):
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            rss = 0
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
        except OSError:
            continue
        found.append((int(pid), comm, rss, st.get("ksm_rmap_items", 0)))
    return found


class KsmLock:
    """The machine-wide KSM lock (LOCK_PATH), held until release(): what KsmSession takes, and
    what a test takes alone to read KSM at rest or to keep hangar waiting. Waits up to `timeout`
    seconds for another holder; KsmUnavailable after that."""

    def __init__(self, timeout=600):
        self.f = open_lock()
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    self.f.close()
                    raise
                if time.monotonic() > deadline:
                    self.f.close()
                    raise KsmUnavailable(f"another KSM experiment holds {LOCK_PATH} for more than "
                                         f"{timeout}s")
                time.sleep(1)

    def release(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_is_free():
    """Whether nobody holds the KSM lock (takes and drops it at once when free)."""
    with open(LOCK_PATH, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False


def lock_holders():
    """Pids holding an flock on LOCK_PATH, from /proc/locks."""
    st = os.stat(LOCK_PATH)
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[1] != "->" and fields[5] == want:
                pids.append(int(fields[4]))
    return pids


class KsmSession:
    def __init__(self, lock_timeout=600, **settings):
        self.settings = settings
        self.lock_timeout = lock_timeout
        self.saved = []
        self._lock = None
        self._old_handlers = {}
        self.pid = None

    def __enter__(self):
        if not os.path.isdir(KSM_DIR):
            raise KsmUnavailable(f"{KSM_DIR} is absent (kernel without CONFIG_KSM)")
        if not os.access(os.path.join(KSM_DIR, "run"), os.W_OK):
            raise KsmUnavailable(f"{KSM_DIR}/run is not writable (not root?)")
        self._lock = KsmLock(self.lock_timeout)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            restore_stale()
        except (KsmUnavailable, OSError, ValueError) as e:
            for sig, h in self._old_handlers.items():
                signal.signal(sig, h)
            self._lock.release()
            raise KsmUnavailable(f"stale KSM save: {e}") from e
        try:
            self.set("run", 0)
            for k, v in self.settings.items():
                self.set(k, v)
        except OSError as e:
            self.restore()
            raise KsmUnavailable(f"cannot write KSM settings: {e}") from e
        self.pid = ksmd_pid()
        return self

    def _on_signal(self, signum, frame):
        raise SystemExit(128 + signum)

    def set(self, name, value):
        if not any(n == name for n, _ in self.saved):
            self.saved.append((name, _read(name)))
            _write_save(self.saved)  # before the write: a SIGKILL right after it stays undoable
        _write(name, value)

    def start(self):
        self.set("run", 1)

    def unmerge_all(self):
        """run=2 (KSM unmerges every page and drops its rmap items), then run=0: a clean
        pages_sharing, KSM stopped."""
        self.set("run", 2)
        self.set("run", 0)

    def stop(self):
        self.set("run", 0)

    def restore(self):
        failures = []
        # `run` first back to its old value only at the very end: stop ksmd before retuning it.
        try:
            _write("run", 0)
        except OSError as e:
            failures.append(f"run=0: {e}")
        for name, value in reversed(self.saved):
            if name == "run":
                continue
            try:
                _write(name, value)
            except OSError as e:
                failures.append(f"{name}={value}: {e}")
        for name, value in self.saved:
            if name == "run":
                try:
                    _write("run", value)
                except OSError as e:
                    failures.append(f"run={value}: {e}")
        if self.saved and not failures:
            try:
                os.unlink(SAVE_PATH)
            except FileNotFoundError:
                pass
        self.saved = []
        return failures

    def __exit__(self, *exc):
        failures = self.restore()
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        if self._lock:
            self._lock.release()
        if failures:
            print("ksm: could not restore: " + "; ".join(failures), flush=True)

    @staticmethod
    def counters():
        out = {}
        for c in COUNTERS:
            try:
                out[c] = int(_read(c))
            except (OSError, ValueError):
                pass
        return out

    def ksmd_cpu_seconds(self):
        if not self.pid:
            return None
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is state (field 3): utime is field 14, stime 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def current(self):
        return {n: _read(n) for n in ("run", *TUNABLES) if os.path.exists(os.path.join(KSM_DIR, n))}
