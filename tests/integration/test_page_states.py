#!/usr/bin/env python3
"""Collaborative page states (docs/page-states.md) in real VMs on the patched QEMU
(build/qemu/qemu-system-x86_64, -accel tcg):

  - the idle guest's unused memory is reclaimed (QEMU RSS falls) on x-blimp-balloon-discard,
    with no balloon command at all;
  - volatile-cache loses entries under host discard and recomputes them, zero corrupted bytes
    (q35 virtio-pci modern and microvm virtio-mmio v2);
  - integrity reports zero mismatches while the host sweeps every 200 ms;
  - page ages (patch 0012): the guest's clock advances, x-blimp-balloon-working-set sees the cold
    part of a cache as old, and a limited sweep takes the cold entries before any hot one
    (against page-ages=off, where address order takes the hot ones);
  - stock QEMU sees nothing: no registration, the app runs with page states off;
  - bench/page_states/reclaim_paths.py --quick: with the VM stopped a limited sweep gives back
    its N MiB and the balloon nothing until `cont` (behaviour only, no timings).

The memhog and integrity tests need page_states::init() to run at boot (kernel_main, after
drivers::init()); volatile-cache calls it itself. On the patched QEMU a guest that did not
register (no call, "page-states: off", a failed PSTATE_REGISTER) FAILS those tests
(blimp_vm.require_page_states); only a missing patched QEMU is a skip.
"""
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import BlimpVM, TestRunner, check, require_page_states, require_patched_qemu  # noqa: E402
from qmp import Qmp  # noqa: E402

t = TestRunner()
MiB = 1 << 20
REGISTERED = r"page-states: registered (\d+) pages"


def pstate_vm(build, app, args, machine="q35", memory="1G", props="", limit=300):
    if machine == "q35":
        extra = ["-device", f"virtio-balloon-pci,id=balloon0,page-states=on{props}"]
    else:
        extra = ["-global", "virtio-mmio.force-legacy=false",
                 "-device", f"virtio-balloon-device,id=balloon0,page-states=on{props}"]
    return BlimpVM(build, app=app, args=args, machine=machine, memory=memory, qmp=True,
                   extra=extra, limit=limit, qemu=require_patched_qemu(build))


def require_boot_registration(vm):
    """memhog/integrity do not call page_states::init() themselves: kernel_main must have."""
    require_page_states(vm, 120)


def values(line, keys):
    return {k: int(re.search(rf"\b{k}=(\d+)", line).group(1)) for k in keys}


