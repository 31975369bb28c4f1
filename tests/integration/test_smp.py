#!/usr/bin/env python3
"""Application processors (kernel/smp.cpp): on q35, pc (PVH through qboot, and GRUB's multiboot2
ISO) and microvm, every CPU QEMU gives comes online, announces itself once and waits in its idle
loop, and the app still runs to its normal end on the BSP. smp=off keeps one CPU; microvm without
ACPI (no MADT) says so and keeps one; a CPU that does not come up is reported and left out, never
waited for without end (smp.test_late, the one test-only word).

Threads on the APs (kernel/threads.h): `integrity threads=N` verifies memory on N CPUs at once
(MTTCG: every vCPU on its own host thread) while the host inflates and deflates the balloon and
free page reporting runs, every CPU allocating and freeing (churn=); it must end with zero
mismatches and the page allocator's invariants intact. `memhog threads=2` allocates, fills,
verifies and frees on both CPUs of -smp 2 through balloon cycles with no page corrupted;
`kvcache threads=4` serves requests on four CPUs from one cache that fills the guest while the
balloon's demand shrinks it from the BSP, and verifies every hit; with memhog `spin:` keeping
both CPUs busy without a halt, the balloon still inflates and deflates; `integrity threads=2`
also verifies through host page-state sweeps every 200 ms and a balloon that runs the guest out
of memory (deflate on OOM from the BSP, failed allocations on the AP). threads= beyond the CPUs
online is a clear error for each app. Behaviour only: nothing is timed."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import (BlimpVM, TestRunner, check, require_page_states,  # noqa: E402
                      require_patched_qemu, requested_accel, wait_balloon)
from qmp import Qmp, QmpError  # noqa: E402

t = TestRunner()

ONLINE_RE = re.compile(r"^smp: cpu (\d+) \(apic id (\d+)\) online$", re.M)
SUMMARY_RE = re.compile(r"^smp: (\d+) of (\d+) CPUs online", re.M)


def boot(build, machine, cpus, args=(), accel=None, smp=None, **kw):
    """Boots hello with -smp; returns the console output once it exited 0."""
    with BlimpVM(build, app="hello", args=list(args), machine=machine, limit=180, accel=accel,
                 extra=["-smp", smp or str(cpus)], **kw) as vm:
        status = vm.wait_exit(timeout=170)
        out = vm.output
    check(status == 0, f"hello exited with {status}\n{out}")
    check("Hello from blimp!" in out and "heap works" in out, f"hello did not run\n{out}")
    return out


def check_all_online(out, cpus):
    summary = SUMMARY_RE.findall(out)
    check(summary == [(str(cpus), str(cpus))], f"expected 'smp: {cpus} of {cpus} CPUs online'\n{out}")
    online = ONLINE_RE.findall(out)
    # Each AP says it once; CPU 0 (the BSP) never does; QEMU numbers APIC IDs from 0.
    check(sorted(int(c) for c, _ in online) == list(range(1, cpus)), f"AP lines wrong\n{out}")
    check(all(c == a for c, a in online), f"unexpected APIC IDs\n{out}")
    # The app starts after the bring-up: no AP line may come after it.
    check(out.rfind("smp:") < out.find("blimp: starting app"), f"smp line after the app\n{out}")


def matrix_test(machine, counts):
    def test(build):
        for cpus in counts:
            check_all_online(boot(build, machine, cpus), cpus)
    test.__name__ = f"test_{machine}_smp_{'_'.join(map(str, counts))}"
    t.test(test)


matrix_test("q35", (1, 2, 4))
matrix_test("pc", (1, 2, 4))
matrix_test("microvm", (1, 2, 4))


@t.test
def test_multithreaded_tcg(build):
    # MTTCG: every vCPU on its own host thread, so the APs really run beside the BSP.
    if requested_accel() != "tcg":
        print("    (BLIMP_ACCEL asks for KVM: MTTCG case not applicable, plain -smp 4 instead)")
    accel = "tcg,thread=multi" if requested_accel() == "tcg" else None
    for machine in ("q35", "pc", "microvm"):
        check_all_online(boot(build, machine, 4, accel=accel), 4)


@t.test
def test_grub_iso(build):
    # multiboot2 through SeaBIOS and GRUB: a different loader before the same bring-up.
    iso = os.path.join(build, "blimp.iso")
    check(os.path.exists(iso), f"{iso} was not built")
    with BlimpVM(build, machine="pc", iso=True, limit=180, extra=["-smp", "2"]) as vm:
        status = vm.wait_exit(timeout=170)
        out = vm.output
    check(status == 0, f"hello exited with {status}\n{out}")
    check("booted via multiboot2" in out, out)
    check_all_online(out, 2)


@t.test
def test_smp_off(build):
    for machine in ("q35", "microvm"):
        out = boot(build, machine, 4, args=["smp=off"])
        check("smp: smp=off: only cpu 0" in out, out)
        check(not ONLINE_RE.search(out) and not SUMMARY_RE.search(out), f"APs started\n{out}")
        check("argv[1] = smp=off" not in out, f"smp=off passed to the app\n{out}")


@t.test
def test_microvm_without_acpi(build):
    out = boot(build, "microvm,acpi=off", 2)
    check("smp: no ACPI MADT" in out and "only cpu 0" in out, out)
    check(not ONLINE_RE.search(out), out)


@t.test
def test_listed_but_not_enabled(build):
    # -smp 2,maxcpus=4: the MADT lists four processors, two of them absent (not enabled).
    out = boot(build, "q35", 2, smp="2,maxcpus=4")
    check("smp: 2 of 2 CPUs online (2 more listed but not enabled)" in out, out)
    check(len(ONLINE_RE.findall(out)) == 1, out)


@t.test
def test_ap_that_does_not_come_up(build):
    # CPU 2 is started only after the BSP gave up on it: it is reported and left out, the
    # others come up, the app runs, and the late CPU parks without announcing itself.
    out = boot(build, "q35", 4, args=["smp.test_late=2"])
    check("smp: cpu 2 (apic id 2) did not come up" in out, out)
    check(SUMMARY_RE.findall(out) == [("3", "4")], out)
    check(sorted(int(c) for c, _ in ONLINE_RE.findall(out)) == [1, 3], out)


MiB = 1 << 20
THREADS_RE = re.compile(r"^integrity: (\d+) threads, on cpus ([\d,]+)$", re.M)


def power_off(vm, q):
    """The power button, then the guest's exit status and its whole console."""
    try:
        q.execute("system_powerdown")
    except (OSError, QmpError):
        pass  # the guest may exit before the reply comes back; wait_exit decides
    return vm.wait_exit(240), vm.output


