"""QEMU's qtest protocol over a unix socket, beside a running TCG guest (BlimpVM(qtest=True)):
reads and writes guest-physical memory, device MMIO included. Standard library only.

    from qtest import QTest
    qt = QTest.connect(vm.qtest_path)
    magic = qt.readl(0xfeb00000)
    qt.writel(0xfeb00070, 0)          # virtio-mmio Status = 0: device reset
    qt.memwrite(0x100000, b"...")     # guest RAM, in 64 KiB commands
    data = qt.memread(0x100000, 4096)
    qt.clock_step(250_000_000)        # with -accel qtest: move virtual time (ns)
"""

import socket
import time

__all__ = ["QTest", "QTestError"]


class QTestError(Exception):
    pass


class QTest:
    def __init__(self, sock, timeout):
        self._sock = sock
        self._buf = b""
        self._timeout = timeout

    @classmethod
    def connect(cls, path, timeout=30.0, reply_timeout=30.0):
        """Connects, retrying for `timeout` seconds (QEMU may still be starting); every reply
        must come within `reply_timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return cls(s, reply_timeout)
            except OSError as e:
                s.close()
                if time.monotonic() >= deadline:
                    raise QTestError(f"cannot connect to qtest socket {path}: {e}") from e
                time.sleep(0.1)

    def close(self):
        self._sock.close()

    def _line(self):
        deadline = time.monotonic() + self._timeout
        while b"\n" not in self._buf:
            self._sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self._sock.recv(1 << 20)
            except socket.timeout as e:
                raise QTestError("no qtest reply") from e
            if not chunk:
                raise QTestError("qtest socket closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def command(self, text):
        """Sends one command; returns the words after OK (asynchronous IRQ lines are skipped)."""
        self._sock.sendall(text.encode() + b"\n")
        while True:
            words = self._line().split()
            if words and words[0] == "IRQ":
                continue
            if not words or words[0] != "OK":
                raise QTestError(f"{text}: {' '.join(words)}")
            return words[1:]

    def readl(self, addr):
        return int(self.command(f"readl {addr:#x}")[0], 16)

    def writel(self, addr, value):
        self.command(f"writel {addr:#x} {value:#x}")

    def cmd(self, text):
        """command() with the reply as one string ("" for a bare OK)."""
        return " ".join(self.command(text))

    def memwrite(self, addr, data):
        for off in range(0, len(data), 65536):
            chunk = data[off:off + 65536]
            self.command(f"write {addr + off:#x} {len(chunk):#x} 0x{chunk.hex()}")

    def memread(self, addr, n):
        out = b""
        for off in range(0, n, 65536):
            m = min(65536, n - off)
            out += bytes.fromhex(self.command(f"read {addr + off:#x} {m:#x}")[0][2:])
        return out

    def clock_step(self, ns):
        return self.cmd(f"clock_step {ns}")
