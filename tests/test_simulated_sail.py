"""runtime.simulated_sail: bmodels compiled by tpu-mlir, run on its chip simulator through ctypes.

A tiny ONNX net (MatMul + Add, and Relu + an int32 input cast and added) is compiled once per
module for a few I/O types and chips; the simulator's answers are checked against onnxruntime.
Skipped when the tpu-mlir toolchain (compile/setup_tpu_mlir.sh) is not installed.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compile.toolchain import run_tool
from runtime import simulated_sail as sail
from runtime.onnx_backend import OnnxBackend
from runtime.sail_backend import SailBackend
from runtime.tpu_mlir import ToolchainMissing, find_toolchain, library_dir

pytestmark = pytest.mark.simulator

REPO = Path(__file__).resolve().parents[1]
DEPLOY = {  # variant: model_deploy options
    "f32io": ["--quantize", "F16", "--chip", "bm1684x"],
    "f16io": ["--quantize", "F16", "--chip", "bm1684x", "--quant_input", "--quant_output"],
    "bf16io": ["--quantize", "BF16", "--chip", "bm1684x", "--quant_input", "--quant_output"],
    "bm1688": ["--quantize", "F16", "--chip", "bm1688"],
}
IO_TYPES = {  # variant: (x, ids, both outputs) as the compiled net reports them
    "f32io": (sail.Dtype.BM_FLOAT32, sail.Dtype.BM_INT32, sail.Dtype.BM_FLOAT32),
    "f16io": (sail.Dtype.BM_FLOAT16, sail.Dtype.BM_INT32, sail.Dtype.BM_FLOAT16),
    "bf16io": (sail.Dtype.BM_BFLOAT16, sail.Dtype.BM_INT32, sail.Dtype.BM_BFLOAT16),
}


def tiny_onnx(path: Path) -> None:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["y"]),
             helper.make_node("Relu", ["y"], ["r"]), helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["r", "idsf"], ["w"])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT32, [1, 4, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 4, 16])],
        [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "W"),
         numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def bmodels(tmp_path_factory) -> dict[str, Path]:
    """The tiny net's ONNX file ("onnx") and its bmodels, one per DEPLOY variant."""
    try:
        home = find_toolchain()
    except ToolchainMissing as exc:
        pytest.skip(f"tpu-mlir toolchain not installed: {exc}")
    work = tmp_path_factory.mktemp("simulated-sail")
    (work / "onnx").mkdir()
    tiny_onnx(work / "onnx" / "tiny.onnx")
    run_tool(home, "model_transform.py", ["--model_name", "tiny", "--model_def", "onnx/tiny.onnx",
                                          "--input_shapes", "[[1,4,8],[1,4,1]]", "--mlir", "tiny.mlir"], work)
    found = {"onnx": work / "onnx" / "tiny.onnx"}
    for variant, options in DEPLOY.items():  # one after the other: they share intermediate file names
        run_tool(home, "model_deploy.py", ["--mlir", "tiny.mlir", *options, "--model", f"{variant}.bmodel"], work)
        found[variant] = work / f"{variant}.bmodel"
    return found


@pytest.fixture(scope="module")
def engine(bmodels) -> sail.Engine:
    """The fp32-I/O bmodel, loaded first so that this process simulates a BM1684X."""
    return sail.Engine(str(bmodels["f32io"]), 0, sail.IOMode.DEVIO)


def reference(onnx_path: Path, seed: int = 1) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 4, 8)).astype(np.float32)
    ids = rng.integers(0, 5, (1, 4, 1)).astype(np.int32)
    cpu = OnnxBackend(onnx_path.parent)  # the project's ONNX Runtime backend (it owns the process's thread pool)
    inputs = []
    for array in (x, ids):
        inputs.append(cpu.alloc(array.shape, array.dtype))
        cpu.write(inputs[-1], array)
    outputs = [cpu.alloc((1, 4, 16), np.float32) for _ in range(2)]
    cpu.run("tiny", inputs, outputs)
    return x, ids, [cpu.read(o) for o in outputs]


