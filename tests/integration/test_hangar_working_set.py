#!/usr/bin/env python3
"""hangar's balloon policy with measured idle memory (docs/hangar.md, "The balloon policy"): on the
patched QEMU with page states on, a Blimp guest publishes page ages and QEMU answers
x-blimp-balloon-working-set; hangar counts memory idle `policy.idle_after` or longer as not in the
guest's working set, shows it in the CSV and says so in the policy's reason.

Two guests under a budget below their sum, the same app in both (volatile-cache: a 64 MiB cache
in volatile memory, 32 hot entries and the rest filled once, every hit verified byte for byte):

  - `aged` publishes ages: its CSV rows carry the measured working set and idle memory (the two
    add up to its balloon size), the idle part is not zero, and once the cold entries have aged
    the measured working set is well below total - available (which counts the whole cache, not
    available memory, as used); the policy's reason says it used the measured working set;
  - `noages` has `page_ages=off` on its command line (QEMU answers, without ages): its measured
    columns stay empty and its reason is today's (`working set N`, total - available).

The stock QEMU path (no query at all) is checked by test_hangar.py.

    python3 tests/integration/test_hangar_working_set.py --build-dir build [-k name]
"""
import csv
import json
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from blimp_vm import Skip, TestRunner, check, patched_qemu_path  # noqa: E402
from hangar import HangarRun, find_hangar  # noqa: E402

t = TestRunner()

CACHE_DONE = re.compile(r"volatile-cache: done lookups=(\d+) hits=(\d+) discards=(\d+) recomputes=\d+ "
                        r"lost_pages=(\d+) corrupt_bytes=(\d+) page_states=(\w+)")
# A 64 MiB volatile cache of which 32 entries (512 KiB) are used; the rest is filled once.
CACHE_ARGS = ["entries=4096", "pages=4", "hot=32", "duration=20s", "report=5s"]


def run_fleet(build, tmp):
    hangar, kernel = find_hangar(build)
    qemu = patched_qemu_path(build)
    if not os.access(qemu, os.X_OK):
        raise Skip(f"no patched QEMU at {qemu} (make build)")
    # idle_after 2 s: a bucket boundary, so the guests need not run long for memory to count.
    fleet = {"budget": "384M", "duration": "60s",
             "policy": {"idle_after": "2s"},
             "defaults": {"memory": "256M", "machine": "microvm",
                          "balloon_props": {"page-states": True}},
             "vms": [{"name": "aged", "app": "volatile-cache", "args": CACHE_ARGS},
                     {"name": "noages", "app": "volatile-cache", "args": [*CACHE_ARGS, "page_ages=off"]}]}
    path = os.path.join(tmp, "fleet.json")
    with open(path, "w") as f:
        json.dump(fleet, f)
    return HangarRun(hangar, kernel, ["--status", "plain", "--interval", "500ms", "--config", path],
                     qemu=qemu, limit=240, csv=True)


@t.test
def test_idle_memory_measured_from_page_ages(build):
    with tempfile.TemporaryDirectory(prefix="hangar-ws-") as tmp, run_fleet(build, tmp) as r:
        rc = r.wait()
        s, vms = r.summary()
        err = r.stderr()
        check(rc == 0, f"exit {rc}\n{err}")
        for name in ("aged", "noages"):
            with open(vms[name]["serial_log"]) as f:
                out = f.read()
            m = CACHE_DONE.search(out)
            check(m, f"{name}: volatile-cache did not finish:\n{out[-2000:]}")
            check(m.group(6) == "on" and m.group(5) == "0", f"{name}: {m.group(0)}")
            want = "page ages off" if name == "noages" else "page ages on"
            check(want in out, f"{name}: no '{want}' in the guest's console:\n{out[-2000:]}")

        with open(r.csv) as f:
            rows = list(csv.DictReader(f))
        mine = {n: [row for row in rows if row["vm"] == n] for n in ("aged", "noages")}
        measured = [row for row in mine["aged"] if row["measured_idle_bytes"]]
        check(measured, f"no measured idle memory in aged's CSV rows:\n{mine['aged'][:3]}")
        idle = max(int(row["measured_idle_bytes"]) for row in measured)
        print(f"  aged: {len(measured)} of {len(mine['aged'])} rows measured, idle up to "
              f"{idle >> 20} MiB", flush=True)
        check(idle > 0, "aged: measured idle memory stayed 0")
        for row in measured:
            if row["balloon_actual_bytes"]:
                ws, idle_now = int(row["measured_working_set_bytes"]), int(row["measured_idle_bytes"])
                check(ws + idle_now == int(row["balloon_actual_bytes"]),
                      f"aged: working set + idle is not the guest's memory: {row}")
        # The cold cache entries (63.5 MiB) are idle by their ages; total - available counts them.
        guessed = [int(row["guest_total_bytes"]) - int(row["guest_available_bytes"]) for row in measured
                   if row["guest_total_bytes"] and row["guest_available_bytes"]]
        smallest = min(int(row["measured_working_set_bytes"]) for row in measured)
        print(f"  aged: measured working set down to {smallest >> 20} MiB, total - available up to "
              f"{max(guessed, default=0) >> 20} MiB", flush=True)
        check(guessed and any(int(row["measured_working_set_bytes"]) + (32 << 20) <
                              int(row["guest_total_bytes"]) - int(row["guest_available_bytes"])
                              for row in measured if row["guest_total_bytes"] and row["guest_available_bytes"]),
              "aged: the cold cache never counted as idle")
        check(all(not row["measured_idle_bytes"] and not row["measured_working_set_bytes"]
                  for row in mine["noages"]), "noages: measured columns filled without page ages")

        aged = re.findall(r"vm aged: balloon \S+ MiB \((.*)\)$", err, re.M)
        noages = re.findall(r"vm noages: balloon \S+ MiB \((.*)\)$", err, re.M)
        check(aged and noages, f"the policy set no balloon target:\n{err[-3000:]}")
        check(any("measured from page ages" in why for why in aged),
              f"aged: the policy did not use the measured working set: {aged}")
        check(not any("measured" in why for why in noages), f"noages: {noages}")
        check(any(re.fullmatch(r"working set \S+ \S+", why) for why in noages),
              f"noages: not today's reason: {noages}")


if __name__ == "__main__":
    t.main()
