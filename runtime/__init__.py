"""Backends that run the nets: ONNX Runtime on CPU, sophon-sail on a Sophgo TPU, and the same
sail backend on tpu-mlir's chip simulator (for tests and for trying bmodels without a TPU)."""
from __future__ import annotations

from pathlib import Path

from runtime.backend import Backend, ModelFileError, NetSpec, TensorSpec

BACKENDS = ("onnx", "sail", "sail-simulator")
BMODEL_BACKENDS = ("sail", "sail-simulator")


def find_bmodel(model_path: Path) -> Path:
    """A .bmodel file, or the one a compiled model directory holds."""
    model_path = Path(model_path)
    if model_path.is_file():
        return model_path
    found = sorted(model_path.glob("*.bmodel"))
    if len(found) != 1:
        raise ModelFileError(f"{model_path} holds {len(found)} .bmodel files; give the one to run with --bmodel")
    return found[0]


def open_backend(name: str, model_path: Path, threads: int | None = None, dev_id: int = 0) -> Backend:
    """`model_path`: a model directory (onnx), or a bmodel / compiled model directory (sail)."""
    if name == "onnx":
        from runtime.onnx_backend import OnnxBackend

        return OnnxBackend(Path(model_path), threads=threads)
    if name == "sail":
        from runtime.sail_backend import SailBackend

        return SailBackend(find_bmodel(model_path), dev_id)
    if name == "sail-simulator":
        from runtime import simulated_sail
        from runtime.sail_backend import SailBackend

        return SailBackend(find_bmodel(model_path), dev_id, sail=simulated_sail)
    raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["Backend", "ModelFileError", "NetSpec", "TensorSpec", "open_backend", "find_bmodel", "BACKENDS",
           "BMODEL_BACKENDS"]
