#!/usr/bin/env python3
"""speedtest1 (SQLite 3.40.1's benchmark) in Blimp and in the anchor Linux guest, same QEMU.

    python3 bench/sqlite/run.py [--build-dir build] [--size 100] [--mem 256] [--squeeze 64]
                                [--reps 1] [--exclusive] [--out bench/sqlite/RESULTS]
    python3 bench/sqlite/run.py --render PREFIX.json [--out PREFIX]   (redo .csv/.md/.png)

Both guests run the same speedtest1.c, from Debian 12's sqlite3 source (apps/sqlite/
build-sqlite.sh), with the same options (SQLITE_THREADSAFE=0, SQLITE_OMIT_LOAD_EXTENSION, -O2)
and the same arguments: `--size SIZE --cachesize 100000 --verify [--exclusive] DATABASE` (the
page cache may hold the whole database, so it is where the memory is; --exclusive keeps the
database lock instead of taking and releasing it around every statement, which on Linux is a
handful of fcntl() and read() system calls per statement). Blimp: app=speedtest1 on its
in-memory VFS, page cache pcache=blimp (a shrinker, apps/sqlite/pcache.cpp) and pcache=sqlite
(SQLite's pcache1 on malloc). Linux: Debian's kernel + busybox (image/linux), a static glibc
build of speedtest1 appended to the initramfs by this script, the database on the guest's tmpfs
/tmp. Same stock /usr/bin/qemu-system-x86_64, -accel tcg, -M pc, -m MEM, one vCPU,
virtio-balloon-pci with deflate-on-oom=on, one VM at a time.

Two scenarios each: `plain` (balloon untouched) and `squeeze` (once test 180 ends, QMP
`balloon` to SQUEEZE MiB; the guest gives what it can, takes memory back on OOM). The six
columns run REPS times, interleaved (all six, then all six again), so drift on the host falls
on every column alike. Recorded per run: per-test and total times (speedtest1's own clock), the
verification hash (must match across all runs), exit status, the balloon 5 s after the request
and when it reached the target, Blimp's page-cache figures (pages shrunk, misses), the Linux
kernel's OOM lines, and the host's load average before and after.

Output: PREFIX.json (everything, raw), PREFIX.csv (one row per test per run; test 0 is the
total), PREFIX.md (medians per test and column, spread of the totals, balloon and cache rows,
the runs that did not finish and why) and PREFIX.png (median time per test, plain and squeeze;
gnuplot). Exit status 1 when a run failed or the hashes differ: a failed run is a result too,
and it is in the outputs.
"""
import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from blimp_vm import STOCK_QEMU, BlimpVM  # noqa: E402
from linux_guest import LinuxGuest  # noqa: E402
from qmp import Qmp, QmpConnectError, QmpError  # noqa: E402

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


def squeeze_watch(q, target_mib, seen_180, result):
    """Called once test 180 has ended: ask for the target, then watch the balloon for 5 s, or
    until the guest has finished and QEMU quit, whichever is first. Records where the balloon
    was at the end of the watch and when (if) it first reached the target."""
    q.execute("balloon", value=target_mib * MiB)
    t0 = time.monotonic()
    last = reached = None
    while time.monotonic() - t0 < 5:
        try:
            actual = q.execute("query-balloon", timeout=5)["actual"] >> 20
        except (QmpError, QmpConnectError, OSError):
            break  # the run ended: QEMU is gone
        last = actual
        if reached is None and actual <= target_mib:
            reached = round(time.monotonic() - t0, 2)
        time.sleep(0.2)
    result["balloon_after_5s_mib"] = last
    result["balloon_watched_s"] = round(min(5.0, time.monotonic() - t0), 1)
    result["balloon_reached_target_s"] = reached
    result["squeeze_requested_at_s"] = round(seen_180, 1)
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
            with Qmp.connect(vm.qmp_path) as q:
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


COLUMNS = [("blimp", "blimp"), ("linux", "sqlite"), ("blimp", "sqlite")]
DONE_FIELD_RE = re.compile(r"(\w+)=([\w.]+)")


def column(r):
    return f"{r['guest']}/{r['pcache']} {r['scenario']}"


def median_s(runs, test):
    """Median time of `test` over `runs` in seconds, None when no run finished it."""
    xs = [r["tests_ms"][test] for r in runs if test in r.get("tests_ms", {})]
    return statistics.median(xs) / 1000 if xs else None


def done_fields(r):
    """speedtest1's closing line in Blimp as a dict (shrunk_pages, misses, ...)."""
    return dict(DONE_FIELD_RE.findall(r.get("blimp_done") or ""))


def column_order(runs):
    seen = []
    for scenario in ("plain", "squeeze"):
        for guest, pcache in COLUMNS:
            c = f"{guest}/{pcache} {scenario}"
            if any(column(r) == c for r in runs) and c not in seen:
                seen.append(c)
    return seen


