"""PyTorch ``.bin`` files read without torch: every tensor as torch stored it (views with
offsets and strides, shared storages, each dtype a checkpoint uses), and a file that
pickles anything but a state dict refused without running it."""

import collections
import contextlib
import os
import zipfile

import numpy as np
import pytest
import torch

from qstar_jax.models import CheckpointError
from qstar_jax.models.torch_checkpoint import open_torch_checkpoint


def _read(path):
    with contextlib.ExitStack() as stack:
        return {name: (t.shape, t.read()) for name, t in
                open_torch_checkpoint(path, stack).items()}


def _recompressed(path, tmp_path):
    """The same members, deflated (a re-zipped file)."""
    out = tmp_path / "deflated.bin"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name in source.namelist():
            z.writestr(name, source.read(name))
    return out


@pytest.mark.parametrize("deflated", [False, True], ids=["as torch wrote it", "re-zipped"])
def test_every_tensor_reads_as_torch_stored_it(tmp_path, deflated):
    base = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    state = collections.OrderedDict(
        float32=base, half=base.half(), bfloat16=base.to(torch.bfloat16),
        transposed=base.to(torch.bfloat16).t(),  # strides (1, 5)
        offset_view=torch.arange(10, dtype=torch.int64)[3:8],  # storage offset 3
        every_other_row=base[::2], scalar=torch.tensor(2.5), empty=torch.zeros(0, 4),
        flags=base > 0, tied=base,  # the same storage as float32
        double=base.double(), int32=(base * 100).int(), int16=(base * 100).short(),
        int8=(base * 50).to(torch.int8), uint8=(base * 50).abs().to(torch.uint8))
    path = tmp_path / "state.bin"
    torch.save(state, path)
    read = _read(_recompressed(path, tmp_path) if deflated else path)
    assert list(read) == list(state)
    for name, tensor in state.items():
        shape, values = read[name]
        expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        assert shape == tuple(tensor.shape), name
        np.testing.assert_array_equal(values.astype(expected.dtype), expected, err_msg=name)
        assert values.flags.c_contiguous, name
    assert str(read["bfloat16"][1].dtype) == "bfloat16"
    assert read["half"][1].dtype == np.float16 and read["flags"][1].dtype == np.bool_
    assert [read[name][1].dtype for name in ("double", "int32", "int16", "int8", "uint8")] == [
        np.float64, np.int32, np.int16, np.int8, np.uint8]


class _RunsCode:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_a_file_that_pickles_anything_else_is_refused_unrun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode()}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match=r"evil\.bin pickles posix\.system, which a state "
                                              r"dict of tensors does not hold"):
        _read(tmp_path / "evil.bin")
    assert not (tmp_path / "pwned").exists()
    torch.save({"weight": torch.zeros(2), "steps": 3}, tmp_path / "mixed.bin")
    with pytest.raises(CheckpointError, match="holds something other than a dict of tensors"):
        _read(tmp_path / "mixed.bin")


def test_a_file_that_is_not_a_torch_zip_names_itself(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"\x80\x02not a zip")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is not a zip-format "
                                              r"torch\.save file"):
        _read(path)


def test_a_big_endian_file_is_refused(tmp_path):
    """torch.save records its byte order; a big-endian machine's bytes would read as
    other numbers here."""
    torch.save({"weight": torch.ones(3)}, tmp_path / "little.bin")
    with zipfile.ZipFile(tmp_path / "little.bin") as source, \
            zipfile.ZipFile(tmp_path / "big.bin", "w") as out:
        names = source.namelist()
        assert any(name.endswith("/byteorder") for name in names)
        for name in names:
            out.writestr(name, b"big" if name.endswith("/byteorder") else source.read(name))
    np.testing.assert_array_equal(_read(tmp_path / "little.bin")["weight"][1], np.ones(3))
    with pytest.raises(CheckpointError, match=r"big\.bin stores big-endian tensors"):
        _read(tmp_path / "big.bin")
