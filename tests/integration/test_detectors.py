#!/usr/bin/env python3
"""The detectors the host-fault tests rely on, proven live in a real guest (stock QEMU, TCG):

  - integrity inject=stale|zero|foreign damages one page itself after round 1 (its previous
    content put back, zeros, the next page's content); round 2 must report it as a MISMATCH of
    that kind, with the expected generation and, for stale content, the older generation found;
  - memhog verifies whole pages at check:all and before every free, and counts them;
  - the harness: a QEMU that fails on a bad option is a VMError, not a guest exit status 0.

Usage: python3 tests/integration/test_detectors.py --build-dir BUILD [-k NAME]
"""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import BlimpVM, TestRunner, VMError, check  # noqa: E402

t = TestRunner()
MISMATCH = re.compile(r"^integrity: MISMATCH region (\d+) page \+(\d+) \(\S+\): (\d+) of 512 words "
                      r"differ, first word \d+: expected [0-9a-f]{16} found [0-9a-f]{16}; "
                      r"expected generation (\d+), (.*)$", re.M)
INJECTED = re.compile(r"^integrity: injected (\w+) content into region (\d+) page \+(\d+)$", re.M)


def injected(build, how):
    with BlimpVM(build, app="integrity", args=["size=2M", "rounds=3", "pause=10ms", f"inject={how}"],
                 memory="128M", limit=180, name=f"integrity-inject-{how}") as vm:
        status = vm.wait_exit(170)
        out = vm.output
    check(status == 1, f"integrity exited with {status}, expected 1\n{out}")
    inj = INJECTED.search(out)
    check(inj and inj.group(1) == how, f"no injection line\n{out}")
    bad = MISMATCH.findall(out)
    check(len(bad) >= 1, f"the damaged page was not reported\n{out}")
    region, page, words, expected, found = bad[0]
    check((region, page) == (inj.group(2), inj.group(3)),
          f"reported region {region} page +{page}, injected into {inj.group(0)}")
    check(words == "512", f"only {words} words differ: every word carries the generation\n{out}")
    fail = re.search(r"^integrity: FAIL: (\d+) mismatches, (\d+) bad pages \(stale (\d+), "
                     r"zeroed (\d+), foreign (\d+)\)$", out, re.M)
    check(fail, f"no FAIL summary\n{out}")
    return int(expected), found, fail


@t.test
def test_integrity_reports_stale_page_with_its_generation(build):
    expected, found, fail = injected(build, "stale")
    m = re.fullmatch(r"found generation (\d+) \(stale\)", found)
    check(m, found)
    check(0 < int(m.group(1)) < expected,
          f"found generation {m.group(1)} is not older than the expected {expected}")
    check(fail.group(3) != "0" and fail.group(4) == fail.group(5) == "0", fail.group(0))


@t.test
def test_integrity_reports_zeroed_page(build):
    _, found, fail = injected(build, "zero")
    check(found == "found zeros (zeroed)", found)
    check(fail.group(4) != "0" and fail.group(3) == fail.group(5) == "0", fail.group(0))


@t.test
def test_integrity_reports_foreign_page(build):
    _, found, fail = injected(build, "foreign")
    check(found == "found content of no generation of this page (foreign)", found)
    check(fail.group(5) != "0" and fail.group(3) == fail.group(4) == "0", fail.group(0))


@t.test
def test_memhog_verifies_whole_pages(build):
    steps = "alloc:8M,check:all,free:4M,alloc:4M,check:all,free:all"
    with BlimpVM(build, app="memhog", args=[f"steps={steps}", "chunk=1M"], memory="128M",
                 limit=180) as vm:
        status = vm.wait_exit(170)
        out = vm.output
    check(status == 0, f"memhog exited with {status}\n{out}")
    check(re.search(r"^memhog: step 2 checked 8 MiB, 0 corrupted pages$", out, re.M), out)
    check(re.search(r"^memhog: step 5 checked 8 MiB, 0 corrupted pages$", out, re.M), out)
    # 2048 (check) + 1024 (free 4M) + 2048 (check) + 2048 (free:all)
    check(re.search(r"^memhog: verified 7168 pages, 0 corrupted \(stale 0, zeroed 0, foreign 0\)$",
                    out, re.M), out)
    check(out.rstrip().splitlines()[-1].startswith("blimp: app 'memhog' exited with status 0")
          and "memhog: done" in out, out)


@t.test
def test_qemu_error_is_not_guest_success(build):
    try:
        with BlimpVM(build, app="hello", extra=["-device", "no-such-device-blimp"], limit=60) as vm:
            status = vm.wait_exit(50)
    except VMError as e:
        check("no-such-device-blimp" in str(e) and "error of its own" in str(e), str(e))
        return
    raise AssertionError(f"QEMU's failure passed as guest status {status}")


if __name__ == "__main__":
    t.main()