def check_balloon_moved(out):
    check("balloon: inflated" in out and "balloon: deflated" in out, f"the balloon did not move\n{out}")


def integrity_threads_under_balloon(build, cpus):
    """integrity threads=cpus on q35 -smp cpus (MTTCG), through balloon cycles with free page
    reporting; stopped with the power button, it must pass and find the allocator consistent."""
    accel = "tcg,thread=multi" if requested_accel() == "tcg" else None
    props = ",deflate-on-oom=on,free-page-reporting=on"
    args = [f"threads={cpus}", "size=256M", "pause=200ms", "churn=2", "invariants=1"]
    with BlimpVM(build, app="integrity", args=args, machine="q35", memory="1G", qmp=True,
                 accel=accel, limit=600, extra=["-smp", str(cpus), "-device",
                                                f"virtio-balloon-pci,id=balloon0{props}"]) as vm:
        vm.wait_for(r"integrity: round 1 ", 300)
        m = THREADS_RE.search(vm.output)
        check(m and m.group(1) == str(cpus) and m.group(2) == ",".join(map(str, range(cpus))),
              f"expected {cpus} threads on cpus 0..{cpus - 1}\n{vm.output}")
        q = Qmp.connect(vm.qmp_path)
        for target in (560, 1024, 520, 1024):
            q.execute("balloon", value=target * MiB)
            wait_balloon(q, lambda a: abs(a - target * MiB) < 40 * MiB, timeout=120, vm=vm)
            # Two full rounds after the balloon got there: every worker verified everything
            # while its memory sat beside the moved balloon.
            mark = len(vm.output)
            vm.wait_for(r"integrity: round \d+ verified", 120, start=mark)
            mark = len(vm.output)
            vm.wait_for(r"integrity: round \d+ verified", 120, start=mark)
        status, out = power_off(vm, q)
    check_balloon_moved(out)
    check("MISMATCH" not in out, out)
    check("integrity: allocator invariants hold" in out, f"invariants not checked or broken\n{out}")
    check(re.search(r"^integrity: PASS: 0 mismatches, 0 bad pages", out, re.M),
          f"no PASS line\n{out}")
    churn = re.search(r"^integrity: churned (\d+) regions", out, re.M)
    check(churn and int(churn.group(1)) > 0, f"no region was churned\n{out}")
    check(status == 0, f"integrity exited with {status}\n{out[-3000:]}")
    return out


