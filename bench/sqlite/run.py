#!/usr/bin/env python3
"""speedtest1 (SQLite 3.40.1's benchmark) in Blimp and in the anchor Linux guest, same QEMU.

    python3 bench/sqlite/run.py [--build-dir build] [--size 100] [--mem 256] [--squeeze 64]
                                [--out bench/sqlite/RESULTS.json]

Both guests run the same speedtest1.c, from Debian 12's sqlite3 source (apps/sqlite/
build-sqlite.sh), with the same options (SQLITE_THREADSAFE=0, SQLITE_OMIT_LOAD_EXTENSION, -O2)
and the same arguments: `--size SIZE --cachesize 100000 --verify DATABASE` (the page cache may
hold the whole database, so it is where the memory is). Blimp: app=speedtest1 on its in-memory
VFS, page cache pcache=blimp (a shrinker, apps/sqlite/pcache.cpp) and pcache=sqlite (SQLite's
pcache1 on malloc). Linux: Debian's kernel + busybox (image/linux), a static glibc build of
speedtest1 appended to the initramfs by this script, the database on the guest's tmpfs /tmp.
Same stock /usr/bin/qemu-system-x86_64, -accel tcg, -M pc, -m MEM, one vCPU,
virtio-balloon-pci with deflate-on-oom=on, one VM at a time.

Two scenarios each: `plain` (balloon untouched) and `squeeze` (once test 180 ends, QMP
`balloon` to SQUEEZE MiB; the guest gives what it can, takes memory back on OOM). Recorded:
per-test and total times (speedtest1's own clock), the verification hash (must match across
all runs), exit status, the balloon's size 5 s after the request and at the end, and the host's
load average before and after each run.
"""
import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from blimp_vm import STOCK_QEMU, BlimpVM  # noqa: E402
from linux_guest import LinuxGuest  # noqa: E402
from qmp import Qmp  # noqa: E402

MiB = 1 << 20
TEST_LINE_RE = re.compile(r"^ *(\d+) - (.*?)\.*\s+(\d+)\.(\d{3})s$", re.M)
TOTAL_RE = re.compile(r"^ +TOTAL\.+\s+(\d+)\.(\d{3})s$", re.M)
HASH_RE = re.compile(r"^Verification Hash: (\d+ [0-9a-f]{48})$", re.M)
KERNEL_LINE_RE = re.compile(r" ?\b(?:balloon|mm|page-states|virtio): [^\n]*\n")
DEFINES = ["-DSQLITE_THREADSAFE=0", "-DSQLITE_OMIT_LOAD_EXTENSION=1"]


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def parse(out):
    out = KERNEL_LINE_RE.sub("", out.replace("\r", ""))
    tests = {int(m.group(1)): int(m.group(3)) * 1000 + int(m.group(4))
             for m in TEST_LINE_RE.finditer(out)}
    names = {int(m.group(1)): m.group(2).strip() for m in TEST_LINE_RE.finditer(out)}
    t = TOTAL_RE.search(out)
    h = HASH_RE.search(out)
    return {"tests_ms": tests, "names": names,
            "total_ms": int(t.group(1)) * 1000 + int(t.group(2)) if t else None,
            "hash": h.group(1) if h else None}


def build_linux_speedtest1(build):
    d = os.path.join(build, "sqlite")
    exe = os.path.join(d, "linux", "speedtest1")
    src = [os.path.join(d, "sqlite3.c"), os.path.join(d, "speedtest1.c")]
    if not all(os.path.exists(s) for s in src):
        subprocess.run([os.path.join(ROOT, "apps", "sqlite", "build-sqlite.sh"), build], check=True)
    if not os.path.exists(exe):
        os.makedirs(os.path.dirname(exe), exist_ok=True)
        print("bench/sqlite: building a static speedtest1 for Linux (gcc, glibc)", flush=True)
        subprocess.run(["gcc", "-static", "-O2", *DEFINES, "-I", d, "-o", exe, *src, "-lm"],
                       check=True)
    return exe


def anchor_dir(build, exe):
    """A build dir for LinuxGuest whose initramfs is image/linux's plus this branch's /init and
    /bin/speedtest1 (a second cpio archive appended: the kernel unpacks both, later wins)."""
    base = os.path.join(build, "linux-guest")
    out = os.path.join(build, "sqlite", "anchor")
    lg = os.path.join(out, "linux-guest")
    stage = os.path.join(out, "stage")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(stage, "bin"))
    os.makedirs(lg)
    shutil.copy(os.path.join(ROOT, "image", "linux", "init"), os.path.join(stage, "init"))
    shutil.copy(exe, os.path.join(stage, "bin", "speedtest1"))
    os.chmod(os.path.join(stage, "init"), 0o755)
    extra = subprocess.run("find init bin | cpio -o -H newc --quiet",
                           shell=True, cwd=stage, capture_output=True, check=True).stdout
    with open(os.path.join(base, "initramfs.cpio.gz"), "rb") as f:
        initrd = f.read()
    with open(os.path.join(lg, "initramfs.cpio.gz"), "wb") as f:
        f.write(initrd)
        f.write(gzip.compress(extra))
    os.symlink(os.path.realpath(os.path.join(base, "vmlinuz")), os.path.join(lg, "vmlinuz"))
    return out


