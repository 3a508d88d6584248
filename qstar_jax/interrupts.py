"""Ctrl-C that a run's stages cannot miss.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives. Inside a
callback the interpreter calls on a library's behalf (JAX registers one with the garbage
collector) the exception is printed as "Exception ignored in ..." and dropped, and the
run goes on to its end. Tried on the default run: two Ctrl-C's in four were lost so. So
while the stages work, a SIGINT raises KeyboardInterrupt and again every half second until
the block it interrupted has ended.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import threading
from typing import Iterator


class _RepeatedInterrupt:
    """The SIGINT handler: raise KeyboardInterrupt, and from the first signal on ask for
    another every ``every_s`` seconds until ``ended`` is set."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.ended = threading.Event()
        self.repeater: threading.Thread | None = None

    def __call__(self, signum, frame) -> None:
        if self.ended.is_set():  # one the repeater asked for as the block ended
            return
        if self.repeater is None:
            self.repeater = threading.Thread(target=self._repeat, daemon=True)
            self.repeater.start()
        raise KeyboardInterrupt

    def _repeat(self) -> None:
        while not self.ended.wait(self.every_s):
            _thread.interrupt_main(signal.SIGINT)


@contextlib.contextmanager
def interrupts_until_handled(every_s: float = 0.5) -> Iterator[None]:
    """Within the block, a Ctrl-C is raised again every ``every_s`` seconds until the block
    ends (by that KeyboardInterrupt, or otherwise); outside the main thread, where no
    handler can be installed, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _RepeatedInterrupt(every_s)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        handler.ended.set()
        if handler.repeater is not None:
            handler.repeater.join()  # so no repeat reaches the handler restored below
        signal.signal(signal.SIGINT, previous)