@t.test
def test_integrity_2_threads_under_balloon(build):
    integrity_threads_under_balloon(build, 2)


@t.test
def test_integrity_4_threads_under_balloon(build):
    integrity_threads_under_balloon(build, 4)


@t.test
def test_threads_beyond_online_cpus(build):
    with BlimpVM(build, app="integrity", args=["threads=3", "size=8M", "rounds=1"], machine="q35",
                 limit=180, extra=["-smp", "2"]) as vm:
        status = vm.wait_exit(170)
        out = vm.output
    check(status == 2, f"integrity exited with {status}, expected 2\n{out}")
    check("integrity: threads=3 but 2 CPUs are online (threads=1..2)" in out, out)
    for app, args in (("memhog", ["threads=3", "steps=alloc:8M"]), ("kvcache", ["threads=3", "ops=10"])):
        with BlimpVM(build, app=app, args=args, machine="q35", limit=180, extra=["-smp", "2"]) as vm:
            status = vm.wait_exit(170)
            out = vm.output
        check(status == 2, f"{app} exited with {status}, expected 2\n{out}")
        check(f"{app}: threads=3 but 2 CPUs are online (threads=1..2)" in out, out)


MEMHOG_THREADS_RE = re.compile(r"^memhog: (\d+) threads, on cpus ([\d,]+)$", re.M)


@t.test
def test_memhog_2_threads_under_balloon(build):
    """memhog threads=2 on q35 -smp 2 (MTTCG): both CPUs allocate, fill, verify and free their
    share in every step while the host inflates and deflates the balloon; stopped with the power
    button, everything still held is verified and freed, with no page corrupted."""
    accel = "tcg,thread=multi" if requested_accel() == "tcg" else None
    props = ",deflate-on-oom=on,free-page-reporting=on"
    cycle = "alloc:64M,check:all,free:32M,check:all,free:32M,wait:500ms"
    steps = ",".join(["alloc:128M", "check:all"] + [cycle] * 7 + ["wait:600s"])
    last = steps.count(",") + 1  # the long wait the power button ends
    with BlimpVM(build, app="memhog", args=["threads=2", f"steps={steps}"], machine="q35",
                 memory="1G", qmp=True, accel=accel, limit=600,
                 extra=["-smp", "2", "-device", f"virtio-balloon-pci,id=balloon0{props}"]) as vm:
        vm.wait_for(r"memhog: step 2 checked", 300)
        m = MEMHOG_THREADS_RE.search(vm.output)
        check(m and m.groups() == ("2", "0,1"), f"expected 2 threads on cpus 0,1\n{vm.output}")
        q = Qmp.connect(vm.qmp_path)
        for target in (560, 1024, 520, 1024):
            q.execute("balloon", value=target * MiB)
            wait_balloon(q, lambda a: abs(a - target * MiB) < 40 * MiB, timeout=120, vm=vm)
            # A step of every worker after the balloon got there, unless the steps are over (only
            # the last wait is left): then the final verification covers it.
            mark = len(vm.output)
            deadline = time.monotonic() + 120
            while not (re.search(r"^memhog: step \d+ (alloc|freed|checked)", vm.output[mark:], re.M)
                       or f"memhog: step {last - 1} " in vm.output):
                check(time.monotonic() < deadline, f"memhog made no progress\n{vm.output[-3000:]}")
                time.sleep(0.1)
        status, out = power_off(vm, q)
    check_balloon_moved(out)
    check("CORRUPTION" not in out, out)
    per_cpu = re.findall(r"^memhog: cpu (\d+) verified (\d+) pages, (\d+) corrupted$", out, re.M)
    check([c for c, _, _ in per_cpu] == ["0", "1"] and all(int(v) > 0 for _, v, _ in per_cpu),
          f"both workers should have verified pages\n{out}")
    check(re.search(r"^memhog: verified \d+ pages, 0 corrupted .*, 2 threads$", out, re.M),
          f"no clean totals line\n{out}")
    check(status == 0 and "memhog: done" in out, f"memhog exited with {status}\n{out[-3000:]}")


