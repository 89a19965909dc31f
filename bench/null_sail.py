"""A sail module whose device calls cost nothing: for measuring the host's own work per token.

It offers the part of `sophon.sail` that runtime/sail_backend.py uses (Handle, Engine,
Tensor, Dtype, IOMode), over a table of net shapes instead of a bmodel. Nets do not run,
copies copy nothing, uploads are dropped and downloads return zeros of the right size, so
what a timer sees around the generation loop is Python and numpy on the host: the loop,
the backend's argument handling, dtype conversions, the embedding lookup and sampling.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Mapping, Sequence

import numpy as np

from runtime.backend import BFLOAT16
from runtime.simulated_sail import Dtype, IOMode  # sail's own enum values


NUMPY_TO_DTYPE = {np.dtype(np.float32): Dtype.BM_FLOAT32, np.dtype(np.float16): Dtype.BM_FLOAT16,
                  BFLOAT16: Dtype.BM_BFLOAT16, np.dtype(np.int32): Dtype.BM_INT32}
_HOST = {Dtype.BM_FLOAT32: np.float32, Dtype.BM_FLOAT16: np.uint16, Dtype.BM_BFLOAT16: np.uint16,
         Dtype.BM_INT32: np.int32}


@dataclass(frozen=True)
class NetShapes:
    inputs: dict[str, tuple[tuple[int, ...], np.dtype]]
    outputs: dict[str, tuple[tuple[int, ...], np.dtype]]


class Handle:
    def __init__(self, dev_id: int):
        self.dev_id = dev_id


class Tensor:
    def __init__(self, handle: Handle, shape: Sequence[int], dtype: Dtype, own_sys: bool, own_dev: bool):
        self._shape, self._dtype = list(shape), Dtype(dtype)

    def memory_set(self, value: float) -> None:
        pass

    def update_data(self, data: np.ndarray) -> None:
        pass

    def asnumpy(self) -> np.ndarray:
        return np.zeros(self._shape, _HOST[self._dtype])

    def sync_d2d(self, src: "Tensor", offset_src: int, offset_dst: int, length: int) -> None:
        pass


def make_sail(nets: Mapping[str, NetShapes]) -> SimpleNamespace:
    """A sail module serving `nets` (name -> shapes and numpy dtypes of inputs and outputs)."""

    class Engine:
        def __init__(self, bmodel_path: str, dev_id: int, mode: IOMode):
            pass

        def get_graph_names(self) -> list[str]:
            return list(nets)

        def get_input_names(self, graph: str) -> list[str]:
            return list(nets[graph].inputs)

        def get_output_names(self, graph: str) -> list[str]:
            return list(nets[graph].outputs)

        def get_input_shape(self, graph: str, name: str) -> list[int]:
            return list(nets[graph].inputs[name][0])

        def get_output_shape(self, graph: str, name: str) -> list[int]:
            return list(nets[graph].outputs[name][0])

        def get_input_dtype(self, graph: str, name: str) -> Dtype:
            return NUMPY_TO_DTYPE[np.dtype(nets[graph].inputs[name][1])]

        def get_output_dtype(self, graph: str, name: str) -> Dtype:
            return NUMPY_TO_DTYPE[np.dtype(nets[graph].outputs[name][1])]

        def process(self, graph: str, inputs: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> None:
            pass

    return SimpleNamespace(Handle=Handle, Engine=Engine, Tensor=Tensor, Dtype=Dtype, IOMode=IOMode)
