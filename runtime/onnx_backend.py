"""ONNX Runtime backend: one InferenceSession per net, tensors as OrtValues over host buffers.

Each tensor is a numpy array plus an OrtValue that aliases the same memory. Nets read and
write those buffers through IO binding, so the KV cache and the hidden state are never
re-wrapped or copied from numpy between calls; a device-to-device copy is a slice
assignment on the shared buffer.

All sessions run on ONNX Runtime's process-wide thread pool, sized by the first backend
opened in the process (later `threads` values only set how many nets load in parallel);
any other InferenceSession in the same process must set use_per_session_threads=False.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from runtime.backend import ModelFileError, NetSpec, TensorSpec

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(int32)": np.int32, "tensor(int64)": np.int64}

_global_pool_threads: int | None = None


def _use_global_thread_pool(threads: int) -> None:
    """Dozens of small sessions share one pool instead of each spinning its own threads."""
    global _global_pool_threads
    if _global_pool_threads is None:
        ort.capi._pybind_state.set_global_thread_pool_sizes(threads, 1)
        _global_pool_threads = threads


class OrtTensor:
    def __init__(self, array: np.ndarray):
        self.array = array
        self.value = ort.OrtValue.ortvalue_from_numpy(array)
        self.shape = array.shape
        self.dtype = array.dtype


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(_NP_TYPES[arg.type]))


def _load_session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a truncated or foreign file
        raise ModelFileError(f"cannot load {path.name}: {exc}") from exc


class OnnxBackend:
    name = "onnx"
    device = "CPU (ONNX Runtime)"
    in_host_memory = True

    def __init__(self, model_dir: Path, threads: int | None = None):
        self.model_dir = Path(model_dir)
        files = sorted(self.model_dir.glob("*.onnx"))
        if not files:
            raise ModelFileError(f"no .onnx nets in {self.model_dir}")
        threads = threads or os.cpu_count() or 1
        _use_global_thread_pool(threads)
        options = ort.SessionOptions()
        options.use_per_session_threads = False
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Session creation releases the GIL: loading the nets side by side halves start-up.
        with ThreadPoolExecutor(max_workers=threads) as pool:
            sessions = list(pool.map(lambda path: _load_session(path, options), files))
        self._sessions = {path.stem: session for path, session in zip(files, sessions)}
        self._specs = {
            name: NetSpec(name, tuple(_spec(a) for a in session.get_inputs()),
                          tuple(_spec(a) for a in session.get_outputs()))
            for name, session in self._sessions.items()
        }

    def nets(self) -> dict[str, NetSpec]:
        return dict(self._specs)

    def alloc(self, shape: Sequence[int], dtype) -> OrtTensor:
        return OrtTensor(np.zeros(tuple(shape), dtype=dtype))

    def write(self, dst: OrtTensor, data: np.ndarray) -> None:
        np.copyto(dst.array, np.asarray(data).reshape(dst.shape), casting="same_kind")

    def read(self, src: OrtTensor) -> np.ndarray:
        return src.array.copy()

    def copy(self, dst: OrtTensor, src: OrtTensor, count: int, dst_offset: int = 0, src_offset: int = 0) -> None:
        dst.array.reshape(-1)[dst_offset:dst_offset + count] = src.array.reshape(-1)[src_offset:src_offset + count]

    def run(self, net: str, inputs: Sequence[OrtTensor], outputs: Sequence[OrtTensor]) -> None:
        spec = self._specs[net]
        binding = self._sessions[net].io_binding()
        for tensor_spec, tensor in zip(spec.inputs, inputs, strict=True):
            binding.bind_ortvalue_input(tensor_spec.name, tensor.value)
        for tensor_spec, tensor in zip(spec.outputs, outputs, strict=True):
            binding.bind_ortvalue_output(tensor_spec.name, tensor.value)
        self._sessions[net].run_with_iobinding(binding)

    def close(self) -> None:
        self._sessions.clear()
