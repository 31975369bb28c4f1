#!/usr/bin/env python3
"""tests/lib/blimp_vm.py refuses silent host faults and QEMU errors posing as a guest's status 0.
Each case runs BlimpVM with qemu= a fake: a shell script that ignores its arguments, prints what
a guest (stdout, the serial console) or QEMU (stderr) would, and exits with a chosen status."""
import os
import shutil
import stat
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))
import blimp_vm  # noqa: E402
from blimp_vm import HOST_FAULT_RE, BlimpVM, VMError  # noqa: E402

EXIT_OK = "blimp: app 'hello' exited with status 0"


class FakeQemu:
    def __init__(self, tmp, stdout="", stderr="", rc=1):
        self.path = os.path.join(tmp, f"fake-qemu-{abs(hash((stdout, stderr, rc)))}")
        with open(self.path, "w") as f:
            f.write("#!/bin/sh\n")
            f.write(f"printf '%s' {sh_quote(stdout)}\n")
            f.write(f"printf '%s' {sh_quote(stderr)} >&2\n")
            f.write(f"exit {rc}\n")
        os.chmod(self.path, os.stat(self.path).st_mode | stat.S_IXUSR)


def sh_quote(s):
    return "'" + s.replace("'", "'\"'\"'") + "'"


class HarnessRules(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="harness-test-")
        for var in ("BLIMP_ACCEL", "BLIMP_TEST_SMP", "BLIMP_TEST_BACKGROUND"):
            os.environ.pop(var, None)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def vm(self, stdout="", stderr="", rc=1, **kw):
        q = FakeQemu(self.tmp, stdout, stderr, rc)
        return BlimpVM(self.tmp, app="hello", qemu=q.path, limit=30, **kw)

    def test_guest_status_zero_with_exit_line(self):
        with self.vm(stdout=f"hi\n{EXIT_OK}\n") as vm:
            self.assertEqual(vm.wait_exit(10), 0)

    def test_guest_status_nonzero(self):
        with self.vm(stdout="blimp: app 'memhog' exited with status 1\n", rc=3) as vm:
            self.assertEqual(vm.wait_exit(10), 1)

    def test_qemu_error_is_not_status_zero(self):
        err = "qemu-system-x86_64: -device no-such-device: 'no-such-device' is not a valid device model name\n"
        with self.assertRaises(VMError) as ctx:
            with self.vm(stderr=err) as vm:
                vm.wait_exit(10)
        self.assertIn("no-such-device", str(ctx.exception))
        self.assertIn("error of its own", str(ctx.exception))

    def test_qemu_exit_1_without_any_guest_output(self):
        with self.assertRaises(VMError):
            with self.vm() as vm:
                vm.wait_exit(10)

    def test_qemu_warning_does_not_hide_a_real_exit(self):
        warn = "qemu-system-x86_64: warning: host doesn't support requested feature\n"
        with self.vm(stdout=f"{EXIT_OK}\n", stderr=warn) as vm:
            self.assertEqual(vm.wait_exit(10), 0)

    def test_host_fault_fails_at_wait_exit(self):
        line = "virtio: balloon queue 0: device returned used id 9, which is not in flight; " \
               "queue disabled until device reset"
        with self.assertRaises(VMError) as ctx:
            with self.vm(stdout=f"{line}\n{EXIT_OK}\n") as vm:
                vm.wait_exit(10)
        self.assertIn(line, str(ctx.exception))
        self.assertIn("expect_host_faults=True", str(ctx.exception))

    def test_host_fault_fails_when_the_with_block_ends(self):
        line = "balloon: the host did not return a buffer on queue 0 within 5 s"
        with self.assertRaises(VMError) as ctx:
            with self.vm(stdout=f"{line}\n{EXIT_OK}\n") as vm:
                vm.wait_for("did not return", 10)
        self.assertIn(line, str(ctx.exception))

    def test_expected_host_faults_pass(self):
        line = "balloon: device reset by the host; reinitialising it (holding 3 MiB, 0 MiB)"
        with self.vm(stdout=f"{line}\n{EXIT_OK}\n", expect_host_faults=True) as vm:
            self.assertEqual(vm.wait_exit(10), 0)
            self.assertEqual(vm.host_faults(), [line])

    def test_test_failure_is_not_replaced_by_host_faults(self):
        with self.assertRaises(AssertionError):
            with self.vm(stdout="virtio: balloon: driver must recover\n" + EXIT_OK + "\n") as vm:
                vm.wait_for("driver must recover", 10)
                raise AssertionError("the test's own failure")

    def test_patterns(self):
        for line in ["virtio: balloon at mmio 0xfeb00000: device needs reset; queues stopped, "
                     "driver must recover",
                     "balloon: device reset by the host; reinitialising it",
                     "virtio: rng queue 0: used idx 7 runs 3 entries ahead of 1 buffers in "
                     "flight; queue disabled until device reset",
                     "balloon: host fault: bogus num_pages",
                     "virtio: balloon queue 2 is broken"]:
            self.assertTrue(HOST_FAULT_RE.search(line), line)
        for line in ["virtio: balloon at mmio 0xfeb00000 (legacy) driver=ok",
                     "balloon: inflated 100 MiB", "integrity: round 3 verified 10 pages"]:
            self.assertFalse(HOST_FAULT_RE.search(line), line)

    def test_accel_defaults_to_tcg(self):
        with self.vm(stdout=f"{EXIT_OK}\n") as vm:
            vm.wait_exit(10)
        self.assertIn("tcg", vm.cmd[vm.cmd.index("-accel") + 1])

    def test_accel_kvm_falls_back_with_a_reason(self):
        os.environ["BLIMP_ACCEL"] = "kvm"
        try:
            ok, reason = blimp_vm.kvm_usable()
            self.assertTrue(reason)
            with self.vm(stdout=f"{EXIT_OK}\n") as vm:
                vm.wait_exit(10)
            self.assertEqual(vm.cmd[vm.cmd.index("-accel") + 1], "kvm" if ok else "tcg")
        finally:
            os.environ.pop("BLIMP_ACCEL", None)

    def test_bad_accel_is_an_error(self):
        os.environ["BLIMP_ACCEL"] = "hvf"
        try:
            with self.assertRaises(VMError):
                self.vm(stdout=EXIT_OK)
        finally:
            os.environ.pop("BLIMP_ACCEL", None)

    def test_a_qemu_line_does_not_split_a_guest_line(self):
        # QEMU's stderr warning arrives while the guest is halfway through a line: `output` keeps
        # the guest's line whole (integration.adverse_host once missed "resetting the device").
        path = os.path.join(self.tmp, "fake-qemu-split")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n"
                    "printf 'balloon: host fault: queue 3 held a buffer'\n"
                    "sleep 0.05\n"
                    "printf 'qemu-system-x86_64: warning: dropped 2 notifies\\n' >&2\n"
                    "sleep 0.05\n"
                    "printf ' for 1005 ms; resetting the device\\n%s\\n' "
                    + sh_quote(EXIT_OK) + "\nexit 1\n")
        os.chmod(path, 0o755)
        with BlimpVM(self.tmp, app="hello", qemu=path, limit=30, expect_host_faults=True) as vm:
            vm.wait_for(r"host fault: queue 3 held a buffer for 1005 ms; resetting the device", 10)
            self.assertEqual(vm.wait_exit(10), 0)
            self.assertIn("qemu-system-x86_64: warning: dropped 2 notifies\n", vm.output)

    def test_a_prompt_without_newline_still_reaches_output(self):
        path = os.path.join(self.tmp, "fake-qemu-prompt")
        with open(path, "w") as f:
            f.write("#!/bin/sh\nprintf 'Press enter to boot'\nsleep 3\nexit 1\n")
        os.chmod(path, 0o755)
        with BlimpVM(self.tmp, app="hello", qemu=path, limit=30) as vm:
            vm.wait_for(r"Press enter to boot", 2)

    def with_background(self, mode, fn):
        os.environ["BLIMP_TEST_BACKGROUND"] = mode
        try:
            fn()
        finally:
            os.environ.pop("BLIMP_TEST_BACKGROUND", None)

    def test_background_is_passed_and_must_have_started(self):
        started = "blimp: starting app 'hello'\nsmp: background churn on 1 AP\n"

        def run():
            with self.vm(stdout=started + EXIT_OK + "\n") as vm:
                self.assertIn("smp.background=churn", vm.cmd[vm.cmd.index("-append") + 1])
                self.assertEqual(vm.wait_exit(10), 0)
            # A kernel that ignored the option (no line) cannot pass for one that ran it.
            with self.assertRaises(VMError) as ctx:
                with self.vm(stdout="blimp: starting app 'hello'\n" + EXIT_OK + "\n") as vm:
                    vm.wait_exit(10)
            self.assertIn("did not start it", str(ctx.exception))
        self.with_background("churn", run)

    def test_changed_page_fails_even_when_host_faults_are_expected(self):
        line = ("smp.background=churn: cpu 1: block 0x1234000 (order 0) changed while held: "
                "word 3 is 0, was written 0xabc")
        started = "blimp: starting app 'hello'\nsmp: background churn on 1 AP\n"

        def run():
            with self.assertRaises(VMError) as ctx:
                with self.vm(stdout=f"{started}{line}\n{EXIT_OK}\n",
                             expect_host_faults=True) as vm:
                    vm.wait_exit(10)
            self.assertIn(line, str(ctx.exception))
        self.with_background("churn", run)

    def test_bad_background_is_an_error(self):
        def run():
            with self.assertRaises(VMError):
                self.vm(stdout=EXIT_OK)
        self.with_background("busy", run)


if __name__ == "__main__":
    unittest.main(verbosity=2)