def squeeze_watch(q, target_mib, seen_190, result):
    """Called once test 180 has ended: ask for the target, record the balloon 5 s later."""
    q.execute("balloon", value=target_mib * MiB)
    t0 = time.monotonic()
    time.sleep(5)
    result["balloon_after_5s_mib"] = (q.execute("query-balloon")["actual"]) >> 20
    result["squeeze_requested_at_s"] = round(seen_190, 1)
    return t0


def run_blimp(build, args, mem, pcache, squeeze):
    res = {"guest": "blimp", "pcache": pcache, "scenario": "squeeze" if squeeze else "plain",
           "load_before": loadavg()}
    t0 = time.monotonic()
    with BlimpVM(build, app="speedtest1", args=[f"pcache={pcache}", *args], machine="pc",
                 memory=f"{mem}M", qmp=True, limit=1500, qemu=STOCK_QEMU,
                 extra=["-device", "virtio-balloon-pci,id=balloon0,deflate-on-oom=on"]) as vm:
        if squeeze:
            vm.wait_for(r"^ *180 - .*\d\.\d{3}s$", 900)
            q = Qmp.connect(vm.qmp_path)
            squeeze_watch(q, squeeze, time.monotonic() - t0, res)
        status = vm.wait_exit(timeout=1400)
        res["status"] = status
        out = vm.output
    res.update(parse(out))
    m = re.search(r"^speedtest1: done .*", out, re.M)
    res["blimp_done"] = m.group(0) if m else None
    res["balloon_lines"] = [ln for ln in out.splitlines() if "balloon:" in ln][-6:]
    res["load_after"] = loadavg()
    return res


def run_linux(anchor, args, mem, squeeze):
    res = {"guest": "linux", "pcache": "sqlite", "scenario": "squeeze" if squeeze else "plain",
           "load_before": loadavg()}
    g = LinuxGuest(qemu=STOCK_QEMU, build_dir=anchor, mem_mb=mem, balloon="deflate-on-oom=on",
                   machine="pc", timeout_s=1500, name="linux-sqlite")
    try:
        g.start()
        t0 = time.monotonic()
        g.send("speedtest1 " + " ".join(args + ["speedtest1.db"]))
        if squeeze:
            g.wait_for(r"^ *180 - .*\d\.\d{3}s", 900)
            squeeze_watch(g.qmp, squeeze, time.monotonic() - t0, res)
            res["balloon_actual_end_mib"] = None
        m = g.wait_for(r"BLIMP-LINUX: done speedtest1 rc=(\d+)", 1400)
        res["status"] = int(m.group(1)) if hasattr(m, "group") else None
        if squeeze:
            res["balloon_actual_end_mib"] = g.qmp.execute("query-balloon")["actual"] >> 20
        out = "\n".join(g.lines)
    finally:
        g.stop()
    if res.get("status") is None:
        mm = re.search(r"BLIMP-LINUX: done speedtest1 rc=(\d+)", out)
        res["status"] = int(mm.group(1)) if mm else None
    res.update(parse(out))
    res["kernel_lines"] = [ln for ln in out.splitlines()
                           if re.search(r"oom|Out of memory|Killed|balloon", ln, re.I)][-6:]
    res["load_after"] = loadavg()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument("--squeeze", type=int, default=64, help="balloon target (MiB) after test 180")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.json"))
    o = ap.parse_args()
    build = os.path.abspath(o.build_dir)
    exe = build_linux_speedtest1(build)
    anchor = anchor_dir(build, exe)
    args = ["--size", str(o.size), "--cachesize", "100000", "--verify"]
    runs = []
    plan = [("blimp", "blimp", 0), ("linux", None, 0), ("blimp", "sqlite", 0),
            ("blimp", "blimp", o.squeeze), ("linux", None, o.squeeze),
            ("blimp", "sqlite", o.squeeze)]
    for guest, pcache, squeeze in plan:
        label = f"{guest}{'/' + pcache if pcache else ''} {'squeeze' if squeeze else 'plain'}"
        print(f"bench/sqlite: {label} ...", flush=True)
        try:
            r = (run_blimp(build, args, o.mem, pcache, squeeze) if guest == "blimp"
                 else run_linux(anchor, args, o.mem, squeeze))
        except Exception as e:  # noqa: BLE001 - a failed run is a result too
            r = {"guest": guest, "pcache": pcache, "scenario": "squeeze" if squeeze else "plain",
                 "error": str(e)[-2000:], "load_after": loadavg()}
        runs.append(r)
        print(f"bench/sqlite: {label}: status={r.get('status')} total_ms={r.get('total_ms')} "
              f"hash={r.get('hash')} tests={len(r.get('tests_ms', {}))} "
              f"balloon5s={r.get('balloon_after_5s_mib')} load={r.get('load_before')}->"
              f"{r.get('load_after')} {r.get('blimp_done') or ''} {r.get('error', '')[-300:]}",
              flush=True)
    meta = {"size": o.size, "mem_mib": o.mem, "squeeze_mib": o.squeeze, "args": args,
            "qemu": STOCK_QEMU, "accel": "tcg", "machine": "pc", "nproc": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(o.out, "w") as f:
        json.dump({"meta": meta, "runs": runs}, f, indent=1, default=str)
    print(f"bench/sqlite: wrote {o.out}")


if __name__ == "__main__":
    main()