def device_tensor(shape: list[int], dtype: sail.Dtype) -> sail.Tensor:
    return sail.Tensor(sail.Handle(0), shape, dtype, False, True)


def test_chip_is_read_from_the_bmodel(bmodels):
    assert sail.bmodel_chip(bmodels["f32io"]) == "BM1684X"
    assert sail.bmodel_chip(bmodels["bm1688"]) == "BM1688"
    with pytest.raises(sail.SimulatorError, match="not a bmodel"):
        sail.bmodel_chip(bmodels["onnx"])


@pytest.mark.parametrize("variant", list(IO_TYPES))
def test_engine_reports_names_shapes_and_types(bmodels, engine, variant):
    e = sail.Engine(str(bmodels[variant]), 0, sail.IOMode.DEVIO)
    assert e.get_graph_names() == ["tiny"]
    assert e.get_input_names("tiny") == ["x", "ids"]
    outputs = e.get_output_names("tiny")
    assert [n[0] for n in outputs] == ["y", "w"]  # the compiler renames outputs but keeps their order
    assert e.get_input_shape("tiny", "x") == [1, 4, 8] and e.get_input_shape("tiny", "ids") == [1, 4, 1]
    assert all(e.get_output_shape("tiny", n) == [1, 4, 16] for n in outputs)
    x_type, ids_type, out_type = IO_TYPES[variant]
    assert (e.get_input_dtype("tiny", "x"), e.get_input_dtype("tiny", "ids")) == (x_type, ids_type)
    assert all(e.get_output_dtype("tiny", n) is out_type for n in outputs)


@pytest.mark.parametrize("variant, tolerance", [("f32io", 2**-8), ("f16io", 2**-8), ("bf16io", 2**-6)])
def test_sail_backend_matches_onnxruntime(bmodels, engine, variant, tolerance):
    """The project's sail backend, unchanged, on the simulator: F16 / BF16 numerics of the same net."""
    x, ids, expected = reference(bmodels["onnx"])
    backend = SailBackend(bmodels[variant], 0, sail=sail)
    spec = backend.nets()["tiny"]
    inputs = [backend.alloc(t.shape, t.dtype) for t in spec.inputs]
    outputs = [backend.alloc(t.shape, t.dtype) for t in spec.outputs]
    backend.write(inputs[0], x)
    backend.write(inputs[1], ids)
    backend.run("tiny", inputs, outputs)
    for out, ref in zip(outputs, expected):
        got = backend.read(out).astype(np.float64)
        cosine = got.ravel() @ ref.ravel() / np.linalg.norm(got) / np.linalg.norm(ref)
        assert cosine > (0.9999 if variant != "bf16io" else 0.999)
        np.testing.assert_allclose(got, ref, rtol=0, atol=tolerance * np.abs(ref).max())
    backend.close()


@pytest.mark.parametrize("dtype", [sail.Dtype.BM_FLOAT32, sail.Dtype.BM_FLOAT16, sail.Dtype.BM_INT32,
                                   sail.Dtype.BM_INT8])
def test_sync_d2d_copies_elements_at_element_offsets(engine, dtype):
    src = device_tensor([2, 3, 4], dtype)
    dst = device_tensor([10], dtype)
    host = sail.HOST_DTYPE[dtype]
    src.update_data(np.arange(24).astype(host).reshape(2, 3, 4))
    dst.memory_set(-1)
    dst.sync_d2d(src, 5, 2, 6)
    expected = np.full(10, -1, dtype=host)
    expected[2:8] = np.arange(5, 11)
    np.testing.assert_array_equal(dst.asnumpy(), expected)
    with pytest.raises(ValueError, match="outside the source"):
        dst.sync_d2d(src, 20, 0, 5)
    with pytest.raises(ValueError, match="outside the destination"):
        dst.sync_d2d(src, 0, 6, 5)
    with pytest.raises(TypeError, match="sync_d2d from"):
        dst.sync_d2d(device_tensor([10], sail.Dtype.BM_UINT8), 0, 0, 1)