@t.test
def test_balloon_moves_while_every_cpu_spins(build):
    """memhog threads=2 `spin:` on q35 -smp 2 (MTTCG): both CPUs compute without ever halting
    while the host inflates and deflates the balloon. The balloon's work runs on the BSP on the
    way out of its interrupts, so it must reach both targets; the power button ends the spin on
    both CPUs and memhog verifies what it held (bench/balloon/smp.py times this)."""
    accel = "tcg,thread=multi" if requested_accel() == "tcg" else None
    with BlimpVM(build, app="memhog", args=["threads=2", "steps=alloc:128M,spin:600s"],
                 machine="q35", memory="1G", qmp=True, accel=accel, limit=600,
                 extra=["-smp", "2", "-device", "virtio-balloon-pci,id=balloon0"]) as vm:
        vm.wait_for(r"memhog: step 1 alloc", 300)
        q = Qmp.connect(vm.qmp_path)
        for target in (384, 1024):
            q.execute("balloon", value=target * MiB)
            wait_balloon(q, lambda a: abs(a - target * MiB) < 8 * MiB, timeout=120, vm=vm)
        check("memhog: step 2" not in vm.output, f"the spin ended early\n{vm.output[-2000:]}")
        status, out = power_off(vm, q)
    check_balloon_moved(out)
    check("memhog: step 2 spin cut short: stop requested" in out, f"the spin did not stop\n{out}")
    check(re.search(r"^memhog: verified \d+ pages, 0 corrupted .*, 2 threads$", out, re.M),
          f"no clean totals line\n{out}")
    check(status == 0 and "memhog: done" in out, f"memhog exited with {status}\n{out[-3000:]}")


@t.test
def test_kvcache_4_threads_under_balloon(build):
    """kvcache threads=4 on q35 -smp 4 (MTTCG): four CPUs look up and insert in one cache that
    fills the guest, while the host inflates and deflates the balloon and the shrinker (on the
    BSP) takes entries from under the other CPUs. Every hit is verified; stopped with the power
    button it must report no corruption, work on every CPU and a cache shrunk for the balloon."""
    accel = "tcg,thread=multi" if requested_accel() == "tcg" else None
    props = ",deflate-on-oom=on,free-page-reporting=on"
    # 400000 keys of 4 KiB is 1.6 GiB: more than the guest has, so the cache fills everything.
    args = ["threads=4", "keys=400000", "work=200", "duration=600s", "report=500ms"]
    with BlimpVM(build, app="kvcache", args=args, machine="q35", memory="1G", qmp=True,
                 accel=accel, limit=600,
                 extra=["-smp", "4", "-device", f"virtio-balloon-pci,id=balloon0{props}"]) as vm:
        vm.wait_for(r"kvcache: t=", 300)
        m = re.search(r"^kvcache: (\d+) threads, on cpus ([\d,]+)$", vm.output, re.M)
        check(m and m.groups() == ("4", "0,1,2,3"), f"expected 4 threads on cpus 0..3\n{vm.output}")
        deadline = time.monotonic() + 300
        while max(map(int, re.findall(r"cache_mib=(\d+)", vm.output)), default=0) < 600:
            check(time.monotonic() < deadline, f"the cache never filled memory\n{vm.output[-1500:]}")
            time.sleep(0.5)
        q = Qmp.connect(vm.qmp_path)
        for target in (560, 1024, 520, 1024):
            q.execute("balloon", value=target * MiB)
            wait_balloon(q, lambda a: abs(a - target * MiB) < 40 * MiB, timeout=120, vm=vm)
            # Two reports after the balloon got there: every CPU kept working beside it.
            vm.wait_for(r"kvcache: t=", 120, start=len(vm.output))
            vm.wait_for(r"kvcache: t=", 120, start=len(vm.output))
        status, out = power_off(vm, q)
    check_balloon_moved(out)
    check("CORRUPTION" not in out, out)
    per_cpu = re.findall(r"^kvcache: cpu (\d+) ops=(\d+) hits=(\d+) ", out, re.M)
    check([c for c, _, _ in per_cpu] == ["0", "1", "2", "3"]
          and all(int(o) > 0 and int(h) > 0 for _, o, h in per_cpu),
          f"every CPU should have served requests and hits\n{out[-3000:]}")
    done = re.search(r"^kvcache: done ops=\d+ .* shrunk=(\d+) .* threads=4 ok$", out, re.M)
    check(done and int(done.group(1)) > 0, f"no clean done line, or nothing shrunk\n{out[-3000:]}")
    check(status == 0, f"kvcache exited with {status}\n{out[-3000:]}")


