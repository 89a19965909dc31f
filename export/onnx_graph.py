"""A thin builder over `onnx.helper` for writing the nets op by op.

The nets are written directly as ONNX graphs from numpy weights, so exporting needs
neither PyTorch nor a tracer, and every op is a plain one that both ONNX Runtime and
tpu-mlir accept (opset 17, IR 8) -- but in the CPU copies' layers (export/llama_onnxruntime.py),
which use ONNX Runtime's own fused operators.

Large nets. One .onnx file is one protobuf message, which cannot exceed 2 GiB; a net whose
weights pass EXTERNAL_DATA_ABOVE bytes (the real ChatGLM-6B's embedding and lm_head, 2.1 GB
each in float32; VisualGLM's 4.4 GB vision net) is saved with its weights in one external
file next to it, `<net>.onnx.data`: every weight of EXTERNAL_MIN_BYTES or more, at offsets
aligned to EXTERNAL_ALIGN, referenced by location / offset / length -- ONNX's own external
data, the layout onnx.save_model(save_as_external_data=True, all_tensors_to_one_file=True)
writes, which ONNX Runtime and onnx.load read. Such a net is written without ever building
the whole model proto in memory: each weight array is written straight from its buffer and
the .onnx holds only the graph and the small constants; the file is then checked by path
(onnx.checker resolves the data file beside it). Nets below the threshold are written as
one file exactly as before.

Two ways to get there:
  Graph.save(path)                 decides by size when saving; the weights added so far are
                                   held as arrays (one copy of each), then streamed out.
  with Graph.streamed(name, path)  writes each large weight to the data file as it is added,
                                   so no more than one weight is held at a time; the net is
                                   saved when the block ends (always with external data).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

PROTOBUF_LIMIT = 2 ** 31 - 1  # one protobuf message, so one .onnx file without external data
EXTERNAL_DATA_ABOVE = 2 ** 30  # Graph.save puts a net's weights in <net>.onnx.data past this many bytes:
# well below PROTOBUF_LIMIT, so the graph and its small constants always fit beside them.
# The real GLM blocks (0.8 GB) stay single files; embedding, lm_head and vision do not.
EXTERNAL_MIN_BYTES = 1024  # with external data, weights this large go to the data file
EXTERNAL_ALIGN = 4096
DATA_SUFFIX = ".data"

_ONNX_TYPES = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64,
}

Dim = int | str  # a fixed size, or the name of a dynamic dimension


def data_path(net_path: Path) -> Path:
    """Where the external data of the net at `net_path` goes: `<net>.onnx.data` beside it."""
    net_path = Path(net_path)
    return net_path.with_name(net_path.name + DATA_SUFFIX)


class _DataFile:
    """Appends weights to one external-data file; gives the TensorProtos that point at them."""

    def __init__(self, file: BinaryIO, location: str):
        self._file, self._location = file, location

    def tensor(self, array: np.ndarray, name: str) -> onnx.TensorProto:
        self._file.write(b"\0" * (-self._file.tell() % EXTERNAL_ALIGN))
        offset = self._file.tell()
        self._file.write(array.astype(array.dtype.newbyteorder("<"), copy=False).data)
        tensor = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                                  dims=array.shape, data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", self._location), ("offset", str(offset)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        return tensor


@contextmanager
def _external_data(path: Path) -> Iterator[_DataFile]:
    """Open `path`'s data file for writing; on any error it is removed again.

    A net already at `path` is removed first: it points at the data file being rewritten."""
    path.unlink(missing_ok=True)
    target = data_path(path)
    try:
        with open(target, "wb") as file:
            yield _DataFile(file, target.name)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


class Graph:
    """Collects nodes, inputs, outputs and weights; `save` writes the .onnx file (and, for a
    net past EXTERNAL_DATA_ABOVE bytes of weights, its .onnx.data file)."""

    def __init__(self, name: str):
        self.name = name
        self._nodes: list[onnx.NodeProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        # Weights in order: (name, array) until saved, TensorProto once converted or streamed out.
        self._weights: list[onnx.TensorProto | tuple[str, np.ndarray]] = []
        self._weight_bytes = 0
        self._data: _DataFile | None = None  # set inside Graph.streamed
        self._count = 0

    @classmethod
    @contextmanager
    def streamed(cls, name: str, path: Path) -> Iterator["Graph"]:
        """A Graph that writes every weight of EXTERNAL_MIN_BYTES or more to `path`'s data file
        as it is added; the net is saved to `path` when the block ends. On an error in the
        block or while saving, neither file is left behind."""
        path = Path(path)
        graph = cls(name)
        with _external_data(path) as data:
            graph._data = data
            yield graph
            graph._data = None
        graph._save_external(path)

    @property
    def weight_bytes(self) -> int:
        """The bytes of every weight added so far."""
        return self._weight_bytes

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
        """Add a constant; the array is kept by reference until saved: do not change it after."""
        name = name or self._fresh("const")
        array = np.ascontiguousarray(array)
        self._weight_bytes += array.nbytes
        if self._data is not None and array.nbytes >= EXTERNAL_MIN_BYTES:
            self._weights.append(self._data.tensor(array, name))
        else:
            self._weights.append((name, array))
        return name

    def ints(self, values: list[int]) -> str:
        return self.weight(np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        return self.ops(op_type, *inputs, outputs=1, **attrs)[0]

    def ops(self, op_type: str, *inputs: str, outputs: int, **attrs) -> list[str]:
        """A node with several outputs (an empty input name skips an optional input); `domain`
        among `attrs` names an operator set other than ONNX's, such as ONNX Runtime's com.microsoft."""
        outs = [self._fresh(op_type.lower()) for _ in range(outputs)]
        self._nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs

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

    def _initializers(self) -> list[onnx.TensorProto]:
        """The weights as TensorProtos, converting the held arrays one by one (each array is
        released as its proto is made, unless the caller still holds it)."""
        for i, weight in enumerate(self._weights):
            if isinstance(weight, tuple):
                name, array = weight
                self._weights[i] = numpy_helper.from_array(array, name)
        return self._weights  # type: ignore[return-value]

    def _proto(self) -> onnx.ModelProto:
        graph = helper.make_graph(self._nodes, self.name, self._inputs, self._outputs, self._initializers())
        other_domains = sorted({node.domain for node in self._nodes} - {""})
        return helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in other_domains],
            ir_version=IR_VERSION, producer_name="visualglm-tpu",
        )

    def model(self) -> onnx.ModelProto:
        """The whole net in memory, checked; only for nets without external data."""
        model = self._proto()
        onnx.checker.check_model(model)
        return model

    def save(self, path: Path, external: bool | None = None) -> Path:
        """Write the net to `path`; with its weights in `path`.data when `external`, or, by
        default, when they exceed EXTERNAL_DATA_ABOVE bytes."""
        path = Path(path)
        if self._data is not None:
            raise RuntimeError(f"{self.name} is streamed: it is saved when its `with Graph.streamed(...)` block ends")
        if external is None:
            external = self._weight_bytes > EXTERNAL_DATA_ABOVE
        if external:
            with _external_data(path) as data:
                for i, weight in enumerate(self._weights):
                    if isinstance(weight, tuple) and weight[1].nbytes >= EXTERNAL_MIN_BYTES:
                        self._weights[i] = data.tensor(weight[1], weight[0])  # the array is released here
            return self._save_external(path)
        data_path(path).unlink(missing_ok=True)  # left by an earlier export of a larger net
        tmp = path.with_suffix(".onnx.partial")
        onnx.save_model(self.model(), tmp)
        tmp.replace(path)  # a crash mid-export never leaves a truncated net behind
        return path

    def _save_external(self, path: Path) -> Path:
        """Write the graph (its large weights already in the data file) and check it by path.

        The net is renamed into place last, so a crash never leaves a net that points at a
        half-written data file; on an error the data file is removed too."""
        tmp = path.with_name(path.name + ".partial")
        try:
            onnx.save_model(self._proto(), tmp)
            onnx.checker.check_model(str(tmp))  # by path: external data resolves next to the net
            tmp.replace(path)
        except BaseException:
            data_path(path).unlink(missing_ok=True)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return path
