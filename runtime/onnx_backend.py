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

import ctypes
import ctypes.util
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
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
        self.value = ort.OrtValue.ortvalue_from_numpy(array)  # aliases the array's memory
        self.shape = array.shape
        self.dtype = array.dtype


HISTORY_INPUTS = {"history_k": 1, "history_v": 1, "attention_mask": 3}  # cache-long dimensions
READS_HISTORY = ("block_cache_", "block_kv_")  # the nets that take them


def _spec(arg, declared: tuple[int, ...] | None = None) -> TensorSpec:
    shape = declared or tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(_NP_TYPES[arg.type]))


def _filled_history(path: Path) -> tuple[bytes, dict[str, tuple[int, ...]]] | None:
    """A block_cache or block_kv net with its cache-long input dimensions (history rows, mask
    width) left to run time, so that it attends over the filled rows only; and those inputs'
    shapes as the file declares them. None when the net has no such inputs. The exported graphs reshape
    with -1 and 0 only, so nothing else in them depends on SEQ."""
    model = onnx.load(str(path))
    inputs = {tensor.name: tensor.type.tensor_type.shape for tensor in model.graph.input}
    if not set(HISTORY_INPUTS) <= set(inputs):
        return None
    declared = {name: tuple(d.dim_value if d.HasField("dim_value") else None for d in inputs[name].dim)
                for name in HISTORY_INPUTS}
    for name, axis in HISTORY_INPUTS.items():
        inputs[name].dim[axis].dim_param = "filled_and_new" if name == "attention_mask" else "filled"
    return model.SerializeToString(), declared


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_malloc_trim = _glibc_malloc_trim()


def _release_free_heap() -> None:
    """Give the heap's free pages back to the system. Loading a net leaves its protobuf copies
    freed but resident (glibc keeps them per thread), which would count in the peak."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _load_session(path: Path, options: ort.SessionOptions) -> tuple[ort.InferenceSession, NetSpec]:
    """The net's session, and its spec as the file declares it (static cache shapes included)."""
    try:
        relaxed = _filled_history(path) if path.stem.startswith(READS_HISTORY) else None
        if relaxed is None:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        else:  # from a file: a session made from bytes kept 150 MB (int8) to 390 MB (fp32) more resident
            with tempfile.NamedTemporaryFile(suffix=".onnx") as file:
                file.write(relaxed[0])
                file.flush()
                session = ort.InferenceSession(file.name, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a truncated or foreign file
        raise ModelFileError(f"cannot load {path.name}: {exc}") from exc
    finally:
        _release_free_heap()
    declared = relaxed[1] if relaxed else {}
    return session, NetSpec(path.stem, tuple(_spec(a, declared.get(a.name)) for a in session.get_inputs()),
                            tuple(_spec(a) for a in session.get_outputs()))


def session_files(model_dir: Path) -> list[Path]:
    """The nets a backend loads: every .onnx file but block_<i> and block_cache_<i> where
    block_kv_<i> is there. Over no history rows block_kv_<i> computes what block_<i> does, for one
    row after the cached ones what block_cache_<i> does, and every session holds its own
    prepacked copy of the layer's weights (measured on the default model, int8: 524 MB resident
    with two sessions per layer, 347 with one)."""
    def replaced(path: Path) -> bool:
        layer = re.fullmatch(r"block(?:_cache)?_(\d+)", path.stem)
        return layer is not None and (model_dir / f"block_kv_{layer.group(1)}.onnx").is_file()

    return [path for path in sorted(Path(model_dir).glob("*.onnx")) if not replaced(path)]


class OnnxBackend:
    name = "onnx"
    device = "CPU (ONNX Runtime)"
    in_host_memory = True
    reads_filled_history = True

    def __init__(self, model_dir: Path, threads: int | None = None):
        self.model_dir = Path(model_dir)
        files = session_files(self.model_dir)
        if not files:
            raise ModelFileError(f"no .onnx nets in {self.model_dir}")
        threads = threads or os.cpu_count() or 1
        _use_global_thread_pool(threads)
        options = ort.SessionOptions()
        options.use_per_session_threads = False
        # Without an arena per session, the 31 sessions' intermediate tensors do not each keep
        # their largest size reserved (with the heap trimmed on loading: README, Benchmark).
        options.enable_cpu_mem_arena = False
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Session creation releases the GIL: loading the nets side by side halves start-up.
        with ThreadPoolExecutor(max_workers=threads) as pool:
            loaded = list(pool.map(lambda path: _load_session(path, options), files))
        self._sessions = {path.stem: session for path, (session, _) in zip(files, loaded)}
        self._specs = {path.stem: spec for path, (_, spec) in zip(files, loaded)}

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

    def view(self, tensor: OrtTensor, shape: Sequence[int], offset: int = 0) -> OrtTensor:
        return OrtTensor(tensor.array.reshape(-1)[offset:offset + int(np.prod(shape))].reshape(tuple(shape)))

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
