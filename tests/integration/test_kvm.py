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
from blimp_vm import kvm_usable  # noqa: E402

SUITES = ("test_boot.py", "test_balloon.py", "test_adverse_host.py")


def main():
    build = "build"
    if "--build-dir" in sys.argv:
        build = sys.argv[sys.argv.index("--build-dir") + 1]
    ok, reason = kvm_usable()
    if not ok:
        print(f"SKIP: not run with -accel kvm: {reason}")
        sys.exit(77)
    print(f"-accel kvm: {reason}", flush=True)
    failed = []
    for suite in SUITES:
        rc = subprocess.run([sys.executable, os.path.join(HERE, suite), "--build-dir", build],
                            env={**os.environ, "BLIMP_ACCEL": "kvm"}, timeout=1800).returncode
        if rc not in (0, 77):
            failed.append(suite)
    print(f"kvm: {len(SUITES) - len(failed)} of {len(SUITES)} suites passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
