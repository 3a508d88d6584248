import errno
import logging
import os
import sys
from types import SimpleNamespace

import pytest
from flax import nnx
from safetensors import SafetensorError

from qstar_jax.models import sharded_params
from qstar_jax.outputs.disk_full import (orbax_write_errors_as_os_errors, quiet_orbax_failures,
                                        rust_write_errors_as_os_errors)


@pytest.mark.parametrize("message, number", [
    ('RESOURCE_EXHAUSTED: Error writing local file "/out/policy/x": Failed to write 113 bytes '
     "to file 7: No space left on device [os_error_code='28']", errno.ENOSPC),
    ("RESOURCE_EXHAUSTED: Error writing local file \"/out/policy/x\": Disk quota exceeded "
     "[os_error_code='122']", errno.EDQUOT),
    ("PERMISSION_DENIED: Error opening file \"/out/policy/x\": Read-only file system "
     "[os_error_code='30']", errno.EROFS),
    ("RESOURCE_EXHAUSTED: out of space", errno.ENOSPC),  # no OS error number: a full disk
])
def test_an_orbax_write_error_with_an_os_error_is_that_os_error(message, number):
    with pytest.raises(OSError) as raised, orbax_write_errors_as_os_errors("/out/policy"):
        raise ValueError(message)
    assert (raised.value.errno, raised.value.strerror, raised.value.filename) == (
        number, os.strerror(number), "/out/policy")
    assert str(raised.value.__cause__) == message


@pytest.mark.parametrize("error", [
    SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                    'message: "No space left on device" }) (os error 28)'),
    Exception("No space left on device (os error 28)")])  # tokenizers' save
def test_a_rust_writers_error_with_an_os_error_is_that_os_error(error):
    with pytest.raises(OSError) as raised, rust_write_errors_as_os_errors("/out/policy"):
        raise error
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, "/out/policy")
    with pytest.raises(ValueError, match="^not an io error$"), \
            rust_write_errors_as_os_errors("/out/policy"):
        raise ValueError("not an io error")


def test_other_errors_pass_as_they_are():
    with pytest.raises(ValueError, match="^INVALID_ARGUMENT: bad shape$"), \
            orbax_write_errors_as_os_errors("/out/policy"):
        raise ValueError("INVALID_ARGUMENT: bad shape")


def test_saving_a_policys_parameters_on_a_full_disk_is_an_os_error(tmp_path, monkeypatch):
    def full(self, directory, params):
        raise ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on "
                         "device [os_error_code='28']")
    monkeypatch.setattr(sharded_params.ocp.StandardCheckpointer, "save", full)
    with pytest.raises(OSError) as raised:
        sharded_params.save_params(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), tmp_path / "params")
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC,
                                                           str(tmp_path / "params"))


def test_orbaxs_own_reports_of_a_failure_are_quiet_within_and_the_rest_is_not(
        caplog, monkeypatch):
    """What orbax's threads log and what Python prints of its abandoned coroutines and
    tensorstore's late callbacks stay off the terminal; other logs and errors do not."""
    absl = logging.getLogger("absl")

    def log(level, pathname):
        absl.handle(absl.makeRecord("absl", level, pathname, 1, "%s from %s", (level, pathname),
                                    None))

    printed = []
    monkeypatch.setattr(sys, "unraisablehook", printed.append)

    async def from_here():
        pass

    orbax_coroutine = SimpleNamespace(cr_code=SimpleNamespace(
        co_filename="/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py"))
    ours = from_here()
    closed = SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError("Event loop is closed"),
                             object=None)
    abandoned = SimpleNamespace(exc_type=Exception, exc_value=Exception("read failed"),
                                object=orbax_coroutine)
    other = SimpleNamespace(exc_type=Exception, exc_value=Exception("a bug"), object=ours)
    with caplog.at_level(logging.WARNING), quiet_orbax_failures():
        log(logging.ERROR, "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py")
        log(logging.WARNING, "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py")
        log(logging.ERROR, "/venv/site-packages/other/module.py")
        for raised in (closed, abandoned, other):
            sys.unraisablehook(raised)
    ours.close()
    assert [(r.levelno, r.pathname) for r in caplog.records] == [
        (logging.WARNING, "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"),
        (logging.ERROR, "/venv/site-packages/other/module.py")]
    assert printed == [other]
    log(logging.ERROR, "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py")
    sys.unraisablehook(closed)
    assert len(caplog.records) == 3 and printed == [other, closed]  # as before, after
