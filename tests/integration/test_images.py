#!/usr/bin/env python3
"""Images for hypervisors that boot disks and pass no kernel command line (vmd, VirtualBox):
image/make-image.sh builds an ISO and a raw disk image for one app and its arguments, booted here
the way vmd boots them (-M pc, SeaBIOS, legacy virtio-pci: the disk on virtio-blk, the CD on
virtio-scsi) and the way a plain QEMU or VirtualBox does (IDE), with a legacy virtio-pci balloon;
and build/blimp.iso's GRUB menu of every app, its default entry (hello) and a chosen one.

The per-app images are made here, in a temporary directory, not by the build."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import BlimpVM, Skip, TestRunner, check  # noqa: E402
from qmp import Qmp  # noqa: E402

t = TestRunner()
IMAGE = os.path.join(os.path.dirname(__file__), "..", "..", "image")
MAKE_IMAGE = os.path.join(IMAGE, "make-image.sh")
LIST_APPS = os.path.join(IMAGE, "list-apps.py")
BALLOON = ["-device", "virtio-balloon-pci,disable-modern=on"]
# memhog with two arguments, neither its default: 24 MiB in 1020 KiB chunks.
APP, ARGS = "memhog", ["steps=alloc:24M,check:all,free:all", "chunk=1020K"]
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

_images = {}
_tmp = None


def make_image(build, fmt):
    """The memhog image in format iso or raw, made once per run."""
    global _tmp
    if fmt not in _images:
        if not shutil.which("grub-mkrescue"):
            raise Skip("grub-mkrescue not installed (grub-pc-bin grub-common xorriso mtools)")
        if _tmp is None:
            _tmp = tempfile.mkdtemp(prefix="blimp-images-")
        out = os.path.join(_tmp, f"{APP}.{fmt}")
        r = subprocess.run([MAKE_IMAGE, "--kernel", os.path.join(build, "blimp.elf"), "--app", APP,
                            "--args", " ".join(ARGS), "--format", fmt, "--out", out],
                           capture_output=True, text=True, timeout=120)
        check(r.returncode == 0, f"make-image.sh --format {fmt} failed:\n{r.stdout}{r.stderr}")
        _images[fmt] = out
    return _images[fmt]


def boot_app_image(build, fmt, device, extra=()):
    image = make_image(build, fmt)
    if fmt == "raw":
        check(os.path.getsize(image) % (1 << 20) == 0, "raw image not a whole number of MiB")
    with BlimpVM(build, machine="pc", image=image, image_device=device, extra=[*BALLOON, *extra],
                 name=f"{APP}-{fmt}", limit=150) as vm:
        status = vm.wait_exit(timeout=140)
        out = vm.output
    check(status == 0, f"{APP} exited with {status}\n{out}")
    check("booted via multiboot2" in out, f"not booted through GRUB\n{out}")
    check(f"command line: app={APP} {' '.join(ARGS)}\n" in out,
          f"the image's command line is not app={APP} {' '.join(ARGS)}\n{out}")
    check(f"blimp: starting app '{APP}'" in out, out)
    check(re.search(r"memhog: step 1 alloc 24 MiB", out), f"memhog did not get steps=\n{out}")
    check("memhog: verified" in out and "0 corrupted" in out, out)
    check(re.search(r"virtio: balloon at pci \S+ \(legacy\) driver=virtio-balloon", out),
          f"the legacy virtio-pci balloon did not bind\n{out}")
    return out


@t.test
def test_iso_as_ide_cd(build):
    # -cdrom, a VirtualBox DVD drive.
    boot_app_image(build, "iso", "ide-cd")


@t.test
def test_iso_as_vmd_cd(build):
    # vmctl start -r: vmd's CD is a virtio-scsi (legacy) CD-ROM.
    out = boot_app_image(build, "iso", "scsi-cd,bus=scsi0.0",
                         ["-device", "virtio-scsi-pci,disable-modern=on,id=scsi0"])
    check("scsi" in out and "(legacy): no driver" in out, f"virtio-scsi not seen\n{out}")


@t.test
def test_raw_as_ide_disk(build):
    # -hda, a VirtualBox disk converted from the raw image.
    boot_app_image(build, "raw", "ide-hd")


@t.test
def test_raw_as_vmd_disk(build):
    # vmctl start -d: vmd's disk is a virtio-blk (legacy) device, booted by SeaBIOS.
    out = boot_app_image(build, "raw", "virtio-blk-pci,disable-modern=on")
    check("virtio: block" in out and "(legacy): no driver" in out, f"virtio-blk not seen\n{out}")


@t.test
def test_iso_boots_as_disk(build):
    # The ISO is a hybrid image too: written to a disk (or given to vmctl -d) it boots.
    boot_app_image(build, "iso", "virtio-blk-pci,disable-modern=on")


@t.test
def test_make_image_refuses(build):
    kernel = os.path.join(build, "blimp.elf")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "x.img")
        r = subprocess.run([MAKE_IMAGE, "--kernel", kernel, "--app", "nosuchapp", "--out", out],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 2 and "no app 'nosuchapp'" in r.stderr and " hello " in r.stderr,
              f"unknown app: status {r.returncode}\n{r.stderr}")
        r = subprocess.run([MAKE_IMAGE, "--kernel", kernel, "--app", "hello", "--args",
                            "greeting='hi'", "--out", out],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 2 and "quote" in r.stderr,
              f"quote: status {r.returncode}\n{r.stderr}")
        check(not os.path.exists(out), "an image was written anyway")


def apps_in(build):
    r = subprocess.run([LIST_APPS, os.path.join(build, "blimp.elf")], capture_output=True,
                       text=True, check=True)
    names = [line.split("\t")[0] for line in r.stdout.splitlines()]
    check("hello" in names and len(names) > 5, f"list-apps.py listed {names}")
    return names


def menu_iso(build):
    iso = os.path.join(build, "blimp.iso")
    if not os.path.exists(iso):
        raise AssertionError("build/blimp.iso was not built")
    return iso


@t.test
def test_menu_default_entry(build):
    names = apps_in(build)
    with BlimpVM(build, machine="pc", image=menu_iso(build), extra=BALLOON, name="menu",
                 limit=120) as vm:
        status = vm.wait_exit(timeout=110)
        out = vm.output
    check(status == 0, f"the default entry exited with {status}\n{out}")
    check("command line: app=hello\n" in out and "Hello from blimp!" in out,
          f"the default entry is not hello\n{out}")
    # The menu as GRUB drew it on the serial console: every app's entry (GRUB scrolls past the
    # first screenful, so the entries it drew are checked, and there must be most of them).
    menu = ANSI_RE.sub("\n", out.split("Booting `", 1)[0])
    drawn = [n for n in names if re.search(rf"^[ *]{re.escape(n)}: ", menu, re.M)]
    check(len(drawn) >= min(len(names), 10) and drawn == names[:len(drawn)],
          f"menu entries drawn: {drawn}, apps: {names}\n{menu}")


def slow_menu_iso(build):
    """A menu ISO like build/blimp.iso but waiting 120 s, so keys sent on a loaded host land."""
    global _tmp
    if _tmp is None:
        _tmp = tempfile.mkdtemp(prefix="blimp-images-")
    out = os.path.join(_tmp, "menu-slow.iso")
    r = subprocess.run([MAKE_IMAGE, "--kernel", os.path.join(build, "blimp.elf"), "--menu",
                        "--timeout", "120", "--out", out], capture_output=True, text=True,
                       timeout=120)
    check(r.returncode == 0, f"make-image.sh --menu failed:\n{r.stdout}{r.stderr}")
    return out


@t.test
def test_menu_chosen_entry(build):
    # Down once, Enter: the second entry (link order: crash) runs instead of hello.
    names = apps_in(build)
    with BlimpVM(build, machine="pc", image=slow_menu_iso(build), name="menu-choice", qmp=True,
                 limit=120) as vm:
        vm.wait_for(r"Press enter to boot", timeout=60)
        q = Qmp.connect(vm.qmp_path)
        for key in ("down", "ret"):
            q.execute("send-key", keys=[{"type": "qcode", "data": key}])
        status = vm.wait_exit(timeout=100)
        out = vm.output
    check(f"command line: app={names[1]}\n" in out, f"entry 2 ({names[1]}) did not boot\n{out}")
    if names[1] == "crash":
        check(status == 125, f"crash exited with {status}\n{out}")


if __name__ == "__main__":
    try:
        t.main()
    finally:
        if _tmp:
            shutil.rmtree(_tmp, ignore_errors=True)