@t.test
def test_idle_unused_memory_reclaimed_without_balloon(build):
    with pstate_vm(build, "memhog", ["steps=alloc:600M,free:all,wait:60s", "chunk=1020K"]) as vm:
        require_boot_registration(vm)
        vm.wait_for(r"memhog: step 2 freed", 180)
        q = Qmp.connect(vm.qmp_path)
        info = q.execute("x-blimp-balloon-info")
        check(info["pstate-registered"], f"array not registered: {info}")
        actual = q.execute("query-balloon")["actual"]
        rss_before = vm.rss_kib() * 1024
        res = q.execute("x-blimp-balloon-discard", timeout=120)
        rss_after = vm.rss_kib() * 1024
        fell = rss_before - rss_after
        check(res["discarded-unused"] * 4096 >= 550 * MiB,
              f"sweep discarded only {res['discarded-unused'] * 4096 >> 20} MiB: {res}")
        check(fell >= 500 * MiB, f"RSS fell by {fell >> 20} MiB only "
              f"({rss_before >> 20} -> {rss_after >> 20} MiB), sweep {res}")
        check(res["discarded-volatile"] == 0, f"{res}")
        check(q.execute("query-balloon")["actual"] == actual, "the balloon moved")
        info = q.execute("x-blimp-balloon-info")
        check(info["inflate-pfns"] == 0, f"balloon inflated: {info}")
        check(info["pstate-invalid-bytes"] == 0, f"{info}")
        # A second sweep right away finds (almost) nothing new: discarded pages stay DISCARDED.
        res2 = q.execute("x-blimp-balloon-discard", timeout=120)
        check(res2["claimed"] < res["claimed"] // 10, f"second sweep {res2} after {res}")
        print(f"    RSS {rss_before >> 20} -> {rss_after >> 20} MiB, sweep claimed "
              f"{res['claimed']} pages in {res['runs']} runs, {res['duration-us']} us")


def volatile_cache_under_discard(build, machine):
    with pstate_vm(build, "volatile-cache", ["entries=128", "pages=4", "duration=12s"],
                   machine=machine, memory="512M") as vm:
        vm.wait_for(r"volatile-cache: ready", 120)
        check(re.search(REGISTERED, vm.output), vm.output)
        q = Qmp.connect(vm.qmp_path)
        discarded = 0
        while vm.proc.poll() is None and "volatile-cache: done" not in vm.output:
            try:
                discarded += q.execute("x-blimp-balloon-discard", timeout=60)["discarded-volatile"]
            except Exception:  # noqa: BLE001 - the guest may exit between checks
                break
            time.sleep(0.5)
        status = vm.wait_exit(120)
        done = vm.wait_for(r"volatile-cache: done .*", 5).group(0)
        v = values(done, ["lookups", "hits", "discards", "recomputes", "corrupt_bytes"])
        check(status == 0, f"exit {status}\n{vm.output}")
        check(v["corrupt_bytes"] == 0, done)
        check("page_states=on" in done, done)
        check(discarded > 0, "the host discarded no volatile page")
        check(v["discards"] > 0, f"no pin found its entry lost: {done}")
        check(v["recomputes"] == 128 + v["discards"], done)
        check(v["hits"] + v["discards"] == v["lookups"], done)
        print(f"    {machine}: {done.split(': ', 1)[1]}; host discarded {discarded} volatile pages")


@t.test
def test_limited_sweep_takes_unused_pages_first(build):
    # QEMU patch 0011: with max-pages the sweep claims UNUSED pages before VOLATILE ones, and
    # unused-only never takes volatile ones. 512 MiB guest, a 2 MiB volatile cache (512 pages),
    # the rest mostly free.
    with pstate_vm(build, "volatile-cache", ["entries=128", "pages=4", "duration=60s", "report=10s"],
                   memory="512M") as vm:
        vm.wait_for(r"volatile-cache: ready", 120)
        q = Qmp.connect(vm.qmp_path)
        some = q.execute("x-blimp-balloon-discard", {"max-pages": 4096}, timeout=60)
        check(some["claimed"] == 4096 and some["discarded-volatile"] == 0,
              f"a 4096-page sweep took volatile pages while unused ones were left: {some}")
        rest = q.execute("x-blimp-balloon-discard", {"unused-only": True}, timeout=60)
        check(rest["discarded-unused"] > 10000 and rest["discarded-volatile"] == 0,
              f"unused-only: {rest}")
        # Nothing unused is left, so a limited sweep now takes volatile pages.
        vol = q.execute("x-blimp-balloon-discard", {"max-pages": 100}, timeout=60)
        check(0 < vol["discarded-volatile"] <= 100, f"then volatile: {vol}")
        print(f"    4096 asked: {some['discarded-unused']} unused, 0 volatile; unused-only: "
              f"{rest['discarded-unused']} unused; then {vol['discarded-volatile']} volatile "
              f"({vol['discarded-unused']} unused freed meanwhile)")


def hot_and_cold(build, props):
    """volatile-cache with 256 entries of 4 pages, lookups only in the first 64: after 12 s the
    other 192 entries (768 pages) have been idle since the fill. Takes the free memory first
    (unused-only), then asks a limited sweep for exactly the cold pages. Returns (the sweep, the
    working set before it, hot discards, cold entries lost, the app's done line)."""
    cold_pages = 192 * 4
    with pstate_vm(build, "volatile-cache", ["entries=256", "pages=4", "hot=64", "duration=40s",
                                             "report=5s"], memory="512M", props=props) as vm:
        vm.wait_for(r"volatile-cache: ready", 120)
        q = Qmp.connect(vm.qmp_path)
        c0 = q.execute("x-blimp-balloon-working-set")["clock-s"]
        time.sleep(12)
        ws = q.execute("x-blimp-balloon-working-set")
        q.execute("x-blimp-balloon-discard", {"unused-only": True}, timeout=60)
        res = q.execute("x-blimp-balloon-discard", {"max-pages": cold_pages}, timeout=60)
        vm.wait_for(r"volatile-cache: done .*", 120)
        status = vm.wait_exit(60)
        check(status == 0, f"volatile-cache failed ({status}): {vm.output[-2000:]}")
        done = re.search(r"volatile-cache: done .*", vm.output).group(0)
        cold = re.search(r"volatile-cache: cold entries=(\d+) lost=(\d+)", vm.output)
        check(cold, f"no cold-entry line: {vm.output[-1500:]}")
        check("corrupt_bytes=0" in done, f"corrupt bytes: {done}")
        hot_discards = values(done, ["discards"])["discards"]
        return res, ws, c0, hot_discards, int(cold.group(2)), done


@t.test
def test_oldest_volatile_pages_go_first(build):
    res, ws, c0, hot_lost, cold_lost, done = hot_and_cold(build, "")
    check(ws["ages"], f"the guest registered no age block: {ws}")
    check(ws["clock-s"] >= c0 + 10, f"the guest clock did not advance: {c0} -> {ws['clock-s']}")
    old = sum(b["volatile"] for b in ws["buckets"] if b["min-age-s"] >= 8)
    young = sum(b["volatile"] for b in ws["buckets"] if b["min-age-s"] <= 2)
    check(old >= 700, f"the cold entries are not seen as idle >= 8 s: {ws['buckets']}")
    check(young <= 256 + 16, f"more young volatile pages than the hot entries have: {ws}")
    check(res["discarded-volatile"] >= 600, f"the sweep took too few volatile pages: {res}")
    check(hot_lost == 0, f"hot entries lost pages while cold ones were there: {done}")
    check(cold_lost * 4 >= res["discarded-volatile"] - 8,
          f"the discarded volatile pages were not the cold entries' ({cold_lost} cold entries "
          f"lost, {res})")
    print(f"    working set: {old} volatile pages idle >= 8 s, {young} idle <= 2 s; sweep took "
          f"{res['discarded-volatile']} volatile pages: {cold_lost}/192 cold entries lost, "
          f"0 hot discards")


@t.test
def test_without_ages_address_order_takes_hot_entries(build):
    # The control: the same run with page-ages=off sweeps in address order, and the hot entries
    # (allocated first, lowest addresses) lose pages. Shows the ordering test above can fail.
    res, ws, c0, hot_lost, cold_lost, done = hot_and_cold(build, ",page-ages=off")
    check(not ws["ages"], f"page-ages=off but ages registered: {ws}")
    check(res["discarded-volatile"] >= 600, f"the sweep took too few volatile pages: {res}")
    check(hot_lost > 0, f"address order did not touch the hot entries ({done}): the cache's "
          f"layout changed and the ordering test proves less")
    print(f"    page-ages=off: {res['discarded-volatile']} volatile pages taken, hot entries "
          f"rediscovered {hot_lost} discards, {cold_lost}/192 cold entries lost")


@t.test
def test_volatile_cache_q35(build):
    volatile_cache_under_discard(build, "q35")


@t.test
def test_volatile_cache_microvm(build):
    volatile_cache_under_discard(build, "microvm")


@t.test
def test_integrity_under_repeated_discard(build):
    with pstate_vm(build, "integrity", ["size=300M", "pause=200ms", "duration=30s"],
                   props=",page-states-interval-ms=200", limit=400) as vm:
        require_boot_registration(vm)
        vm.wait_for(r"integrity: filled", 240)
        q = Qmp.connect(vm.qmp_path)
        first = q.execute("x-blimp-balloon-info")
        status = None
        # Keep the info from while the guest still runs.
        while vm.proc.poll() is None:
            try:
                last = q.execute("x-blimp-balloon-info", timeout=10)
            except Exception:  # noqa: BLE001
                break
            if re.search(r"integrity: (PASS|FAIL)", vm.output):
                break
            time.sleep(1)
        status = vm.wait_exit(300)
        check(status == 0, f"integrity failed ({status})\n{vm.output[-3000:]}")
        check("integrity: PASS: 0 mismatches" in vm.output, vm.output[-2000:])
        rounds = len(re.findall(r"integrity: round \d+ verified", vm.output))
        sweeps = last["pstate-sweeps"] - first["pstate-sweeps"]
        check(rounds >= 3, f"only {rounds} rounds")
        check(sweeps >= 10, f"only {sweeps} sweeps while integrity ran")
        check(last["pstate-discarded-unused"] > 0, f"nothing discarded: {last}")
        print(f"    {rounds} rounds, {sweeps} sweeps, {last['pstate-discarded-unused']} unused "
              f"pages discarded in total, 0 mismatches")


@t.test
def test_stock_qemu_sees_nothing(build):
    with BlimpVM(build, app="volatile-cache", args=["entries=16", "duration=2s"], machine="q35",
                 memory="256M", extra=["-device", "virtio-balloon-pci,id=balloon0"],
                 limit=120) as vm:
        status = vm.wait_exit(120)
        check(status == 0, vm.output)
        check("page-states: off" in vm.output and "page-states: registered" not in vm.output,
              vm.output)
        done = vm.wait_for(r"volatile-cache: done .*", 5).group(0)
        check("discards=0" in done and "corrupt_bytes=0" in done and "page_states=off" in done,
              done)


@t.test
def test_reclaim_paths_quick(build):
    """The benchmark's smoke run (bench/page_states/reclaim_paths.py --quick, N = 32 MiB): every
    row is filled in; stopped, the sweep returned at least 90% of N and the balloon inflated no
    page until `cont`, then reached its target; running, both returned at least 90% of N."""
    require_patched_qemu(build)
    script = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "page_states",
                          "reclaim_paths.py")
    out = tempfile.mkdtemp(prefix="reclaim-paths-")
    try:
        r = subprocess.run(["timeout", "--kill-after=5", "600", sys.executable, script,
                            "--build-dir", build, "--quick", "--out", out],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"exit {r.returncode}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
        with open(os.path.join(out, "reclaim_paths_quick.csv")) as f:
            rows = {(x["scenario"], x["method"]): x for x in csv.DictReader(f)}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    check(set(rows) == {(sc, m) for sc in ("running", "stopped") for m in ("sweep", "balloon")},
          f"rows: {sorted(rows)}")
    n = 32
    for (sc, m), x in sorted(rows.items()):
        print(f"  {sc:8} {m:8} returned {x['returned_mib']} MiB; while stopped "
              f"{x['returned_while_stopped_mib'] or '-'} MiB, inflated "
              f"{x['pages_inflated_while_stopped'] or '-'} pages", flush=True)
        check(x["wall_ms"] != "" and float(x["returned_mib"]) >= 0.9 * n, f"{sc} {m}: {x}")
    sweep, balloon = rows[("stopped", "sweep")], rows[("stopped", "balloon")]
    # The stopped sweep's own row is measured with the VM stopped (returned_mib, checked above).
    check(sweep["after_cont_ms"] == "", f"stopped sweep needed the guest: {sweep}")
    check(int(balloon["pages_inflated_while_stopped"]) == 0 and balloon["after_cont_ms"] != "",
          f"stopped balloon: {balloon}")


if __name__ == "__main__":
    t.main()
