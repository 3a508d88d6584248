"""An orbax save that meets a full disk, raised as the OSError Python's own writes raise.

Orbax writes through tensorstore, which reports a failed write as a ValueError, e.g.
``RESOURCE_EXHAUSTED: Error writing local file "...": ... No space left on device
[os_error_code='28']``. ``run`` reports a full disk, a quota met or a read-only folder in
one line (its DISK_ERRORS are OSError numbers), so such a save must raise an OSError too.

Orbax also reports a failure itself, from each of its threads and coroutines (an ERROR
log or an "Exception ignored" with a traceback, and "Event loop is closed" from
tensorstore callbacks the failure left behind): hundreds of lines on a full disk, a few
for a damaged checkpoint read, one more traceback for a Ctrl-C that lands while a save is
waited for. The failure is raised where the save or read is waited for, so
``quiet_orbax_failures`` keeps those reports off the terminal.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from typing import Iterator

OS_ERROR_CODE = re.compile(r"\[os_error_code='(\d+)'\]")
# How Rust's io errors end, as safetensors and tokenizers raise them: "... (os error 28)".
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


@contextlib.contextmanager
def orbax_write_errors_as_os_errors(directory: str | os.PathLike) -> Iterator[None]:
    """Within, a write error orbax raises as a ValueError that carries an OS error number
    (or is RESOURCE_EXHAUSTED, a full disk) is raised as that OSError, naming
    ``directory``; any other error as it is."""
    try:
        yield
    except ValueError as error:
        code = OS_ERROR_CODE.search(str(error))
        if code is None and not str(error).startswith("RESOURCE_EXHAUSTED"):
            raise
        raise _os_error(errno.ENOSPC if code is None else int(code.group(1)),
                        directory) from error


@contextlib.contextmanager
def rust_write_errors_as_os_errors(path: str | os.PathLike) -> Iterator[None]:
    """Within, an error of safetensors' or tokenizers' Rust writers that carries an OS error
    number (a SafetensorError, or a bare Exception from tokenizers) is raised as that
    OSError, naming ``path``; any other error as it is."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception
        code = RUST_OS_ERROR.search(str(error))
        if code is None:
            raise
        raise _os_error(int(code.group(1)), path) from error


def _os_error(number: int, path: str | os.PathLike) -> OSError:
    """The OSError Python's own write of ``path`` would raise for error ``number``."""
    return OSError(number, os.strerror(number), os.fspath(path))


@contextlib.contextmanager
def quiet_orbax_failures() -> Iterator[None]:
    """Within, the errors orbax logs (through absl's logger) are dropped, as are the
    errors Python can only print ("Exception ignored in"): those of orbax's coroutines
    left behind by a read or write that failed, and the "Event loop is closed" of
    tensorstore callbacks that outlive the event loop of a save that failed; everything
    else is reported as before."""
    absl = logging.getLogger("absl")
    previous = sys.unraisablehook

    def not_an_orbax_error(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or "orbax" not in record.pathname

    def unraisable(raised) -> None:
        code = getattr(raised.object, "cr_code", None)  # a coroutine's
        if not ((code is not None and "orbax" in code.co_filename)
                or (raised.exc_type is RuntimeError
                    and str(raised.exc_value) == "Event loop is closed")):
            previous(raised)

    absl.addFilter(not_an_orbax_error)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous
        absl.removeFilter(not_an_orbax_error)
