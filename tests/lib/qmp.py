"""Small, robust QMP client over a unix socket (standard library only).

    from qmp import Qmp, QmpError
    q = Qmp.connect("/tmp/vm.qmp", timeout=30)      # retries until QEMU listens, negotiates
    info = q.execute("query-balloon")               # -> the "return" value
    q.execute("balloon", value=256 << 20)           # arguments as keywords ('-' for '_' not needed:
    q.execute("qom-get", path="/machine", property="type")
    q.execute("x-blimp-balloon-info", timeout=5)    # per-command timeout (seconds)
    evs = q.events()                                # events received so far (and drains them)
    ev = q.wait_event("BALLOON_CHANGE", timeout=10) # first matching event or None
    q.close()

Errors: QmpError (command failed: .cls and .desc from QEMU's error object, str() shows both),
QmpTimeout (no answer within the timeout), QmpConnectError (cannot connect / bad greeting).
Arguments whose Python name cannot be a keyword ("guest-stats-polling-interval" as a value is
fine; a key with '-' is not) go through execute(cmd, args={...}).
"""

import json
import os
import select
import socket
import time

__all__ = ["Qmp", "QmpError", "QmpTimeout", "QmpConnectError"]


class QmpError(Exception):
    """A QMP command returned an error."""

    def __init__(self, cmd, cls, desc):
        super().__init__(f"{cmd}: {cls}: {desc}")
        self.cmd = cmd
        self.cls = cls
        self.desc = desc


class QmpTimeout(QmpError):
    def __init__(self, cmd, timeout):
        super().__init__(cmd, "Timeout", f"no reply within {timeout}s")


class QmpConnectError(Exception):
    pass


class Qmp:
    def __init__(self, sock):
        self._sock = sock
        self._buf = b""
        self._events = []
        self._id = 0
        self.greeting = None

    # ---- connection -------------------------------------------------------------------
    @classmethod
    def connect(cls, path, timeout=30.0):
        """Connect to QEMU's QMP unix socket at `path`, retrying until `timeout` seconds have
        passed (QEMU may still be starting), then read the greeting and negotiate
        capabilities."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError as e:
                s.close()
                last = e
                if time.monotonic() >= deadline:
                    raise QmpConnectError(f"cannot connect to QMP socket {path}: {last}") from e
                time.sleep(0.1)
        q = cls(s)
        try:
            # QEMU 7.2 runs a socket QMP monitor in its I/O thread and broadcasts events to every
            # monitor not in negotiation mode, which includes one nobody has greeted yet: an event
            # emitted while a client connects (RESUME at the end of an incoming migration) can
            # reach that client before the greeting. Keep such events; the greeting follows.
            msg = q._read_msg(max(1.0, deadline - time.monotonic()))
            while msg is not None and "event" in msg and "QMP" not in msg:
                q._events.append(msg)
                msg = q._read_msg(max(1.0, deadline - time.monotonic()))
            if msg is None or "QMP" not in msg:
                raise QmpConnectError(f"bad QMP greeting on {path}: {msg!r}")
            q.greeting = msg["QMP"]
            q.execute("qmp_capabilities", timeout=max(1.0, deadline - time.monotonic()))
        except (QmpError, OSError) as e:
            q.close()
            raise QmpConnectError(f"QMP negotiation on {path} failed: {e}") from e
        return q

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- I/O --------------------------------------------------------------------------
    def _read_msg(self, timeout):
        """Next JSON message, or None on timeout. Raises QmpConnectError on EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self._sock], [], [], left)
            if not r:
                return None
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QmpConnectError("QMP connection closed by QEMU")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        line = line.strip()
        if not line:
            return self._read_msg(max(0.0, deadline - time.monotonic()))
        try:
            return json.loads(line)
        except ValueError as e:
            raise QmpConnectError(f"malformed QMP message: {line[:200]!r}") from e

    def execute(self, cmd, args=None, timeout=30.0, **kwargs):
        """Run `cmd` with arguments (dict `args` and/or keywords). Returns the "return" value;
        raises QmpError on an error reply, QmpTimeout when no reply arrives in time."""
        if self._sock is None:
            raise QmpConnectError("QMP connection is closed")
        arguments = dict(args or {})
        arguments.update(kwargs)
        self._id += 1
        req = {"execute": cmd, "id": self._id}
        if arguments:
            req["arguments"] = arguments
        self._sock.sendall(json.dumps(req).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            msg = self._read_msg(max(0.0, left)) if left > 0 else None
            if msg is None:
                raise QmpTimeout(cmd, timeout)
            if "event" in msg:
                self._events.append(msg)
                continue
            if msg.get("id") != self._id:
                continue            # a stale reply to a command that timed out
            if "error" in msg:
                err = msg["error"]
                raise QmpError(cmd, err.get("class", "?"), err.get("desc", "?"))
            return msg.get("return")

    def events(self, timeout=0.0):
        """Return (and forget) the events received so far, after waiting up to `timeout`
        seconds for more to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            msg = self._read_msg(max(0.01, left))
            if msg is None:
                break
            if "event" in msg:
                self._events.append(msg)
        evs, self._events = self._events, []
        return evs

    def wait_event(self, name, timeout=10.0):
        """Wait for the first event called `name`; returns it (other events are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("event") == name:
                    return self._events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            msg = self._read_msg(left)
            if msg is not None and "event" in msg:
                self._events.append(msg)


if __name__ == "__main__":   # tiny CLI: python3 qmp.py SOCKET CMD [JSON-ARGS]
    import sys
    q = Qmp.connect(sys.argv[1], timeout=5)
    a = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    print(json.dumps(q.execute(sys.argv[2], args=a), indent=2))
    q.close()