def test_update_data_checks_size_and_type(engine):
    t = device_tensor([2, 3], sail.Dtype.BM_FLOAT32)
    with pytest.raises(ValueError, match="24 bytes"):
        t.update_data(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="float64"):
        t.update_data(np.zeros((2, 3)))
    half = device_tensor([2, 3], sail.Dtype.BM_FLOAT16)
    values = np.linspace(-2, 2, 6, dtype=np.float16).reshape(2, 3)
    half.update_data(values.view(np.uint16))  # as sail takes fp16
    got = half.asnumpy()
    assert got.dtype == np.float16 and got.shape == (2, 3)
    np.testing.assert_array_equal(got, values)


def test_memory_set_converts_to_the_tensor_type(engine):
    cases = [(sail.Dtype.BM_FLOAT16, 1.5, np.full(3, 1.5, np.float16)),
             (sail.Dtype.BM_BFLOAT16, 1.5, np.full(3, 0x3FC0, np.uint16)),  # bf16 comes back as its bits
             (sail.Dtype.BM_INT32, 7, np.full(3, 7, np.int32)), (sail.Dtype.BM_FLOAT32, 0, np.zeros(3, np.float32))]
    for dtype, value, expected in cases:
        t = device_tensor([3], dtype)
        t.memory_set(value)
        got = t.asnumpy()
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_reshape_keeps_the_data(engine):
    t = device_tensor([2, 6], sail.Dtype.BM_INT32)
    t.update_data(np.arange(12, dtype=np.int32).reshape(2, 6))
    t.reshape([3, 4])
    assert t.shape() == [3, 4]
    np.testing.assert_array_equal(t.asnumpy(), np.arange(12).reshape(3, 4))
    with pytest.raises(ValueError, match="element count"):
        t.reshape([5])


def test_process_checks_names_types_and_sizes(engine):
    inputs = {"x": device_tensor([1, 4, 8], sail.Dtype.BM_FLOAT32),
              "ids": device_tensor([1, 4, 1], sail.Dtype.BM_INT32)}
    outputs = {n: device_tensor([1, 4, 16], sail.Dtype.BM_FLOAT32) for n in engine.get_output_names("tiny")}
    with pytest.raises(KeyError, match="no graph 'nope'"):
        engine.process("nope", inputs, outputs)
    with pytest.raises(KeyError, match=r"missing \['ids'\]"):
        engine.process("tiny", {"x": inputs["x"]}, outputs)
    with pytest.raises(KeyError, match=r"unknown \['extra'\]"):
        engine.process("tiny", {**inputs, "extra": inputs["x"]}, outputs)
    with pytest.raises(ValueError, match="input 'ids' is BM_INT32"):
        engine.process("tiny", {**inputs, "ids": device_tensor([1, 4, 1], sail.Dtype.BM_FLOAT32)}, outputs)
    first = engine.get_output_names("tiny")[0]
    with pytest.raises(ValueError, match=f"output '{first}'"):
        engine.process("tiny", inputs, {**outputs, first: device_tensor([1, 4, 8], sail.Dtype.BM_FLOAT32)})
    engine.process("tiny", inputs, outputs)


def test_a_second_chip_in_one_process_is_refused(bmodels, engine):
    with pytest.raises(sail.SimulatorError, match="already simulates a BM1684X; a bmodel for BM1688"):
        sail.Engine(str(bmodels["bm1688"]), 0, sail.IOMode.DEVIO)


