"""Token ids -> hidden rows in the backend: on the device through the `embedding` nets, or
looked up on the host in a table and uploaded (as tpu-mlir's `--embedding_disk` does).

A model has one or the other. The host table (`embedding.npy`, [V, H] in the hidden
state's type) saves the device memory the table would take: 1 GB in bf16 for
VisualGLM-6B's 130528 x 4096. It is memory-mapped, so only the rows a conversation uses
are ever read from disk; a decode step uploads one row (8 KiB for VisualGLM-6B in bf16).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.backend import Backend, ModelFileError, Tensor

TABLE_FILE = "embedding.npy"


class Embedding(Protocol):
    def prefill(self, ids: np.ndarray, out: Tensor) -> None:
        """`ids` [1, W] int32 (the prompt, padded to the prefill width) -> `out` [1, W, H]."""

    def decode(self, token: int, out: Tensor) -> None:
        """One token -> `out` [1, 1, H]."""


def bucket_net(base: str, width: int, widest: int) -> str:
    """The name of a prefill net compiled at `width`: the widest keeps the plain name
    (`block_3`, `embedding`), narrower ones get theirs suffixed (`block_3_128`)."""
    return base if width == widest else f"{base}_{width}"


class NetEmbedding:
    """The `embedding` (prefill, one net per width) and `embedding_cache` (decode) nets."""

    def __init__(self, backend: Backend, widest: int | None):
        self.backend, self.widest = backend, widest
        spec = backend.nets()["embedding_cache"].inputs[0]
        self._token = backend.alloc(spec.shape, spec.dtype)

    def prefill(self, ids: np.ndarray, out: Tensor) -> None:
        width = ids.shape[-1]
        net = "embedding" if self.widest is None else bucket_net("embedding", width, self.widest)
        spec = self.backend.nets()[net].inputs[0]
        ids_t = self.backend.alloc(ids.shape, spec.dtype)
        self.backend.write(ids_t, ids)
        self.backend.run(net, [ids_t], [out])

    def decode(self, token: int, out: Tensor) -> None:
        self.backend.write(self._token, np.array([[token]], np.int32))
        self.backend.run("embedding_cache", [self._token], [out])


class HostEmbedding:
    """Rows of a [V, H] table gathered on the host and written into the backend's tensor."""

    def __init__(self, backend: Backend, table: np.ndarray):
        self.backend, self.table = backend, table

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        return self.table[np.asarray(ids, np.int64).reshape(-1)]  # in the table's type: bf16 goes up as bits

    def prefill(self, ids: np.ndarray, out: Tensor) -> None:
        self.backend.write(out, self._rows(ids)[None])

    def decode(self, token: int, out: Tensor) -> None:
        self.backend.write(out, self._rows(np.array([token]))[None])


def read_table(model_dir: Path) -> np.ndarray | None:
    """The model's host embedding table, memory-mapped; None when it has none."""
    path = Path(model_dir) / TABLE_FILE
    if not path.is_file():
        return None
    try:
        table = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise ModelFileError(f"cannot read the embedding table {path}: {exc}") from exc
    if table.ndim != 2:
        raise ModelFileError(f"{path} holds an array of shape {table.shape}, not a [vocabulary, hidden] table")
    return table


def check_table(table: np.ndarray, hidden: int, dtype: np.dtype) -> None:
    """The table must give rows the first block takes: same width, same type."""
    if table.shape[1] != hidden:
        raise ModelFileError(f"the embedding table has rows of {table.shape[1]} values, the language model takes "
                             f"{hidden}: the table and the nets come from different models")
    if np.dtype(table.dtype) != np.dtype(dtype):
        raise ModelFileError(f"the embedding table holds {table.dtype} rows and the nets take {dtype}: "
                             "compile both with the same float type")
