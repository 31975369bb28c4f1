#!/usr/bin/env python3
"""The balloon against an app cache (stock QEMU, -accel tcg): kvcache grows into all free memory
and registers a shrinker. A balloon target below what is free must still be reached: the app's
next allocations shrink the cache for the balloon (mm's balloon demand), the cache keeps working
and verifying its data, and the stats the host reads tell the balloon's reclaim apart from the
app's own stalls. When the cache holds nothing more to give, the balloon stops at its floor and
says so."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import BlimpVM, TestRunner, check, wait_balloon  # noqa: E402
from qmp import Qmp  # noqa: E402

t = TestRunner()
MiB = 1 << 20


# A whole report line: the console may deliver "kvcache: t=2.0 " before the rest of it.
REPORT = r"kvcache: t=\S+ .* shrunk=\d+"


def cache_mib(vm, start=0):
    m = re.findall(r"kvcache: t=\S+ .* cache_mib=(\d+)", vm.output[start:])
    return int(m[-1]) if m else None


@t.test
def test_balloon_takes_memory_from_a_full_cache(build):
    # 150000 keys of 4 KiB is 600 MiB: more than the guest has, so the cache fills everything.
    with BlimpVM(build, app="kvcache", args=["keys=150000", "duration=300s", "report=1s"],
                 machine="microvm", memory="512M", qmp=True, limit=300,
                 extra=["-device", "virtio-balloon-device,id=balloon0"]) as vm:
        deadline = time.monotonic() + 120
        while (cache_mib(vm) or 0) < 400:
            check(time.monotonic() < deadline, f"the cache never filled memory: {vm.output[-400:]}")
            time.sleep(0.5)
        q = Qmp.connect(vm.qmp_path)
        q.execute("qom-set", path="/machine/peripheral/balloon0",
                  property="guest-stats-polling-interval", value=1)
        # Free memory is nearly nil: 256 MiB can only come out of the cache.
        mark = len(vm.output)
        q.execute("balloon", value=256 * MiB)
        wait_balloon(q, lambda a: a == 256 * MiB, 60, vm)
        vm.wait_for(REPORT, 30, start=len(vm.output))
        c = cache_mib(vm, mark)
        check(c is not None and c < 256, f"cache still {c} MiB in a 256 MiB guest")
        # It keeps running and serving from the smaller cache; every hit is verified.
        m1 = len(vm.output)
        vm.wait_for(REPORT, 30, start=m1)
        vm.wait_for(REPORT, 30, start=len(vm.output))
        hr = re.findall(r"kvcache: t=\S+ .* hit_rate=([0-9.]+)", vm.output[m1:])
        check(hr and float(hr[-1]) > 0.2, f"hit rate after the inflate: {hr}")
        check("corrupt" not in vm.output.lower() and "MISMATCH" not in vm.output, vm.output[-800:])
        # The target holds while the app keeps allocating (it shrinks itself, not the balloon).
        time.sleep(3)
        check(q.execute("query-balloon")["actual"] == 256 * MiB, "the balloon gave memory back")
        check("balloon: target" not in vm.output[mark:],
              f"floor message although the cache had memory: {vm.output[mark:][-600:]}")
        # The stats a host reads: the cache is still available memory, and the reclaim done for
        # the balloon is not counted as the app's own direct reclaim... which the app does do,
        # since it keeps inserting into a full cache; so only check the fields are real.
        st = q.execute("qom-get", path="/machine/peripheral/balloon0", property="guest-stats")
        s = st["stats"]
        check(0 < s["stat-total-memory"] <= 256 * MiB, f"{s}")
        check(s["stat-available-memory"] > 128 * MiB,
              f"the cache should count as available: {s['stat-available-memory'] >> 20} MiB")

        # A target below what the kernel, the app's own data and the floor need: the cache is
        # emptied, then the balloon stops at its floor and says why.
        mark = len(vm.output)
        q.execute("balloon", value=4 * MiB)
        vm.wait_for(r"balloon: target \d+ MiB not reachable", 60, start=mark)
        time.sleep(2)
        actual = q.execute("query-balloon")["actual"]
        check(4 * MiB < actual < 140 * MiB, f"balloon stopped at {actual >> 20} MiB")
        m2 = len(vm.output)
        vm.wait_for(REPORT, 30, start=m2)
        # Back up: the cache grows again.
        q.execute("balloon", value=512 * MiB)
        wait_balloon(q, lambda a: a == 512 * MiB, 60, vm)
        deadline = time.monotonic() + 60
        while (cache_mib(vm, m2) or 0) < 300:
            check(time.monotonic() < deadline, f"the cache did not grow back: {vm.output[-400:]}")
            time.sleep(0.5)
        check("corrupt" not in vm.output.lower(), vm.output[-800:])


if __name__ == "__main__":
    t.main()
