#!/usr/bin/env python3
"""virtio core and transports in real VMs: the guest finds a balloon (and an rng, whose one
round trip proves interrupt-driven completion) on every transport and prints what it negotiated:

    virtio: balloon at mmio 0xfeb02e00 (legacy) driver=... features=0x30000002 queues=3 ...

Configurations: microvm virtio-mmio legacy (QEMU's default) and modern, q35 virtio-pci modern and
legacy (disable-modern=on), pc virtio-pci (transitional, used as modern). The rng on q35 has MSI-X,
the balloon only INTx, so both interrupt paths run; on pc the two share one INTx line.

Usage: python3 tests/integration/test_virtio_probe.py --build-dir BUILD [-k NAME]
Exit status: 0 pass, 77 skip (no blimp.elf or no QEMU), anything else fail.
"""
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import QEMU, BlimpVM, Skip, TestRunner, check  # noqa: E402

t = TestRunner()

VERSION_1 = 1 << 32
STATS_VQ = 1 << 1
LINE = re.compile(
    r"^virtio: (?P<dev>\w+) at (?P<where>mmio 0x[0-9a-f]+|pci [0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) "
    r"\((?P<mode>modern|legacy)\) driver=(?P<driver>\S+) features=0x(?P<features>[0-9a-f]+) "
    r"queues=(?P<queues>\d+) sizes=(?P<sizes>[\d/-]+)(?P<rest>.*)$", re.M)


def boot(build, machine, devices, extra=()):
    elf = os.path.join(build, "blimp.elf")
    if not os.path.exists(elf):
        raise Skip(f"{elf} not built")
    if not shutil.which(QEMU):
        raise Skip(f"{QEMU} not installed")
    args = list(extra)
    for d in devices:
        args += ["-device", d]
    with BlimpVM(build, app="hello", machine=machine, extra=args, limit=120,
                 name=f"{machine} {' '.join(devices)}") as vm:
        status = vm.wait_exit(timeout=110)
        out = vm.output
    check(status == 0, f"hello exited with {status}\n{out}")
    return out


def lines(out):
    found = {m.group("dev"): m for m in LINE.finditer(out)}
    bad = [l for l in out.splitlines() if l.startswith("virtio:") and
           re.search(r"failed|FAILED|broken|timeout|disabled", l)]
    check(not bad, "virtio errors:\n" + "\n".join(bad) + "\n--- output ---\n" + out)
    return found


def check_balloon(out, transport, mode):
    found = lines(out)
    check("balloon" in found, f"no balloon line\n{out}")
    m = found["balloon"]
    check(m.group("where").startswith(transport), f"balloon not on {transport}: {m.group(0)}")
    check(m.group("mode") == mode, f"expected {mode}: {m.group(0)}")
    features = int(m.group("features"), 16)
    if mode == "modern":
        check(features & VERSION_1, f"modern without VERSION_1: {m.group(0)}")
    else:
        check(not features & VERSION_1, f"legacy with VERSION_1: {m.group(0)}")
    # Stock QEMU always offers STATS_VQ: inflate, deflate and stats queues (5.5.2).
    check(features & STATS_VQ, f"STATS_VQ not negotiated: {m.group(0)}")
    check(int(m.group("queues")) >= 3, f"fewer than 3 queues: {m.group(0)}")
    for size in m.group("sizes").split("/"):
        check(size != "-" and int(size) > 0 and int(size) & (int(size) - 1) == 0,
              f"bad queue size {size}: {m.group(0)}")
    check(re.search(r"\b(irq=\d+|intx gsi=\d+|msix=\d+)", m.group("rest")),
          f"no interrupt in {m.group(0)}")
    return found


def check_rng(out, found, transport, mode, irq):
    check("rng" in found, f"no rng line\n{out}")
    m = found["rng"]
    check(m.group("where").startswith(transport) and m.group("mode") == mode, m.group(0))
    check(re.search(irq, m.group("rest")), f"rng interrupts not via /{irq}/: {m.group(0)}")
    check(re.search(r"^virtio: rng at .*: roundtrip=ok \(64 bytes\)", out, re.M),
          f"rng round trip did not complete\n{out}")


@t.test
def test_microvm_mmio_legacy(build):
    out = boot(build, "microvm", ["virtio-balloon-device", "virtio-rng-device"])
    found = check_balloon(out, "mmio", "legacy")
    check_rng(out, found, "mmio", "legacy", r"irq=\d+")


@t.test
def test_microvm_mmio_modern(build):
    out = boot(build, "microvm", ["virtio-balloon-device", "virtio-rng-device"],
               extra=["-global", "virtio-mmio.force-legacy=false"])
    found = check_balloon(out, "mmio", "modern")
    check_rng(out, found, "mmio", "modern", r"irq=\d+")


@t.test
def test_q35_pci_modern(build):
    out = boot(build, "q35", ["virtio-balloon-pci", "virtio-rng-pci"])
    found = check_balloon(out, "pci", "modern")
    check_rng(out, found, "pci", "modern", r"msix=\d+")


@t.test
def test_q35_pci_legacy(build):
    out = boot(build, "q35", ["virtio-balloon-pci,disable-modern=on",
                              "virtio-rng-pci,disable-modern=on"])
    found = check_balloon(out, "pci", "legacy")
    check_rng(out, found, "pci", "legacy", r"msix=\d+")


@t.test
def test_pc_pci(build):
    # The rng without MSI-X in slot 6 shares PIRQB (and so its GSI) with the balloon in slot 2:
    # the INTx path, with a line shared by two devices.
    out = boot(build, "pc", ["virtio-balloon-pci,addr=2", "virtio-rng-pci,vectors=0,addr=6"])
    found = check_balloon(out, "pci", "modern")
    check_rng(out, found, "pci", "modern", r"intx gsi=\d+")
    gsi = re.search(r"intx gsi=(\d+)", found["balloon"].group("rest"))
    check(gsi and f"intx gsi={gsi.group(1)} " in found["rng"].group("rest"),
          f"expected a shared line:\n{found['balloon'].group(0)}\n{found['rng'].group(0)}")


if __name__ == "__main__":
    t.main()
