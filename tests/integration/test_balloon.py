#!/usr/bin/env python3
"""virtio-balloon against stock Debian QEMU (-accel tcg), on microvm (virtio-mmio) and q35
(virtio-pci modern and legacy): inflate/deflate through QMP with host RSS measured, guest stats,
deflate on OOM, free page reporting, a target beyond what the guest can give, and data integrity
through all of it."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import BlimpVM, TestRunner, check, wait_balloon  # noqa: E402
from qmp import Qmp  # noqa: E402

t = TestRunner()
MiB = 1 << 20
DEVICES = {
    "microvm": ("microvm", "virtio-balloon-device"),
    "q35": ("q35", "virtio-balloon-pci"),
    "q35-legacy": ("q35", "virtio-balloon-pci,disable-modern=on"),
    # Behind a PCIe root port, where libvirt puts devices on q35; qboot leaves the port's
    # windows closed and the kernel opens them (drivers/pci).
    "q35-root-port": ("q35", "virtio-balloon-pci,bus=rp1"),
}
BEFORE = {"q35-root-port": ["-device", "pcie-root-port,id=rp1,chassis=1"]}


def balloon_vm(build, kind, app, args, memory="1G", props="", **kw):
    machine, dev = DEVICES[kind]
    extra = BEFORE.get(kind, []) + ["-device", f"{dev},id=balloon0{props}"]
    return BlimpVM(build, app=app, args=args, machine=machine, memory=memory, qmp=True,
                   extra=extra, limit=300, **kw)


def inflate_deflate(build, kind):
    # memhog touches 900 MiB and frees it: the host now backs ~all guest RAM. Inflating to
    # 256 MiB must give back (in host RSS) at least 90% of what was inflated.
    with balloon_vm(build, kind, "memhog", ["steps=alloc:900M,free:all,wait:120s", "chunk=1020K"],
                    props=",deflate-on-oom=on") as vm:
        vm.wait_for(r"step 2 freed", 120)
        q = Qmp.connect(vm.qmp_path)
        ram = q.execute("query-balloon")["actual"]
        rss_before = vm.rss_kib() * 1024
        q.execute("balloon", value=256 * MiB)
        wait_balloon(q, lambda a: a == 256 * MiB)
        vm.wait_for(r"balloon: inflated \d+ MiB", 10)
        inflated = ram - 256 * MiB
        rss_after = vm.rss_kib() * 1024
        fell = rss_before - rss_after
        check(fell >= 0.9 * inflated,
              f"{kind}: RSS fell by {fell >> 20} MiB for {inflated >> 20} MiB inflated "
              f"({rss_before >> 20} -> {rss_after >> 20} MiB)")
        # Guest statistics: real numbers from the allocator.
        q.execute("qom-set", path="/machine/peripheral/balloon0",
                  property="guest-stats-polling-interval", value=1)
        deadline = time.monotonic() + 30
        while True:
            st = q.execute("qom-get", path="/machine/peripheral/balloon0", property="guest-stats")
            # The guest queued a stats buffer at boot: wait for an answer given after the
            # inflation (QEMU asks again every polling interval).
            if st["last-update"] and 0 < st["stats"].get("stat-total-memory", 0) <= 256 * MiB:
                break
            check(time.monotonic() < deadline, f"no guest stats reflecting the balloon: {st}")
            time.sleep(0.2)
        s = st["stats"]
        total, free = s["stat-total-memory"], s["stat-free-memory"]
        check(200 * MiB < total <= 256 * MiB, f"stat-total-memory {total} with a 768 MiB balloon")
        check(0 < free <= total, f"stat-free-memory {free} of {total}")
        check(s["stat-available-memory"] >= free, f"available < free: {s}")
        check(s["stat-major-faults"] == 0 and s["stat-swap-in"] == 0, f"{s}")
        # Deflate all the way back.
        q.execute("balloon", value=ram)
        wait_balloon(q, lambda a: a == ram)
        vm.wait_for(r"balloon: deflated 768 MiB", 10)


@t.test
def test_inflate_deflate_microvm(build):
    inflate_deflate(build, "microvm")


@t.test
def test_inflate_deflate_q35(build):
    inflate_deflate(build, "q35")


@t.test
def test_inflate_deflate_q35_legacy(build):
    inflate_deflate(build, "q35-legacy")


@t.test
def test_inflate_deflate_behind_a_pcie_root_port(build):
    inflate_deflate(build, "q35-root-port")


@t.test
def test_deflate_on_oom(build):
    # After the host takes 700 MiB, memhog asks for 800: the allocator deflates the balloon on
    # OOM and the app completes.
    with balloon_vm(build, "microvm", "memhog",
                    ["steps=wait:4s,alloc:800M,free:all", "chunk=1020K"],
                    props=",deflate-on-oom=on") as vm:
        vm.wait_for("starting app", 60)
        q = Qmp.connect(vm.qmp_path)
        q.execute("balloon", value=300 * MiB)
        vm.wait_for(r"balloon: inflated", 20)
        status = vm.wait_exit(120)
        out = vm.output
        check(status == 0, f"memhog failed with {status}\n{out}")
        check("deflated" in out and "on out-of-memory" in out, f"no OOM deflate\n{out}")
        check("memhog: done" in out, out)
        actual = q.execute("query-balloon")["actual"] if vm.proc.poll() is None else None
        del actual


@t.test
def test_oom_without_deflate_on_oom_fails_cleanly(build):
    # Without DEFLATE_ON_OOM the balloon must not be raided: memhog reports the OOM and exits 1.
    with balloon_vm(build, "microvm", "memhog", ["steps=wait:4s,alloc:800M", "chunk=1020K"],
                    props=",deflate-on-oom=off") as vm:
        vm.wait_for("starting app", 60)
        q = Qmp.connect(vm.qmp_path)
        q.execute("balloon", value=300 * MiB)
        vm.wait_for(r"balloon: inflated", 20)
        check(vm.wait_exit(120) == 1, vm.output)
        check("out of memory after" in vm.output, vm.output)


@t.test
def test_target_beyond_what_guest_can_give(build):
    with balloon_vm(build, "q35", "idle", ["report=1s"], memory="512M") as vm:
        vm.wait_for("idle: ready", 60)
        q = Qmp.connect(vm.qmp_path)
        q.execute("balloon", value=1 * MiB)  # QEMU's smallest target: everything but 1 MiB
        vm.wait_for(r"target \d+ MiB not reachable: holding \d+ MiB, keeping \d+ MiB free", 30)
        vm.wait_for(r"balloon: inflated \d+ MiB", 30)
        actual = q.execute("query-balloon")["actual"]
        check(actual < 64 * MiB, f"balloon did not go as far as it could: {actual >> 20} MiB")
        mark = len(vm.output)
        vm.wait_for(r"idle: up", 10, start=mark)  # the guest is alive and its timer runs
        q.execute("balloon", value=512 * MiB)
        wait_balloon(q, lambda a: a == 512 * MiB)


@t.test
def test_free_page_reporting_returns_freed_memory(build):
    # No balloon command at all: memhog frees 1 GiB and the host gets it back.
    with balloon_vm(build, "microvm", "memhog", ["steps=alloc:1G,free:all,wait:60s", "chunk=1020K"],
                    memory="1536M", props=",free-page-reporting=on") as vm:
        vm.wait_for(r"step 1 alloc", 120)
        peak = vm.rss_kib() * 1024
        vm.wait_for(r"step 2 freed", 60)
        deadline = time.monotonic() + 20
        while True:
            rss = vm.rss_kib() * 1024
            if peak - rss >= 0.9 * (1 << 30):
                break
            check(time.monotonic() < deadline,
                  f"RSS only fell {(peak - rss) >> 20} MiB after freeing 1024 MiB\n{vm.output}")
            time.sleep(0.1)


@t.test
def test_integrity_through_balloon_cycles(build):
    props = ",deflate-on-oom=on,free-page-reporting=on"
    with balloon_vm(build, "microvm", "integrity", ["size=400M", "pause=200ms"], props=props) as vm:
        vm.wait_for(r"integrity: round 1 ", 120)
        q = Qmp.connect(vm.qmp_path)
        for target in (520, 1024, 480, 1024, 500):
            q.execute("balloon", value=target * MiB)
            wait_balloon(q, lambda a: abs(a - target * MiB) < 40 * MiB)
            mark = len(vm.output)
            vm.wait_for(r"integrity: round \d+ verified", 60, start=mark)
        mark = len(vm.output)
        vm.wait_for(r"integrity: round \d+ verified", 60, start=mark)
        check("MISMATCH" not in vm.output, vm.output)
        check(" 0 mismatches (total 0)" in vm.output, vm.output)


if __name__ == "__main__":
    t.main()
