#!/usr/bin/env python3
"""app=mmbench, the page allocator's benchmark and self-test in the guest (docs/mm.md; the
README's allocator figure): it boots, every benchmark run prints its figures for 4 KiB and 2 MiB
blocks, the self-test over all free RAM passes, and the app exits 0. Timings are printed, never
asserted (TCG on a shared host)."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import BlimpVM, TestRunner, check  # noqa: E402

t = TestRunner()

# "mm bench 4 KiB: 81920 blocks: alloc 345.1 ns (2897 k/s), free 280.4 ns (3566 k/s), alloc+free
# pair 499.0 ns"
FIGURES_RE = r"mm bench {}: (\d+) blocks: alloc \d+\.\d ns \(\d+ k/s\), free \d+\.\d ns " \
             r"\(\d+ k/s\), alloc\+free pair \d+\.\d ns"
SELF_TEST_RE = re.compile(r"mm self-test: (\d+) MiB in (\d+) blocks: (\w+)")


@t.test
def test_mmbench_figures_and_self_test(build):
    with BlimpVM(build, app="mmbench", args=["repeat=2"], machine="microvm", memory="256M",
                 limit=300) as vm:
        status = vm.wait_exit(timeout=280)
        out = vm.output
    check(status == 0, f"mmbench exited with {status}\n{out}")
    for size in ("4 KiB", "2 MiB"):
        runs = re.findall(FIGURES_RE.format(size), out)
        check(len(runs) == 2, f"{len(runs)} runs of the {size} benchmark, not 2\n{out}")
        check(all(int(blocks) > 0 for blocks in runs), f"a {size} run measured no block\n{out}")
    m = SELF_TEST_RE.search(out)
    check(m is not None, f"no self-test verdict\n{out}")
    print(f"  self-test: {m.group(1)} MiB in {m.group(2)} blocks: {m.group(3)}", flush=True)
    check(m.group(3) == "ok", f"self-test failed\n{out}")
    check(int(m.group(1)) >= 200, f"self-test covered only {m.group(1)} MiB of 256\n{out}")
    check("mmbench: PASS" in out, out)


if __name__ == "__main__":
    t.main()
