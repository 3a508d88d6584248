"""PyTorch ``.bin`` weight files (``torch.save`` of a state dict, as ``transformers`` wrote
them before safetensors: many Llama-2-era fine-tunes ship only these), read without
torch.

The file is a zip of ``data.pkl``, a pickle of the dict whose tensors name their
storages, and one raw little-endian file per storage (``data/<key>``). The pickle is
read by an unpickler that knows only what a state dict holds (an OrderedDict, tensors,
parameters, typed storages) and refuses anything else, so a file cannot run
code as ``torch.load`` without ``weights_only`` would let it. Tensors are read lazily,
each on its own when the model is built.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from qstar_jax.models.weights import CheckpointError, StoredTensor

# torch's typed storages, by the name a pickle gives them.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _Storage:
    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # in elements


@dataclasses.dataclass(frozen=True)
class _StorageType:  # a typed storage class, as the pickle names it
    dtype: Any


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2 (requires_grad, hooks and metadata ignored)."""
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_):
    return data


# The functions and classes a state dict's pickle names, and what stands in for each.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[module, name]
        raise CheckpointError(f"{self.path} pickles {module}.{name}, which a state dict of "
                              "tensors does not hold; it is not read (convert the file with "
                              "transformers' save_pretrained if you trust it)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.path}: unexpected storage reference {pid!r}")
        _, kind, key, _location, numel = pid
        return _Storage(key=str(key), dtype=np.dtype(kind.dtype), numel=int(numel))


def _archive_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointError(f"{path} holds {len(pickles)} data.pkl files, not one; it is not "
                              "a torch.save file")
    return pickles[0][:-len("data.pkl")]


def _check_byte_order(archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
    name = prefix + "byteorder"
    if name in archive.namelist() and archive.read(name).strip() != b"little":
        raise CheckpointError(f"{path} stores big-endian tensors, which are not read")


def open_torch_checkpoint(path: Path, stack: contextlib.ExitStack
                          ) -> dict[str, StoredTensor]:
    """The tensors of the ``torch.save`` zip at ``path``, each read on demand while
    ``stack`` holds the file open."""
    try:
        file = stack.enter_context(path.open("rb"))
        archive = stack.enter_context(zipfile.ZipFile(file))
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path} is not a zip-format torch.save file (corrupt, truncated, or saved by "
            f"torch before 1.6; re-save it with transformers' save_pretrained): {err}") from None
    prefix = _archive_prefix(archive, path)
    _check_byte_order(archive, prefix, path)
    with archive.open(prefix + "data.pkl") as pickled:
        try:
            state = _StateDictUnpickler(pickled, path).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as err:
            raise CheckpointError(f"{path}: its data.pkl does not read as a state dict: "
                                  f"{err}") from None
    if not isinstance(state, dict) or not all(isinstance(t, _Tensor) for t in state.values()):
        raise CheckpointError(f"{path} holds something other than a dict of tensors")
    return {name: StoredTensor(file=path, shape=tensor.shape,
                               read=_tensor_reader(file, archive, prefix, tensor, name, path))
            for name, tensor in state.items()}


def _tensor_reader(file: BinaryIO, archive: zipfile.ZipFile, prefix: str, tensor: _Tensor,
                   name: str, path: Path):
    def read() -> np.ndarray:
        storage = tensor.storage
        if not all(tensor.shape):
            return np.zeros(tensor.shape, storage.dtype)
        # The elements the tensor spans, from its first (a saved tensor's strides are >= 0):
        # only those are read, so a view into a large shared storage costs its own size.
        span = 1 + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride))
        if tensor.offset + span > storage.numel:
            raise CheckpointError(f"tensor {name!r} in {path} reaches past its storage")
        itemsize = storage.dtype.itemsize
        try:
            raw = _read_range(file, archive, f"{prefix}data/{storage.key}",
                              tensor.offset * itemsize, span * itemsize)
        except (KeyError, zipfile.BadZipFile, OSError) as err:
            raise CheckpointError(f"cannot read tensor {name!r} from {path}: {err}") from None
        if len(raw) != span * itemsize:
            raise CheckpointError(f"tensor {name!r} in {path}: its storage is truncated")
        strided = np.lib.stride_tricks.as_strided(
            np.frombuffer(raw, storage.dtype), tensor.shape,
            [s * itemsize for s in tensor.stride], writeable=False)
        return np.ascontiguousarray(strided)
    return read


def _read_range(file: BinaryIO, archive: zipfile.ZipFile, member: str, start: int,
                size: int) -> bytes:
    """``size`` bytes of ``member`` from byte ``start``. torch.save stores members
    uncompressed, so they are read straight from ``file`` (the archive's); a compressed one
    (a re-zipped file) is decompressed up to them."""
    info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(info) as stored:
            stored.seek(start)
            return stored.read(size)
    file.seek(info.header_offset)
    header = file.read(30)  # the local header: its name and extra field lengths at 26..30
    if header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local header for {member}")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    file.seek(info.header_offset + 30 + name_length + extra_length + start)
    return file.read(min(size, max(info.file_size - start, 0)))
