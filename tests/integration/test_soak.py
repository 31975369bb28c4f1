#!/usr/bin/env python3
"""The adverse-host soak (tests/soak/soak.py), shortened for `make test`: 60 cycles of inflate,
deflate, deflate-on-OOM, page-state sweeps, device resets, slow, late and corrupt queues, while
app=soak churns and verifies its memory (reporting and seals run in the guest all the time). The
full 1000-cycle run and its recorded result: docs/soak.md."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from blimp_vm import Skip, TestRunner, check  # noqa: E402

t = TestRunner()


@t.test
def test_soak(build):
    cmd = [sys.executable, os.path.join(HERE, "..", "soak", "soak.py"), "--build-dir", build,
           "--cycles", os.environ.get("BLIMP_SOAK_CYCLES", "60"), "--seed", "7"]
    rc = subprocess.run(cmd, timeout=1800).returncode
    if rc == 77:
        raise Skip("soak.py skipped (patched QEMU not built)")
    check(rc == 0, f"soak.py exit status {rc}")


if __name__ == "__main__":
    t.main()
