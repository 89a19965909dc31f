"""Sophgo TPU backend: every net of one bmodel on one device, through `sophon.sail`.

The engine runs in DEVIO mode: every tensor lives in device memory, so the hidden state
goes from net to net, the image rows are spliced into the prompt and the KV cache is
updated by device-to-device copies (`sync_d2d`, offsets in elements); only token ids,
positions and masks go up, and only logits come down.

Written against the sail API of the Sophgo SDK (Handle, Engine, Tensor, Dtype, IOMode).
`sail` can be the real `sophon.sail` or `runtime.simulated_sail`, which offers the same
calls over tpu-mlir's chip simulator; this module does not know which it drives.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np

from runtime.backend import BFLOAT16, ModelFileError, NetSpec, TensorSpec, from_bfloat16_bits, to_bfloat16_bits

INSTALL_HINT = """the sail backend needs sophon-sail (`import sophon.sail`), which is not on PyPI.
Install the wheel that matches your box (Python 3.8 wheels, published with Sophgo's demos):
  pip3 install dfss
  SE7 / SE9 / Airbox (SoC, arm64):
    python3 -m dfss --url=open@sophgo.com:sophon-demo/ChatGLM3/sail/soc/sophon_arm-3.7.0-py3-none-any.whl
  PCIe card in an x86_64 host:
    python3 -m dfss --url=open@sophgo.com:sophon-demo/ChatGLM3/sail/pcie/sophon-3.7.0-py3-none-any.whl
  PCIe card in an arm64 host:
    python3 -m dfss --url=open@sophgo.com:sophon-demo/ChatGLM3/sail/arm_pcie/sophon_arm_pcie-3.7.0-py3-none-any.whl
  pip3 install ./sophon*.whl
or build sophon-sail from the Sophgo SDK for another Python. See docs/tpu.md.
Without a TPU: --backend sail-simulator runs the same code on tpu-mlir's chip simulator."""


def import_sail() -> ModuleType:
    try:
        import sophon.sail as sail
    except ImportError as exc:
        raise ModuleNotFoundError(INSTALL_HINT) from exc
    return sail


def _dtype_table(sail: ModuleType) -> dict:
    d = sail.Dtype
    return {d.BM_FLOAT32: np.dtype(np.float32), d.BM_FLOAT16: np.dtype(np.float16), d.BM_BFLOAT16: BFLOAT16,
            d.BM_INT32: np.dtype(np.int32), d.BM_UINT32: np.dtype(np.uint32), d.BM_INT8: np.dtype(np.int8),
            d.BM_UINT8: np.dtype(np.uint8), d.BM_INT16: np.dtype(np.int16), d.BM_UINT16: np.dtype(np.uint16)}


class SailTensor:
    """A device-only sail.Tensor with the shape and numpy dtype the runtime reasons in."""

    def __init__(self, tensor, shape: tuple[int, ...], dtype: np.dtype):
        self.tensor, self.shape, self.dtype = tensor, tuple(shape), dtype


class SailBackend:
    name = "sail"
    in_host_memory = False
    reads_filled_history = False  # a bmodel's shapes are fixed: the decode nets read the whole cache

    def __init__(self, bmodel: Path, dev_id: int = 0, sail: ModuleType | None = None):
        self.bmodel = Path(bmodel)
        if not self.bmodel.is_file():
            raise ModelFileError(f"no bmodel at {self.bmodel}")
        self.sail = sail or import_sail()
        self.dev_id = dev_id
        self.device = ("SIMULATED TPU (tpu-mlir chip simulator, not hardware)" if getattr(self.sail, "SIMULATED", False)
                       else f"TPU {dev_id} (sophon-sail)")
        self._to_numpy = _dtype_table(self.sail)
        self._to_sail = {v: k for k, v in self._to_numpy.items()}
        self.handle = self.sail.Handle(dev_id)
        try:
            self.engine = self.sail.Engine(str(self.bmodel), dev_id, self.sail.IOMode.DEVIO)
        except Exception as exc:  # a truncated file, or one compiled for another chip
            raise ModelFileError(f"cannot load {self.bmodel.name} on device {dev_id}: {exc}") from exc
        self._specs = {graph: self._net_spec(graph) for graph in self.engine.get_graph_names()}
        self._names = {graph: (self.engine.get_input_names(graph), self.engine.get_output_names(graph))
                       for graph in self._specs}

    def _net_spec(self, graph: str) -> NetSpec:
        e = self.engine

        def spec(name: str, shape, dtype) -> TensorSpec:
            if dtype not in self._to_numpy:
                raise ModelFileError(f"net {graph}: tensor {name} has a data type ({dtype}) the runtime does not handle")
            return TensorSpec(name, tuple(int(d) for d in shape), self._to_numpy[dtype])

        inputs = tuple(spec(n, e.get_input_shape(graph, n), e.get_input_dtype(graph, n))
                       for n in e.get_input_names(graph))
        outputs = tuple(spec(n, e.get_output_shape(graph, n), e.get_output_dtype(graph, n))
                        for n in e.get_output_names(graph))
        return NetSpec(graph, inputs, outputs)

    def nets(self) -> dict[str, NetSpec]:
        return dict(self._specs)

    def alloc(self, shape: Sequence[int], dtype: np.dtype) -> SailTensor:
        dtype = np.dtype(dtype)
        if dtype not in self._to_sail:
            raise TypeError(f"the sail backend has no device type for {dtype}")
        tensor = self.sail.Tensor(self.handle, [int(d) for d in shape], self._to_sail[dtype], False, True)
        tensor.memory_set(0)
        return SailTensor(tensor, tuple(shape), dtype)

    def write(self, dst: SailTensor, data: np.ndarray) -> None:
        data = np.asarray(data).reshape(dst.shape)
        if dst.dtype == BFLOAT16:
            host = data.view(np.uint16) if data.dtype == BFLOAT16 else to_bfloat16_bits(data)
        elif dst.dtype == np.float16:
            host = np.ascontiguousarray(data, dtype=np.float16).view(np.uint16)  # sail takes fp16 as uint16
        else:
            host = np.ascontiguousarray(data, dtype=dst.dtype)
        dst.tensor.update_data(host)

    def read(self, src: SailTensor) -> np.ndarray:
        data = np.asarray(src.tensor.asnumpy()).reshape(src.shape)
        if src.dtype == BFLOAT16:
            return from_bfloat16_bits(data.view(np.uint16))
        if src.dtype == np.float16 and data.dtype == np.uint16:
            return data.view(np.float16).copy()
        return np.array(data, dtype=src.dtype)  # a copy: sail may reuse the array it handed out

    def copy(self, dst: SailTensor, src: SailTensor, count: int, dst_offset: int = 0, src_offset: int = 0) -> None:
        if dst.dtype != src.dtype:
            raise TypeError(f"device copy between {src.dtype} and {dst.dtype} tensors")
        if count > 0:
            dst.tensor.sync_d2d(src.tensor, src_offset, dst_offset, count)

    def view(self, tensor: SailTensor, shape: Sequence[int], offset: int = 0) -> SailTensor:
        raise NotImplementedError("bmodel nets have static shapes: they read the whole KV cache")

    def run(self, net: str, inputs: Sequence[SailTensor], outputs: Sequence[SailTensor]) -> None:
        input_names, output_names = self._names[net]
        self.engine.process(net, {n: t.tensor for n, t in zip(input_names, inputs)},
                            {n: t.tensor for n, t in zip(output_names, outputs)})

    def close(self) -> None:
        self._specs.clear()
        self.engine = None
        self.handle = None
