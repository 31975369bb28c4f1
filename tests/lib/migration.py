"""Migrations and snapshots for the integration tests and benchmarks: start one, keep it slow
for a while so the guest (and the host's page-state sweeps) run during precopy, let it finish,
and read what it cost.

    st = migrate(vm, q, "exec:cat > /path/state", slow_for=6)   # to a file
    dst = BlimpVM(..., extra=[..., "-incoming", incoming_from_file(path)])
    st = migrate(src, q, f"unix:{sock}", slow_for=6)           # live, to a -incoming unix:SOCK

A "slow" precopy is throttled to `slow_bandwidth` bytes/s for `slow_for` seconds (the guest keeps
dirtying memory, so several dirty-bitmap syncs happen), then unthrottled with a downtime limit
large enough that it converges on a 2-core TCG host.
"""
import os
import time

from blimp_vm import check
from qmp import QmpConnectError

MiB = 1 << 20


class MigrationFailed(AssertionError):
    """query-migrate said failed or cancelled; .status holds its answer."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def start(q, uri, slow_bandwidth=None):
    if slow_bandwidth:
        q.execute("migrate-set-parameters", args={"max-bandwidth": int(slow_bandwidth)})
    q.execute("migrate", uri=uri)


def wait(vm, q, timeout=180, slow_for=0, started=None, poll=0.05):
    """Waits until the migration completed and returns query-migrate. After `slow_for` seconds
    the bandwidth limit is lifted. Raises MigrationFailed when it failed or was cancelled."""
    started = started or time.monotonic()
    deadline = started + timeout
    lifted = not slow_for
    try:
        while True:
            st = q.execute("query-migrate")
            status = st.get("status")
            if status == "completed":
                return st
            if status in ("failed", "cancelled"):
                raise MigrationFailed(f"migration {status}: {st.get('error-desc', st)}", st)
            if not lifted and time.monotonic() - started >= slow_for:
                q.execute("migrate-set-parameters",
                          args={"max-bandwidth": 1 << 40, "downtime-limit": 20000})
                lifted = True
            check(time.monotonic() < deadline, f"migration not done within {timeout}s: {st}")
            time.sleep(poll)
    except (OSError, QmpConnectError) as e:
        vm.kill()
        raise AssertionError(f"QMP failed during the migration ({e})\n{vm.output}") from e


def migrate(vm, q, uri, slow_for=0, slow_bandwidth=4 * MiB, timeout=180):
    """Migrates to `uri`; slow precopy for `slow_for` seconds (0: full speed)."""
    t0 = time.monotonic()
    start(q, uri, slow_bandwidth if slow_for else None)
    return wait(vm, q, timeout=timeout, slow_for=slow_for, started=t0)


def incoming_from_file(path):
    return f"exec:cat {path}"


def wait_listening(sock, timeout=60):
    """A destination started with -incoming unix:SOCK listens once QEMU is up: waits for it."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock):
        check(time.monotonic() < deadline, f"nothing listens on {sock} after {timeout}s")
        time.sleep(0.05)


def summary(st):
    """One line for the log: time, bytes, pages sent whole, zero pages, syncs."""
    ram = st.get("ram", {})
    return (f"{st.get('total-time', 0)} ms, downtime {st.get('downtime', 0)} ms, "
            f"{ram.get('transferred', 0) / MiB:.1f} MiB transferred, "
            f"{ram.get('normal', 0)} pages sent whole, {ram.get('duplicate', 0)} zero pages, "
            f"{ram.get('dirty-sync-count', 0)} bitmap syncs")


def wait_running(q, timeout=60):
    """An incoming VM runs once the stream is loaded (no -S): waits for status 'running'."""
    deadline = time.monotonic() + timeout
    while True:
        st = q.execute("query-status")
        if st.get("status") == "running":
            return
        check(time.monotonic() < deadline, f"destination not running after {timeout}s: {st}")
        time.sleep(0.05)
