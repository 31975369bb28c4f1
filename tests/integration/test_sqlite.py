#!/usr/bin/env python3
"""SQLite on Blimp (apps/sqlite): speedtest1, SQLite's own benchmark, as app=speedtest1 on an
in-memory VFS (-accel tcg). A short run (--size 5) must complete every test of the main test set
and exit 0; the timings are not asserted. The page cache (apps/sqlite/pcache.cpp, a shrinker):
a balloon inflated mid-run must take memory from it (the cache drops pages, the run goes on) and
the run must give the same results (speedtest1's --verify hash) as one left alone, and as one on
SQLite's own pcache1."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import BlimpVM, TestRunner, check, wait_balloon  # noqa: E402
from qmp import Qmp  # noqa: E402
from speedtest1 import MAIN_TESTS  # noqa: E402

t = TestRunner()
MiB = 1 << 20

# A finished test: "NNN - description.....   1.234s" (speedtest1_end_test).
TEST_LINE_RE = re.compile(r"^ *(\d+) - .*?\.*\s+(\d+)\.(\d{3})s$", re.M)
KERNEL_LINE_RE = re.compile(r" ?\b(?:balloon|mm|page-states|virtio): [^\n]*\n")
HASH_RE = re.compile(r"^Verification Hash: (\d+) ([0-9a-f]{48})$", re.M)


def check_complete(out):
    """Every test of the main set finished (with its time), TOTAL printed; returns the
    verification hash (or None without --verify). The kernel's own lines (the balloon's) may land
    in the middle of a test's line: they are taken out first."""
    out = KERNEL_LINE_RE.sub("", out)
    done = [int(m.group(1)) for m in TEST_LINE_RE.finditer(out)]
    check(done == MAIN_TESTS, f"tests finished: {done}\n--- output ---\n{out[-3000:]}")
    check(re.search(r"^ +TOTAL\.+\s+\d+\.\d{3}s$", out, re.M), f"no TOTAL line: {out[-1500:]}")
    m = HASH_RE.search(out)
    return (m.group(1), m.group(2)) if m else None


@t.test
def test_speedtest1_short_run(build):
    with BlimpVM(build, app="speedtest1", args=["--size", "5", "--verify"], machine="microvm",
                 memory="256M", limit=300) as vm:
        status = vm.wait_exit(timeout=290)
        check(status == 0, f"speedtest1 exited {status}: {vm.output[-2000:]}")
        h = check_complete(vm.output)
        check(h is not None, f"no verification hash: {vm.output[-1500:]}")
        check("-- Speedtest1 for SQLite 3.40.1" in vm.output, "not SQLite 3.40.1")
        check(re.search(r"^speedtest1: done status=0 ", vm.output, re.M), vm.output[-800:])


@t.test
def test_speedtest1_memdb_and_key_value_arguments(build):
    # size=3 is "--size 3"; --memdb: a ":memory:" database (no VFS file at all). The kernel's own
    # words (balloon.*, page_states=) are not the app's: speedtest1 would reject them.
    with BlimpVM(build, app="speedtest1",
                 args=["size=3", "balloon.timeout_ms=5000", "--memdb", "page_states=off"], machine="microvm",
                 memory="256M", limit=300) as vm:
        status = vm.wait_exit(timeout=290)
        check(status == 0, f"speedtest1 exited {status}: {vm.output[-2000:]}")
        check("speedtest1: args: --size 3 --memdb" in vm.output, vm.output[:1500])
        check_complete(vm.output)


@t.test
def test_speedtest1_bad_option_fails(build):
    with BlimpVM(build, app="speedtest1", args=["--no-such-option"], machine="microvm",
                 memory="256M", limit=120) as vm:
        status = vm.wait_exit(timeout=110)
        check(status == 1, f"status {status} for an unknown option: {vm.output[-800:]}")
        check("unknown option: --no-such-option" in vm.output, vm.output[-800:])


# A run whose page cache holds the whole database (about 15 MiB at --size 60), in a 128 MiB guest.
SQUEEZE_ARGS = ["--size", "60", "--cachesize", "100000", "--verify"]
DONE_RE = re.compile(r"^speedtest1: done status=(\d+) .*pcache=(\w+) .*shrunk_pages=(\d+) "
                     r"scans=(\d+) .*misses=(\d+)", re.M)


def plain_run(build, pcache):
    with BlimpVM(build, app="speedtest1", args=[f"pcache={pcache}", *SQUEEZE_ARGS],
                 machine="microvm", memory="128M", limit=600) as vm:
        status = vm.wait_exit(timeout=590)
        check(status == 0, f"speedtest1 (pcache={pcache}) exited {status}: {vm.output[-2000:]}")
        h = check_complete(vm.output)
        check(h is not None, "no verification hash")
        m = DONE_RE.search(vm.output)
        check(m and m.group(2) == pcache, vm.output[-600:])
        return h, vm.output


@t.test
def test_pcache_squeezed_by_the_balloon_gives_the_same_results(build):
    reference, _ = plain_run(build, "blimp")
    sqlite_pcache, _ = plain_run(build, "sqlite")
    check(sqlite_pcache == reference,
          f"pcache=sqlite hash {sqlite_pcache} differs from pcache=blimp {reference}")
    with BlimpVM(build, app="speedtest1", args=["pcache=blimp", *SQUEEZE_ARGS],
                 machine="microvm", memory="128M", limit=600, qmp=True,
                 extra=["-device", "virtio-balloon-device,id=balloon0,deflate-on-oom=on"]) as vm:
        # Mid-run, once the cache holds most of the database (test 180 rereads every table).
        vm.wait_for(r"^ *190 - ", 300)
        q = Qmp.connect(vm.qmp_path)
        target = 40 * MiB  # below what free memory alone can give: the cache must give too
        q.execute("balloon", value=target)
        actual = wait_balloon(q, lambda a: a <= 64 * MiB, 120, vm)
        status = vm.wait_exit(timeout=500)
        check(status == 0, f"speedtest1 exited {status} under the balloon: {vm.output[-2500:]}")
        h = check_complete(vm.output)
        m = DONE_RE.search(vm.output)
        check(m, vm.output[-600:])
        shrunk, scans = int(m.group(3)), int(m.group(4))
        check(shrunk > 0 and scans > 0,
              f"the balloon ({actual >> 20} MiB) took nothing from the page cache: {m.group(0)}")
        check(h == reference, f"squeezed run's hash {h} differs from the plain run's {reference}")
        print(f"    balloon left {actual >> 20} MiB; {m.group(0)}", flush=True)


if __name__ == "__main__":
    t.main()
