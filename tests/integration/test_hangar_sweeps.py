#!/usr/bin/env python3
"""Page-state sweeps driven by host pressure, through hangar on the patched QEMU
(docs/hangar.md, "Page-state reclaim"; host/hangar/reclaim_pressure.h).

Two guests with page states on: `cache` keeps a volatile cache (volatile-cache: every hit is
verified byte for byte), `batch` allocates 128 MiB, frees it and idles (the freed pages are
UNUSED and backed). hangar looks every 500 ms (`--sweep 500ms`, `sweep_when` pressure, the
default); the balloon policy is off so that only sweeps reclaim. Checked from the outside:

  - no pressure (a budget far above the fleet's RSS, a host with memory to spare): no sweep
    is asked for, QEMU discards nothing, the volatile cache loses nothing;
  - a budget below the fleet's RSS: hangar asks for the deficit, QEMU never discards more than
    it was asked for (per VM, summary.json), memory does come back, and the volatile cache's
    content is never wrong (lost entries are recomputed);
  - a budget the guests' free memory can meet: unused pages go first (QEMU patch 0011), the
    cache loses no entry, and RSS comes under the budget;
  - bench/page_states/fleet_budget.py --quick: the benchmark's three-VM fleet (volatile cache,
    kvcache, memhog bursts) under one budget, balloon alone vs sweeps plus the balloon
    (behaviour only, no timings).

    python3 tests/integration/test_hangar_sweeps.py --build-dir build [-k name]
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from blimp_vm import Skip, TestRunner, check, patched_qemu_path  # noqa: E402
from hangar import HangarRun, find_hangar  # noqa: E402

t = TestRunner()

CACHE_DONE = re.compile(r"volatile-cache: done lookups=(\d+) hits=(\d+) discards=(\d+) recomputes=\d+ "
                        r"lost_pages=(\d+) corrupt_bytes=(\d+) page_states=(\w+)")


def run_fleet(build, budget, tmp):
    hangar, kernel = find_hangar(build)
    qemu = patched_qemu_path(build)
    if not os.access(qemu, os.X_OK):
        raise Skip(f"no patched QEMU at {qemu} (make build)")
    fleet = {"budget": budget, "duration": "40s",
             "policy": {"name": "none", "sweep": "500ms"},
             "defaults": {"memory": "256M", "machine": "microvm",
                          "balloon_props": {"page-states": True}},
             "vms": [{"name": "cache", "app": "volatile-cache",
                      "args": ["entries=512", "pages=4", "duration=14s", "report=2s"]},
                     {"name": "batch", "app": "memhog",
                      "args": ["steps=alloc:128M,free:all,wait:12s"]}]}
    path = os.path.join(tmp, "fleet.json")
    with open(path, "w") as f:
        json.dump(fleet, f)
    return HangarRun(hangar, kernel, ["--status", "plain", "--interval", "500ms", "--config", path],
                     qemu=qemu, limit=240)


def finish(r):
    rc = r.wait()
    s, vms = r.summary()
    check(rc == 0, f"exit {rc}\n{r.stderr()}")
    with open(vms["cache"]["serial_log"]) as f:
        out = f.read()
    m = CACHE_DONE.search(out)
    check(m, f"volatile-cache did not finish:\n{out[-2000:]}")
    lookups, hits, discards, lost, corrupt, states = m.groups()
    check(states == "on", f"the cache ran without page states:\n{out[-2000:]}")
    check(corrupt == "0", f"volatile-cache saw {corrupt} wrong bytes")
    with open(vms["batch"]["serial_log"]) as f:
        check("memhog: done" in f.read(), "memhog did not finish")
    return s, vms, int(discards), int(lost)


@t.test
def test_no_pressure_no_discards(build):
    with tempfile.TemporaryDirectory(prefix="hangar-sweeps-") as tmp, run_fleet(build, "8G", tmp) as r:
        s, vms, discards, lost = finish(r)
        sw = s.get("page_state_sweeps", {})
        print(f"  sweeps: {sw}; cache discards {discards}", flush=True)
        check(sw.get("when") == "pressure" and sw.get("rounds") == 0 and
              sw.get("rounds_without_pressure", 0) > 0, f"sweeps ran without pressure: {sw}")
        for name in ("cache", "batch"):
            check(vms[name].get("pstate_discarded_pages") == 0 and vms[name].get("pstate_asked_pages") == 0,
                  f"{name}: discarded without pressure: {vms[name]}")
        check(discards == 0 and lost == 0, f"the cache lost entries on an idle host: {discards} discards")
        check("no pressure, nothing asked" in r.stderr(), f"hangar did not say why: {r.stderr()[-1500:]}")


@t.test
def test_budget_pressure_asks_for_the_deficit(build):
    with tempfile.TemporaryDirectory(prefix="hangar-sweeps-") as tmp, run_fleet(build, "64M", tmp) as r:
        s, vms, discards, lost = finish(r)
        sw = s.get("page_state_sweeps", {})
        asked = {n: vms[n].get("pstate_asked_pages", 0) for n in ("cache", "batch")}
        got = {n: vms[n].get("pstate_discarded_pages", 0) for n in ("cache", "batch")}
        print(f"  sweeps: {sw}; asked {asked}, discarded {got}; cache discards {discards}, lost pages "
              f"{lost}", flush=True)
        check(sw.get("rounds", 0) > 0, f"no sweep under pressure: {sw}")
        for name in asked:
            check(got[name] <= asked[name], f"{name}: discarded {got[name]} pages, asked for {asked[name]}")
        check(got["batch"] > 0, f"nothing came back from the guest that freed 128 MiB: {got}")
        check(re.search(r"page-state sweeps: pressure \(budget: rss", r.stderr()),
              f"hangar did not say why it swept: {r.stderr()[-1500:]}")



@t.test
def test_free_memory_goes_before_the_cache(build):
    # A budget the guests' free memory can meet (batch freed 128 MiB it had touched): a round
    # takes every VM's unused pages before any volatile page (QEMU patch 0011, unused-only), so
    # the cache keeps every entry.
    with tempfile.TemporaryDirectory(prefix="hangar-sweeps-") as tmp, run_fleet(build, "160M", tmp) as r:
        s, vms, discards, lost = finish(r)
        got = {n: vms[n].get("pstate_discarded_pages", 0) for n in ("cache", "batch")}
        h = s.get("host_memory", {})
        print(f"  sweeps: {s.get('page_state_sweeps')}; discarded {got}; cache discards {discards}; "
              f"RSS peak {h.get('peak_rss_bytes', 0) >> 20} MiB, end {h.get('end_rss_bytes', 0) >> 20} MiB",
              flush=True)
        check(s["page_state_sweeps"]["rounds"] > 0 and got["batch"] > 0, f"nothing swept: {s}")
        check(discards == 0 and lost == 0, f"the cache lost {discards} entries while free memory was left")
        check(h.get("end_rss_bytes", 1 << 40) <= 168 << 20, f"RSS did not come under the budget: {h}")


@t.test
def test_fleet_budget_quick(build):
    """The benchmark's smoke run (bench/page_states/fleet_budget.py --quick): the same fleet under
    the same budget, once with the balloon alone and once with pressure-driven sweeps plus the
    balloon. Both bring the fleet to the budget the way each can: the balloon holds the guests'
    memory (balloon `actual` summed) to it, and only sweeps can take QEMU's RSS under it (the
    balloon cannot reach QEMU's own memory, tens of MiB per VM). Sweeps discard pages only in the
    sweeps run, the guests there run with page states (and without them in the other), and no
    app sees a wrong byte in either run."""
    find_hangar(build)
    if not os.access(patched_qemu_path(build), os.X_OK):
        raise Skip("no patched QEMU (make build)")
    script = os.path.join(HERE, "..", "..", "bench", "page_states", "fleet_budget.py")
    out = tempfile.mkdtemp(prefix="fleet-budget-")
    try:
        r = subprocess.run(["timeout", "--kill-after=5", "600", sys.executable, script,
                            "--build-dir", build, "--quick", "--out", out],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"exit {r.returncode}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
        with open(os.path.join(out, "fleet_budget_quick.csv")) as f:
            rows = {x["mode"]: x for x in csv.DictReader(f)}
        with open(os.path.join(out, "fleet_budget_quick_rss.csv")) as f:
            series = list(csv.DictReader(f))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    check(set(rows) == {"balloon", "sweeps"}, f"rows: {sorted(rows)}")
    for mode, x in rows.items():
        pts = [p for p in series if p["mode"] == mode]
        budget = float(x["budget_mib"])
        print(f"  {mode:8} RSS peak {x['rss_peak_mib']} MiB, end {x['rss_end_mib']} MiB, guest "
              f"memory mean {x['guest_mean_mib']} MiB (budget {x['budget_mib']}); swept "
              f"{x['swept_mib']} MiB, ballooned {x['balloon_inflated_mib']} MiB; corrupt "
              f"{x['cache_corrupt_bytes']} / kv ok {x['kv_ok']} / {x['batch_corrupt_pages']}",
              flush=True)
        check(float(x["rss_peak_mib"]) > budget, f"{mode}: the fleet never needed the budget: {x}")
        check(any(float(p["guest_memory_mib"]) <= budget for p in pts),
              f"{mode}: the guests' memory never came within the budget")
        check(x["cache_corrupt_bytes"] == "0" and x["kv_ok"] == "1" and
              x["batch_corrupt_pages"] == "0", f"{mode}: an app saw wrong data: {x}")
        check(float(x["balloon_inflated_mib"]) > 0, f"{mode}: no balloon inflated: {x}")
    b, s = rows["balloon"], rows["sweeps"]
    check(float(b["swept_mib"]) == 0 and b["sweep_rounds"] == "0" and
          b["cache_page_states"] == "off", f"balloon alone swept or ran page states: {b}")
    check(float(s["swept_mib"]) > 0 and int(s["sweep_rounds"]) > 0 and
          s["cache_page_states"] == "on", f"sweeps discarded nothing: {s}")
    check(float(s["swept_mib"]) <= float(s["swept_asked_mib"]),
          f"sweeps discarded more than hangar asked for: {s}")
    budget = float(s["budget_mib"])
    check(any(float(p["fleet_rss_mib"]) <= budget for p in series if p["mode"] == "sweeps"),
          "sweeps: the fleet's RSS never came under the budget")


if __name__ == "__main__":
    t.main()
