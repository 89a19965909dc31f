"""A thin builder over `onnx.helper` for writing the nets op by op.

The nets are written directly as ONNX graphs from numpy weights, so exporting needs
neither PyTorch nor a tracer, and every op is a plain one that both ONNX Runtime and
tpu-mlir accept (opset 17, IR 8).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

_ONNX_TYPES = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64,
}

Dim = int | str  # a fixed size, or the name of a dynamic dimension


class Graph:
    """Collects nodes, inputs, outputs and weights; `save` writes one .onnx file."""

    def __init__(self, name: str):
        self.name = name
        self._nodes: list[onnx.NodeProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._weights: list[onnx.TensorProto] = []
        self._count = 0

    def _fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def input(self, name: str, dtype: type, shape: list[Dim]) -> str:
        self._inputs.append(helper.make_tensor_value_info(name, _ONNX_TYPES[np.dtype(dtype)], shape))
        return name

    def output(self, value: str, name: str, dtype: type, shape: list[Dim]) -> None:
        self._nodes.append(helper.make_node("Identity", [value], [name]))
        self._outputs.append(helper.make_tensor_value_info(name, _ONNX_TYPES[np.dtype(dtype)], shape))

    def weight(self, array: np.ndarray, name: str | None = None) -> str:
        name = name or self._fresh("const")
        self._weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, values: list[int]) -> str:
        return self.weight(np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        out = self._fresh(op_type.lower())
        self._nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    # Composite ops used by several nets.
    def matmul(self, x: str, weight_in_out: np.ndarray, name: str) -> str:
        """x @ W with W stored as [in, out]."""
        return self.op("MatMul", x, self.weight(weight_in_out, name))

    def reshape(self, x: str, shape: list[int]) -> str:
        return self.op("Reshape", x, self.ints(shape))

    def transpose(self, x: str, perm: list[int]) -> str:
        return self.op("Transpose", x, perm=perm)

    def slice_last(self, x: str, start: int, end: int) -> str:
        return self.op("Slice", x, self.ints([start]), self.ints([end]), self.ints([-1]))

    def rms_norm(self, x: str, weight: np.ndarray, eps: float, name: str) -> str:
        two = self.weight(np.array(2.0, np.float32))
        mean_sq = self.op("ReduceMean", self.op("Pow", x, two), axes=[-1], keepdims=1)
        denom = self.op("Sqrt", self.op("Add", mean_sq, self.weight(np.array(eps, np.float32))))
        return self.op("Mul", self.op("Div", x, denom), self.weight(weight.astype(np.float32), name))

    def linear(self, x: str, weight_out_in: np.ndarray, bias: np.ndarray, name: str) -> str:
        """A torch nn.Linear: x @ W^T + b."""
        return self.op("Add", self.matmul(x, np.asarray(weight_out_in, np.float32).T, name + ".weight"),
                       self.weight(np.asarray(bias, np.float32), name + ".bias"))

    def layer_norm(self, x: str, weight: np.ndarray, bias: np.ndarray, eps: float, name: str) -> str:
        return self.op("LayerNormalization", x, self.weight(np.asarray(weight, np.float32), name + ".weight"),
                       self.weight(np.asarray(bias, np.float32), name + ".bias"), axis=-1, epsilon=eps)

    def gelu(self, x: str) -> str:
        """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as torch's default."""
        erf = self.op("Erf", self.op("Mul", x, self.weight(np.array(2 ** -0.5, np.float32))))
        one = self.weight(np.array(1.0, np.float32))
        return self.op("Mul", self.op("Mul", x, self.weight(np.array(0.5, np.float32))), self.op("Add", erf, one))

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self._nodes, self.name, self._inputs, self._outputs, self._weights)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
            producer_name="visualglm-tpu",
        )
        onnx.checker.check_model(model)
        return model

    def save(self, path: Path) -> Path:
        tmp = path.with_suffix(".onnx.partial")
        onnx.save_model(self.model(), tmp)
        tmp.replace(path)  # a crash mid-export never leaves a truncated net behind
        return path
