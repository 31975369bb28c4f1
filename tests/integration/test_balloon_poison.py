#!/usr/bin/env python3
"""PAGE_POISON (virtio 1.2 5.5.6.4): Blimp does not fill free pages with a poison value, so it
never accepts the feature, even when asked with balloon.poison=VAL. Stock QEMU offers it by
default and skips discarding reported pages whenever poison_val != 0: a guest that accepted it
without poisoning would both lie to the host and keep every reported page resident. Checked on
stock QEMU: the feature stays off and freed memory leaves the host's RSS through reporting."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import BlimpVM, TestRunner, check  # noqa: E402

t = TestRunner()
MiB = 1 << 20


@t.test
def test_poison_requested_is_not_negotiated_and_reporting_still_discards(build):
    with BlimpVM(build, app="memhog",
                 args=["steps=alloc:1G,free:all,wait:60s", "chunk=1020K", "balloon.poison=0xaa"],
                 machine="microvm", memory="1536M", limit=300,
                 extra=["-device", "virtio-balloon-device,id=balloon0,free-page-reporting=on"]) as vm:
        vm.wait_for(r"balloon: ready, features=\S+ \(([^)]*)\)", 60)
        line = re.search(r"balloon: ready, features=(\S+) \(([^)]*)\)", vm.output)
        features = int(line.group(1), 16)
        vm.wait_for(r"step 1 alloc", 120)
        peak = vm.rss_kib() * 1024
        vm.wait_for(r"step 2 freed", 60)
        deadline = time.monotonic() + 20
        while True:
            rss = vm.rss_kib() * 1024
            if peak - rss >= 0.9 * (1 << 30) or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        print(f"  RSS {peak // MiB} MiB after alloc:1G -> {rss // MiB} MiB after free "
              f"(fell {(peak - rss) // MiB} MiB)", flush=True)
        check(not features & (1 << 4) and "poison" not in line.group(2),
              f"PAGE_POISON negotiated: {line.group(0)}")
        check("balloon.poison" in vm.output, f"no word about the ignored balloon.poison\n{vm.output}")
        check(peak - rss >= 0.9 * (1 << 30),
              f"RSS only fell {(peak - rss) >> 20} MiB after freeing 1024 MiB\n{vm.output}")


if __name__ == "__main__":
    t.main()
