#!/usr/bin/env python3
"""SQLite on Blimp (apps/sqlite): speedtest1, SQLite's own benchmark, as app=speedtest1 on an
in-memory VFS (-accel tcg). A short run (--size 5) must complete every test of the main test set
and exit 0; the timings are not asserted."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import BlimpVM, TestRunner, check  # noqa: E402

t = TestRunner()

# The main test set of speedtest1 (SQLite 3.40.1, Debian 12), in order.
MAIN_TESTS = [100, 110, 120, 130, 140, 142, 145, 150, 160, 161, 170, 180, 190, 200, 210, 230,
              240, 250, 260, 270, 280, 290, 300, 310, 320, 400, 410, 500, 510, 520, 980, 990]
# A finished test: "NNN - description.....   1.234s" (speedtest1_end_test).
TEST_LINE_RE = re.compile(r"^ *(\d+) - .*?\.*\s+(\d+)\.(\d{3})s$", re.M)
HASH_RE = re.compile(r"^Verification Hash: (\d+) ([0-9a-f]{48})$", re.M)


def check_complete(out):
    """Every test of the main set finished (with its time), TOTAL printed; returns the
    verification hash (or None without --verify)."""
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
    # size=3 is "--size 3"; --memdb: a ":memory:" database (no VFS file at all).
    with BlimpVM(build, app="speedtest1", args=["size=3", "--memdb"], machine="microvm",
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


if __name__ == "__main__":
    t.main()
