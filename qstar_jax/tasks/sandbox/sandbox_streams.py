"""The parent's side of the sandbox pipes: feed the job, collect capped output and report.

One loop over non-blocking pipes, so neither a program that floods its output nor one
that never reads can block the parent, and a gigabyte of output costs the parent only
``output_limit`` bytes of memory.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time

_CHUNK = 1 << 16


class SandboxStreams:
    """The child's stdin (job), stdout+stderr (program output) and report pipe."""

    def __init__(self, process: subprocess.Popen, report_fd: int, job: bytes, *,
                 output_limit: int, report_limit: int) -> None:
        self.output = bytearray()
        self.output_bytes = 0  # including what was dropped past output_limit
        self.report = bytearray()
        self.report_overflowed = False
        self._limits = {"output": output_limit, "report": report_limit}
        self._pending_job = memoryview(job)
        self._selector = selectors.DefaultSelector()
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._report_fd = report_fd
        for stream, name, events in ((process.stdin, "job", selectors.EVENT_WRITE),
                                     (process.stdout, "output", selectors.EVENT_READ)):
            os.set_blocking(stream.fileno(), False)
            self._selector.register(stream.fileno(), events, name)
        os.set_blocking(report_fd, False)
        self._selector.register(report_fd, selectors.EVENT_READ, "report")

    def pump_until_report_ends(self, deadline: float) -> bool:
        """Move data until the report pipe closes (True) or ``deadline`` passes (False)."""
        return self._pump(deadline, until="report")

    def drain_output(self, grace_s: float) -> None:
        """Read what the (now killed) processes left in the output pipe, for ``grace_s`` at most."""
        self._pump(time.monotonic() + grace_s, until="output")

    def close(self) -> None:
        for name in [key.data for key in self._selector.get_map().values()]:
            self._finish(name)
        self._selector.close()
        os.close(self._report_fd)
        self._stdout.close()

    def _pump(self, deadline: float, *, until: str) -> bool:
        while self._open(until):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in self._selector.select(remaining):
                if key.data == "job":
                    self._write_job()
                else:
                    self._read(key.fd, key.data)
        return True

    def _open(self, name: str) -> bool:
        return any(key.data == name for key in self._selector.get_map().values())

    def _write_job(self) -> None:
        try:
            written = os.write(self._stdin.fileno(), self._pending_job[:_CHUNK])
        except BlockingIOError:
            return
        except BrokenPipeError:
            written = len(self._pending_job)  # the harness died before reading; its exit tells why
        self._pending_job = self._pending_job[written:]
        if not self._pending_job:
            self._finish("job")

    def _read(self, fd: int, name: str) -> None:
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            self._finish(name)
            return
        buffer = self.output if name == "output" else self.report
        room = self._limits[name] - len(buffer)
        buffer += chunk[:max(room, 0)]
        if name == "output":
            self.output_bytes += len(chunk)
        elif len(chunk) > room:
            self.report_overflowed = True

    def _finish(self, name: str) -> None:
        for key in list(self._selector.get_map().values()):
            if key.data == name:
                self._selector.unregister(key.fd)
        if name == "job":
            self._stdin.close()
