#!/usr/bin/env python3
"""The ACPI power button asks the app to stop: QMP system_powerdown on q35 and pc (fixed-feature
button, PM1 status/enable, the FADT's SCI) and on microvm (the Generic Event Device). idle,
integrity, memhog (in a long wait) and kvcache must finish their current round, print their
summary and exit with status 0 within 30 s."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from blimp_vm import BlimpVM, TestRunner, check  # noqa: E402
from qmp import Qmp, QmpError  # noqa: E402

t = TestRunner()

APPS = {
    "idle": ([], r"idle: ready", r"idle: done"),
    "integrity": (["size=64M", "pause=200ms"], r"integrity: round 2 verified",
                  r"integrity: PASS: 0 mismatches"),
    "memhog": (["steps=alloc:64M,wait:600s,free:all"], r"step 1 alloc",
               r"memhog: verified 16384 pages, 0 corrupted[^\n]*\nmemhog: done"),
    "kvcache": (["keys=20000", "duration=600s", "report=1s"], r"kvcache: t=",
                r"kvcache: done ops=\d+ .* ok"),
}


def press(build, machine, app):
    args, ready, summary = APPS[app]
    with BlimpVM(build, app=app, args=args, machine=machine, memory="256M", qmp=True,
                 limit=180) as vm:
        vm.wait_for(r"power: power button via", 60)
        vm.wait_for(ready, 120)
        q = Qmp.connect(vm.qmp_path)
        t0 = time.monotonic()
        try:
            q.execute("system_powerdown")
        except (OSError, QmpError):
            # The guest can stop and QEMU exit before the reply reaches us; wait_exit decides.
            pass
        status = vm.wait_exit(30)
        took = time.monotonic() - t0
        print(f"  {machine} {app}: status {status} {took:.1f} s after system_powerdown", flush=True)
        check(status == 0, f"{machine} {app}: status {status}\n{vm.output}")
        check("power: button pressed" in vm.output, vm.output)
        check(vm.wait_for(summary, 1), vm.output)


for machine in ("q35", "pc", "microvm"):
    for app in APPS:
        def test(build, machine=machine, app=app):
            press(build, machine, app)
        test.__name__ = f"test_power_button_{machine}_{app}"
        t.test(test)


if __name__ == "__main__":
    t.main()