@t.test
def test_integrity_2_threads_under_sweeps_and_oom(build):
    """integrity threads=2 (churn=, so both CPUs allocate and free) on q35 -smp 2 with page
    states on and the host sweeping every 200 ms, free page reporting, and then a balloon target
    below what integrity holds: the balloon takes every free page, the next allocation on the
    BSP deflates it on out-of-memory, an allocation on the AP (which never reclaims) fails and is
    counted. Through all of it no page may change: zero mismatches, invariants intact."""
    accel = "tcg,thread=multi" if requested_accel() == "tcg" else None
    props = (",deflate-on-oom=on,free-page-reporting=on,page-states=on"
             ",page-states-interval-ms=200")
    # balloon.floor=1M: inflation may take all but 1 MiB, so the next regions churned run out.
    args = ["threads=2", "size=640M", "pause=100ms", "churn=4", "invariants=1", "balloon.floor=1M"]
    with BlimpVM(build, app="integrity", args=args, machine="q35", memory="1G", qmp=True,
                 accel=accel, limit=600, qemu=require_patched_qemu(build),
                 extra=["-smp", "2", "-device", f"virtio-balloon-pci,id=balloon0{props}"]) as vm:
        require_page_states(vm, 120)
        vm.wait_for(r"integrity: round 1 verified", 300)
        q = Qmp.connect(vm.qmp_path)
        first = q.execute("x-blimp-balloon-info")
        # 400 MiB asks for more than is free: the balloon runs the guest out of memory.
        q.execute("balloon", value=400 * MiB)
        deadline = time.monotonic() + 180
        while "on out-of-memory" not in vm.output:
            check(time.monotonic() < deadline, f"no deflate on out-of-memory\n{vm.output[-3000:]}")
            time.sleep(0.5)
        # Two full rounds after the first OOM deflate (every page verified since), and on until
        # the host has swept at least ten times while integrity ran: rounds are fast on a quiet
        # host, so the count of sweeps is waited for, not assumed from the time.
        for _ in range(2):
            vm.wait_for(r"integrity: round \d+ verified", 120, start=len(vm.output))
        deadline = time.monotonic() + 120
        while (last := q.execute("x-blimp-balloon-info"))["pstate-sweeps"] - first["pstate-sweeps"] < 10:
            check(time.monotonic() < deadline, f"the host swept only "
                  f"{last['pstate-sweeps'] - first['pstate-sweeps']} times in 120 s")
            vm.wait_for(r"integrity: round \d+ verified", 120, start=len(vm.output))
        q.execute("balloon", value=1024 * MiB)
        status, out = power_off(vm, q)
    check_balloon_moved(out)
    check("MISMATCH" not in out, out[-3000:])
    check("integrity: allocator invariants hold" in out, f"invariants not checked or broken\n{out[-3000:]}")
    check(re.search(r"^integrity: PASS: 0 mismatches, 0 bad pages", out, re.M),
          f"no PASS line\n{out[-3000:]}")
    sweeps = last["pstate-sweeps"] - first["pstate-sweeps"]
    check(sweeps >= 10, f"only {sweeps} sweeps while integrity ran")
    churn = re.search(r"^integrity: churned (\d+) regions \((\d+) allocations failed\)", out, re.M)
    check(churn and int(churn.group(1)) > 0, f"no region was churned\n{out[-3000:]}")
    check(status == 0, f"integrity exited with {status}\n{out[-3000:]}")
    print(f"    {sweeps} sweeps, {churn.group(1)} regions churned, {churn.group(2)} allocations "
          f"failed, {out.count('on out-of-memory')} OOM deflates, 0 mismatches")


@t.test
def test_background_modes(build):
    """smp.background= (mm/background_churn.h): churn checks blocks on the AP while the app runs
    and says so; spin starts too; a bad value is named with the choices and the APs stay idle.
    The app ends normally in every case."""
    steps = "steps=alloc:64M,wait:4s,check:all,free:all"
    cases = (("churn", r"smp: background churn on 1 AP"),
             ("spin", r"smp: background spin on 1 AP"),
             ("busy", r"smp: bad value smp.background=busy \(off, spin, churn\): APs stay idle"))
    for mode, line in cases:
        with BlimpVM(build, app="memhog", args=[steps, f"smp.background={mode}"], machine="q35",
                     limit=180, extra=["-smp", "2"]) as vm:
            status = vm.wait_exit(170)
            out = vm.output
        check(status == 0 and "memhog: done" in out, f"{mode}: memhog exited {status}\n{out}")
        check(re.search(line, out), f"{mode}: no /{line}/\n{out}")
        if mode == "churn":
            m = re.search(r"^smp.background=churn: cpu 1: (\d+) blocks checked", out, re.M)
            check(m, f"the churn checked no block (or did not say so)\n{out}")
        else:
            check("blocks checked" not in out, f"{mode}: the churn ran\n{out}")


if __name__ == "__main__":
    t.main()