def test_struct_layouts_agree_with_the_library(engine):
    """BMLib and BMRuntime read back what the ctypes structures hold."""
    lib = library_dir(find_toolchain())
    bmlib, bmrt = ctypes.CDLL(str(lib / "libbmlib.so.0")), ctypes.CDLL(str(lib / "libbmrt.so"))  # already loaded
    tensor = device_tensor([3, 5, 7], sail.Dtype.BM_FLOAT16)
    bmlib.bm_mem_get_device_size.restype, bmlib.bm_mem_get_device_size.argtypes = ctypes.c_uint, [sail.DeviceMem]
    bmlib.bm_mem_get_device_addr.restype, bmlib.bm_mem_get_device_addr.argtypes = ctypes.c_ulonglong, [sail.DeviceMem]
    assert bmlib.bm_mem_get_device_size(tensor._mem) == 3 * 5 * 7 * 2
    assert bmlib.bm_mem_get_device_addr(tensor._mem) == tensor._mem.device_addr != 0

    bm_tensor = sail.BmTensor(dtype=sail.Dtype.BM_FLOAT16, device_mem=tensor._mem)
    bm_tensor.shape.num_dims, bm_tensor.shape.dims[:3] = 3, [3, 5, 7]
    for name in ("bmrt_tensor_bytesize", "bmrt_tensor_device_size"):
        fn = getattr(bmrt, name)
        fn.restype, fn.argtypes = ctypes.c_size_t, [ctypes.POINTER(sail.BmTensor)]
        assert fn(ctypes.byref(bm_tensor)) == 3 * 5 * 7 * 2, name

    info = engine._device.call("bmrt_get_network_info", engine._bmrt, b"tiny").contents
    assert (info.name, info.is_dynamic, info.input_num, info.output_num, info.stage_num) == (b"tiny", False, 2, 2, 1)
    for count, names, max_bytes, shape, dtype in (
            (2, engine.get_input_names("tiny"), info.max_input_bytes, engine.get_input_shape, engine.get_input_dtype),
            (2, engine.get_output_names("tiny"), info.max_output_bytes, engine.get_output_shape,
             engine.get_output_dtype)):
        for i in range(count):
            size = np.prod(shape("tiny", names[i])) * sail.HOST_DTYPE[dtype("tiny", names[i])].itemsize
            assert max_bytes[i] == size


def test_warns_once_and_exits_cleanly_with_live_buffers(bmodels):
    """Buffers and runtimes still alive at exit are freed before the device: no crash, no assert."""
    script = f"""
import numpy as np
from runtime import simulated_sail as sail
handle = sail.Handle(0)
engine = sail.Engine({str(bmodels["f16io"])!r}, 0, sail.IOMode.DEVIO)
engine2 = sail.Engine({str(bmodels["f32io"])!r}, 0, sail.IOMode.DEVIO)
kept = [sail.Tensor(handle, [64, 64], sail.Dtype.BM_FLOAT16, False, True) for _ in range(4)]
kept[0].memory_set(0)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "assert" not in output.lower()
    assert output.count("SIMULATED TPU: tpu-mlir chip simulator (cmodel) for BM1684X, not hardware") == 1


def test_the_simulators_own_prints_stay_out_of_standard_output(bmodels):
    """Its C libraries printf at start-up and at every launch; a terminal chat must show only the chat."""
    script = f"""
import numpy as np
from runtime import simulated_sail as sail
engine = sail.Engine({str(bmodels["f32io"])!r}, 0, sail.IOMode.DEVIO)
handle = sail.Handle(0)
inputs = {{"x": sail.Tensor(handle, [1, 4, 8], sail.Dtype.BM_FLOAT32, False, True),
          "ids": sail.Tensor(handle, [1, 4, 1], sail.Dtype.BM_INT32, False, True)}}
outputs = {{n: sail.Tensor(handle, [1, 4, 16], sail.Dtype.BM_FLOAT32, False, True)
           for n in engine.get_output_names("tiny")}}
for _ in range(3):
    engine.process("tiny", inputs, outputs)
    print("python line", flush=True)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "python line\n" * 3
    native_log = Path(re.search(r"the simulator's own output: (\S+)\)", result.stderr)[1])
    assert "cmodel init" in native_log.read_text()  # what used to reach the terminal
    native_log.unlink()


def test_missing_toolchain_names_the_setup_script(monkeypatch, tmp_path):
    monkeypatch.setenv("VGLM_TPU_MLIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="compile/setup_tpu_mlir.sh"):
        sail.Handle(0)
