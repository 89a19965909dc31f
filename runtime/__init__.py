"""Backends that run the nets: ONNX Runtime on CPU today; the TPU backend plugs in here."""
from __future__ import annotations

from pathlib import Path

from runtime.backend import Backend, ModelFileError, NetSpec, TensorSpec

BACKENDS = ("onnx",)


def open_backend(name: str, model_dir: Path, threads: int | None = None) -> Backend:
    if name == "onnx":
        from runtime.onnx_backend import OnnxBackend

        return OnnxBackend(model_dir, threads=threads)
    raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["Backend", "ModelFileError", "NetSpec", "TensorSpec", "open_backend", "BACKENDS"]
