"""The interface every runtime implements: tensors that live in the backend, and nets.

The generation loop only allocates, writes, runs, reads and copies through this
interface; it never learns whether the bytes are in host RAM (ONNX Runtime) or in TPU
device memory (sophon-sail). Inputs and outputs are passed in the net's own order, since
a compiler may rename outputs but keeps their order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


BFLOAT16 = np.dtype([("bfloat16", np.uint16)])
"""numpy has no bfloat16: backends that hold bf16 tensors report this 2-byte dtype for them;
write() takes float data for such tensors (or bf16 bit patterns in this dtype, passed on as
they are) and read() gives float32 back."""


def to_bfloat16_bits(data: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bit patterns (uint16), rounding to nearest even."""
    bits = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]  # None marks a dimension fixed only at run time
    dtype: np.dtype


@dataclass(frozen=True)
class NetSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class Tensor(Protocol):
    shape: tuple[int, ...]
    dtype: np.dtype


class Backend(Protocol):
    name: str
    device: str  # where the nets run, as users should read it ("CPU (ONNX Runtime)", "TPU 0 (sophon-sail)")
    in_host_memory: bool  # its tensors live in the host's RAM (a CPU backend), not in device memory
    reads_filled_history: bool  # its decode nets take only a cache's filled rows (see view), not all SEQ

    def nets(self) -> dict[str, NetSpec]:
        """Every net the model files provide, with their input and output specs."""

    def alloc(self, shape: Sequence[int], dtype: np.dtype) -> Tensor:
        """A zero-filled tensor owned by the backend."""

    def write(self, dst: Tensor, data: np.ndarray) -> None:
        """Host -> backend; `data` has dst's shape (dtype converted if needed)."""

    def read(self, src: Tensor) -> np.ndarray:
        """Backend -> host, as a fresh numpy array."""

    def copy(self, dst: Tensor, src: Tensor, count: int, dst_offset: int = 0, src_offset: int = 0) -> None:
        """Copy `count` elements inside the backend; offsets count elements, as sail's sync_d2d."""

    def view(self, tensor: Tensor, shape: Sequence[int], offset: int = 0) -> Tensor:
        """prod(shape) elements of `tensor` from element `offset` on, as a tensor of `shape` sharing
        its memory. Only where reads_filled_history: compiled nets have static shapes."""

    def run(self, net: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor]) -> None:
        """Run one net, reading `inputs` and writing `outputs` in place (both in net order)."""

    def close(self) -> None:
        """Release the device and every tensor."""


class ModelFileError(RuntimeError):
    """The model files are missing, incomplete, or do not match what the runtime needs."""
