"""QEMU's qtest protocol over a unix socket, beside a running TCG guest (BlimpVM(qtest=True)):
reads and writes guest-physical memory, device MMIO included. Standard library only.

    from qtest import QTest
    qt = QTest.connect(vm.qtest_path)
    magic = qt.readl(0xfeb00000)
    qt.writel(0xfeb00070, 0)          # virtio-mmio Status = 0: device reset
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
    def connect(cls, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return cls(s, 30.0)
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
                chunk = self._sock.recv(4096)
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