def write_csv(prefix, runs):
    """One row per test per run (test 0 is the total), so any summary can be redone."""
    with open(prefix + ".csv", "w") as f:
        f.write("rep,guest,pcache,scenario,status,test,name,ms,hash,balloon_after_5s_mib,"
                "balloon_reached_target_s,shrunk_pages,misses,load_before,load_after\n")
        for r in runs:
            d = done_fields(r)
            common = [r.get("guest"), r.get("pcache"), r.get("scenario"), r.get("status")]
            tail = [r.get("hash"), r.get("balloon_after_5s_mib"),
                    r.get("balloon_reached_target_s"), d.get("shrunk_pages"),
                    d.get("misses"), r.get("load_before"), r.get("load_after")]
            rows = [(0, "TOTAL", r.get("total_ms"))]
            for t, ms in sorted(r.get("tests_ms", {}).items()):
                rows.append((t, r["names"].get(t, ""), ms))
            for t, name, ms in rows:
                cells = [r.get("rep", 1)] + common + [t, name.replace(",", ";"), ms] + tail
                f.write(",".join("" if c is None else str(c) for c in cells) + "\n")


def markdown(meta, runs):
    cols = column_order(runs)
    by = {c: [r for r in runs if column(r) == c] for c in cols}
    reps = max((r.get("rep", 1) for r in runs), default=1)
    tests = sorted({t for r in runs for t in r.get("tests_ms", {})})
    names = {}
    for r in runs:
        names.update(r.get("names", {}))
    L = [f"Command: `{meta.get('command', '')}` ({meta.get('date', '')}); "
         f"{reps} run(s) per column, interleaved; size {meta.get('size')}, "
         f"{meta.get('mem_mib')} MiB, squeeze to {meta.get('squeeze_mib')} MiB after test 180.",
         "", "Times in seconds, median over the runs (speedtest1's own clock).", "",
         "| test | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]

    for t in tests:
        cells = []
        for c in cols:
            m = median_s(by[c], t)
            cells.append(f"{m:.3f}" if m is not None else "-")
        L.append(f"| {t} {names.get(t, '')[:40]} | " + " | ".join(cells) + " |")
    tot = []
    spread = []
    for c in cols:
        xs = [r["total_ms"] for r in by[c] if r.get("total_ms")]
        tot.append(f"**{statistics.median(xs) / 1000:.3f}**" if xs else "-")
        spread.append(f"{min(xs) / 1000:.1f}-{max(xs) / 1000:.1f}" if xs else "-")
    L.append("| **TOTAL (s), median** | " + " | ".join(tot) + " |")
    L.append("| total, min-max | " + " | ".join(spread) + " |")

    def row(label, f):
        L.append(f"| {label} | " + " | ".join(
            " / ".join(str(f(r)) for r in by[c]) for c in cols) + " |")

    row("exit status", lambda r: r.get("status", r.get("error", "?")[:40]))
    row("balloon 5 s after the request (MiB of guest left)",
        lambda r: r.get("balloon_after_5s_mib", "-"))
    row("seconds until the balloon reached the target (- not within 5 s)",
        lambda r: "n/a" if "balloon_reached_target_s" not in r  # not recorded (older runs)
        else "-" if r["balloon_reached_target_s"] is None else r["balloon_reached_target_s"])
    row("page cache: pages shrunk", lambda r: done_fields(r).get("shrunk_pages", "-"))
    row("page cache: misses", lambda r: done_fields(r).get("misses", "-"))
    row("host load (1 min) before", lambda r: (r.get("load_before") or "?").split()[0])
    done = [r for r in runs if r.get("hash")]
    hashes = sorted({r["hash"] for r in done})
    L += ["", f"Verification hashes: {len(hashes)} distinct over the {len(done)} runs that "
          f"finished ({', '.join(hashes)})."]
    failed = [r for r in runs if r.get("status") != 0 or not r.get("hash")]
    for r in failed:
        last = (r.get("kernel_lines") or r.get("balloon_lines") or [r.get("error", "")])[-2:]
        L.append(f"- did not finish: rep {r.get('rep', 1)} {column(r)}: exit status "
                 f"{r.get('status')}, {len(r.get('tests_ms', {}))} tests done; last lines: "
                 f"{' | '.join(str(x).strip()[:200] for x in last)}")
    return "\n".join(L) + "\n"


def plot(runs, png):
    gp = shutil.which("gnuplot")
    if not gp:
        print("bench/sqlite: gnuplot not found, no plot", flush=True)
        return False
    cols = column_order(runs)
    tests = sorted({t for r in runs for t in r.get("tests_ms", {})})
    tmp = tempfile.mkdtemp(prefix="sqlite-plot-")
    panels = []
    for scenario in ("plain", "squeeze"):
        sc = [c for c in cols if c.endswith(" " + scenario)]
        if not sc:
            continue
        dat = os.path.join(tmp, f"{scenario}.dat")
        with open(dat, "w") as f:
            f.write("test " + " ".join(c.split()[0] for c in sc) + "\n")
            for t in tests:
                cells = []
                for c in sc:
                    m = median_s([r for r in runs if column(r) == c], t)
                    cells.append(f"{m:.3f}" if m is not None else "NaN")
                f.write(f"{t} " + " ".join(cells) + "\n")
        using = ", ".join(
            f"'{dat}' using {i + 2}:xtic(1) title columnheader({i + 2})" for i in range(len(sc)))
        panels.append(f"set title 'speedtest1, {scenario}: median seconds per test'\n"
                      f"plot {using}\n")
    script = (f"set terminal pngcairo size 1400,{430 * len(panels)} font ',10'\n"
              f"set output '{png}'\nset multiplot layout {len(panels)},1\n"
              "set style data histogram\nset style histogram cluster gap 1\n"
              "set style fill solid 0.8 border -1\nset boxwidth 0.9\nset grid ytics\n"
              "set ylabel 'seconds'\nset xlabel 'speedtest1 test number'\n"
              "set xtics rotate by -45\nset key top left\nset yrange [0:*]\n"
              + "".join(panels) + "unset multiplot\n")
    try:
        r = subprocess.run(["timeout", "60", gp], input=script, text=True, capture_output=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if r.returncode != 0 or not os.path.exists(png):
        print(f"bench/sqlite: gnuplot failed: {r.stderr[-800:]}", flush=True)
        return False
    return True


def with_int_keys(runs):
    """Test numbers are ints in memory; JSON stores them as strings."""
    for r in runs:
        for k in ("tests_ms", "names"):
            if k in r:
                r[k] = {int(t): v for t, v in r[k].items()}
    return runs


def render(prefix, meta, runs):
    with open(prefix + ".json", "w") as f:
        json.dump({"meta": meta, "runs": runs}, f, indent=1, default=str)
    write_csv(prefix, runs)
    with open(prefix + ".md", "w") as f:
        f.write(markdown(meta, runs))
    plot(runs, prefix + ".png")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument("--squeeze", type=int, default=64, help="balloon target (MiB) after test 180")
    ap.add_argument("--reps", type=int, default=1, help="runs per column, interleaved")
    ap.add_argument("--exclusive", action="store_true",
                    help="speedtest1 --exclusive (locking_mode=EXCLUSIVE): no file lock taken "
                    "and released around every statement")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS"),
                    help="output prefix: PREFIX.json (raw), .csv, .md (table), .png")
    ap.add_argument("--render", metavar="JSON", help="only rewrite .csv, .md, .png from a JSON")
    o = ap.parse_args()
    prefix = os.path.abspath(o.out[:-5] if o.out.endswith(".json") else o.out)
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    if o.render:
        with open(o.render) as f:
            d = json.load(f)
        render(prefix, d["meta"], with_int_keys(d["runs"]))
        print(f"bench/sqlite: wrote {prefix}.json, .csv, .md, .png")
        return 0
    if o.reps < 1 or o.squeeze >= o.mem:
        ap.error("--reps must be at least 1 and --squeeze below --mem")
    build = os.path.abspath(o.build_dir)
    exe = build_linux_speedtest1(build)
    anchor = anchor_dir(build, exe)
    args = ["--size", str(o.size), "--cachesize", "100000", "--verify"]
    if o.exclusive:
        args.append("--exclusive")
    meta = {"command": "python3 " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
            "size": o.size, "mem_mib": o.mem, "squeeze_mib": o.squeeze, "reps": o.reps,
            "args": args, "qemu": STOCK_QEMU, "accel": "tcg", "machine": "pc",
            "nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    runs = []
    plan = [(g, p, sq) for sq in (0, o.squeeze) for g, p in COLUMNS]
    for rep in range(1, o.reps + 1):
        for guest, pcache, squeeze in plan:
            label = f"rep {rep} {guest}/{pcache} {'squeeze' if squeeze else 'plain'}"
            print(f"bench/sqlite: {label} ...", flush=True)
            try:
                r = (run_blimp(build, args, o.mem, pcache, squeeze) if guest == "blimp"
                     else run_linux(anchor, args, o.mem, squeeze))
            except Exception as e:  # noqa: BLE001 - a failed run is a result too
                r = {"guest": guest, "pcache": pcache,
                     "scenario": "squeeze" if squeeze else "plain",
                     "error": str(e)[-2000:], "load_after": loadavg()}
            r["rep"] = rep
            runs.append(r)
            print(f"bench/sqlite: {label}: status={r.get('status')} total_ms={r.get('total_ms')} "
                  f"hash={r.get('hash')} tests={len(r.get('tests_ms', {}))} "
                  f"balloon5s={r.get('balloon_after_5s_mib')} load={r.get('load_before')}->"
                  f"{r.get('load_after')} {r.get('blimp_done') or ''} "
                  f"{r.get('error', '')[-300:]}", flush=True)
            render(prefix, meta, runs)  # partial results survive an interruption
    print(markdown(meta, runs))
    print(f"bench/sqlite: wrote {prefix}.json, .csv, .md, .png")
    ok = all(r.get("status") == 0 for r in runs) and len({r.get("hash") for r in runs}) == 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
