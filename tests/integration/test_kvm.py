#!/usr/bin/env python3
"""The boot, balloon and adverse-host tests again with -accel kvm, where /dev/kvm is hardware
KVM. There virtio-pci notifies go through ioeventfd and QEMU's main loop handles the queues
apart from the vCPU, so buffers really complete late: the paths TCG only reaches through fault
injection. On a machine without usable hardware KVM (no /dev/kvm, or kvm_pvm, a software nested
hypervisor) the test is skipped and says why (tests/lib/blimp_vm.py, kvm_usable)."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from blimp_vm import Skip, TestRunner, check, kvm_usable  # noqa: E402

SUITES = ("test_boot.py", "test_balloon.py", "test_adverse_host.py")
t = TestRunner()


def run_suite(build, suite):
    """One suite with BLIMP_ACCEL=kvm; a suite that skips (77) counts as passed, as before."""
    ok, reason = kvm_usable()
    if not ok:
        raise Skip(f"not run with -accel kvm: {reason}")
    print(f"-accel kvm: {reason}", flush=True)
    rc = subprocess.run([sys.executable, os.path.join(HERE, suite), "--build-dir", build],
                        env={**os.environ, "BLIMP_ACCEL": "kvm"}, timeout=1800).returncode
    check(rc in (0, 77), f"{suite} with -accel kvm: exit status {rc}")


for suite in SUITES:
    def test(build, suite=suite):
        run_suite(build, suite)
    test.__name__ = f"test_kvm_{suite[len('test_'):-len('.py')]}"
    t.test(test)


if __name__ == "__main__":
    t.main()
