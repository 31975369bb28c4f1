#!/usr/bin/env python3
"""Boot tests: blimp.elf on microvm, q35 and pc (PVH via -kernel), blimp.iso through GRUB, the
fault report, an unknown app, and no host bytes in the guest's low memory (patched QEMU)."""
import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import FAULT_STATUS, BlimpVM, TestRunner, check, require_patched_qemu  # noqa: E402
from qmp import Qmp  # noqa: E402

t = TestRunner()


def boot_hello(build, machine, **kw):
    with BlimpVM(build, app="hello", args=["greeting=hi"], machine=machine, limit=120,
                 **kw) as vm:
        status = vm.wait_exit(timeout=110)
        out = vm.output
    check(status == 0, f"hello exited with {status}\n{out}")
    check("Hello from blimp!" in out, f"no greeting\n{out}")
    check("argv[1] = greeting=hi" in out or kw.get("iso"), f"argument not passed\n{out}")
    check("pi = 3.141593, 3.142e+06, 3.14159e-06" in out, f"newlib %f/%e/%g wrong\n{out}")
    check("heap works" in out, out)
    return out


def host_looking_words(data):
    """8-byte words in user-space address ranges of an x86-64 Linux host (PIE heap/text near
    0x55..-0x56.., stacks and libraries near 0x7f..)."""
    words = struct.unpack(f"<{len(data) // 8}Q", data)
    return [(i * 8, w) for i, w in enumerate(words)
            if 0x550000000000 <= w < 0x570000000000 or 0x7f0000000000 <= w < 0x800000000000]


@t.test
def test_no_host_addresses_in_low_memory(build):
    # QEMU 7.2's PVH boot registered an on-stack buffer as fw_cfg SETUP_DATA, and qboot copied
    # whatever the stack held later into guest page 0: with share-hints=on, 176 bytes of QEMU
    # heap, stack and libc addresses at 0x950 (patch 0013 hands fw_cfg a copy).
    qemu = require_patched_qemu(build)
    with BlimpVM(build, app="idle", args=["duration=60s"], machine="q35", memory="256M", qmp=True,
                 qemu=qemu, limit=120, extra=["-machine", "mem-merge=off", "-device",
                                              "virtio-balloon-pci,id=b0,share-hints=on"]) as vm:
        vm.wait_for("blimp: starting app", 60)
        q = Qmp.connect(vm.qmp_path)
        path = os.path.join(vm.tmp, "low.bin")
        q.execute("pmemsave", {"val": 0, "size": 1 << 20, "filename": path})
        for _ in range(50):
            if os.path.exists(path) and os.path.getsize(path) == 1 << 20:
                break
            time.sleep(0.1)
        with open(path, "rb") as f:
            low = f.read()
    bad = host_looking_words(low[:0x1000])
    check(not bad, "guest page 0 holds words that look like host addresses: " +
          ", ".join(f"{off:#x}: {w:#x}" for off, w in bad[:8]))
    print(f"    page 0: no host-looking words; first MiB: {len(host_looking_words(low))} such "
          f"words (guest data)")


@t.test
def test_microvm(build):
    out = boot_hello(build, "microvm")
    check("booted via PVH" in out, out)


@t.test
def test_microvm_without_acpi(build):
    # acpi=off: no RSDP, default APIC addresses, and QEMU puts the virtio-mmio device on the
    # command line (virtio_mmio.device=...) instead of in the DSDT.
    with BlimpVM(build, app="hello", machine="microvm,acpi=off", limit=60,
                 extra=["-device", "virtio-balloon-device"]) as vm:
        check(vm.wait_exit(timeout=50) == 0, vm.output)
        check("no RSDP found" in vm.output, vm.output)
        check("virtio: balloon at mmio" in vm.output and "driver=virtio-balloon" in vm.output,
              vm.output)


@t.test
def test_q35(build):
    boot_hello(build, "q35")


@t.test
def test_pc(build):
    boot_hello(build, "pc")


@t.test
def test_pc_seabios(build):
    # Without qboot: SeaBIOS loads the PVH kernel through its pvh.bin option ROM.
    with BlimpVM(build, app="hello", machine="pc", limit=120, extra=["-bios", "bios-256k.bin"]) as vm:
        check(vm.wait_exit(timeout=110) == 0, vm.output)


@t.test
def test_iso_grub(build):
    if not os.path.exists(os.path.join(build, "blimp.iso")):
        raise AssertionError("build/blimp.iso was not built")
    out = boot_hello(build, "pc", iso=True)
    check("booted via multiboot2" in out, out)


@t.test
def test_large_memory_q35(build):
    # 5 GiB on q35 puts RAM above 4 GiB: the kernel must map and report it.
    with BlimpVM(build, app="hello", machine="q35", memory="5G", limit=120) as vm:
        check(vm.wait_exit(timeout=110) == 0, vm.output)
        check("5119 MiB RAM" in vm.output or "5120 MiB RAM" in vm.output, vm.output)


@t.test
def test_null_dereference_reported(build):
    with BlimpVM(build, app="crash", machine="microvm", limit=60) as vm:
        status = vm.wait_exit(timeout=50)
        out = vm.output
    check(status == FAULT_STATUS, f"status {status}\n{out}")
    check("CPU exception 14 (page fault)" in out, out)
    check("null pointer dereference" in out, out)
    check("rip=" in out and "backtrace" in out, out)


@t.test
def test_invalid_opcode_reported(build):
    with BlimpVM(build, app="crash", args=["mode=ud"], machine="q35", limit=60) as vm:
        check(vm.wait_exit(timeout=50) == FAULT_STATUS, vm.output)
        check("invalid opcode" in vm.output, vm.output)


@t.test
def test_panic_reported(build):
    with BlimpVM(build, app="crash", args=["mode=panic"], machine="microvm", limit=60) as vm:
        check(vm.wait_exit(timeout=50) == FAULT_STATUS, vm.output)
        check("PANIC: crash app asked for a panic" in vm.output, vm.output)


@t.test
def test_unknown_app(build):
    with BlimpVM(build, app="no-such-app", machine="microvm", limit=60) as vm:
        check(vm.wait_exit(timeout=50) == 2, vm.output)
        check("unknown app 'no-such-app'" in vm.output and "hello" in vm.output, vm.output)


if __name__ == "__main__":
    t.main()
