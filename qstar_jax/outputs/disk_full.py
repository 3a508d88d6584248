"""An orbax save that meets a full disk, raised as the OSError Python's own writes raise.

Orbax writes through tensorstore, which reports a failed write as a ValueError, e.g.
``RESOURCE_EXHAUSTED: Error writing local file "...": ... No space left on device
[os_error_code='28']``. ``run`` reports a full disk, a quota met or a read-only folder in
one line (its DISK_ERRORS are OSError numbers), so such a save must raise an OSError too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from typing import Iterator

OS_ERROR_CODE = re.compile(r"\[os_error_code='(\d+)'\]")


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
        number = errno.ENOSPC if code is None else int(code.group(1))
        raise OSError(number, os.strerror(number), os.fspath(directory)) from error
