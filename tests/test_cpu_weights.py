"""CPU nets with 8- and 4-bit weights (models/cpu_weights.py): what they hold, how close they
answer to float32, and that the TPU compiler refuses them."""
import numpy as np
import onnx
import pytest

from compile import bmodel
from models import cpu_weights
from models.cpu_weights import cpu_copy, quantized_nets
from language.families import Turn
from models.loader import load_chat_model
from models.store import read_config, write_config
from tests.conftest import TINY_SEQ
from tests.fixtures.tiny_llama import TINY_LLAMA, export_tiny_llama


@pytest.fixture(scope="module")
def quantized(tiny_seeing_dir, tmp_path_factory):
    folders = {}
    for weights in ("int8", "int4"):
        folders[weights] = tmp_path_factory.mktemp(weights) / "model"
        cpu_copy(tiny_seeing_dir[0], folders[weights], weights)
    return folders


def constant_matmuls(path) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """The net's MatMuls with a constant weight, and its MatMulNBits."""
    model = onnx.load(str(path))
    constants = {init.name for init in model.graph.initializer}
    return ([n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants],
            [n for n in model.graph.node if n.op_type == "MatMulNBits"])


@pytest.mark.parametrize("weights, bits", [("int8", 8), ("int4", 4)])
def test_every_weight_matrix_of_the_language_model_is_quantized(tiny_seeing_dir, quantized, weights, bits):
    nets = quantized_nets(quantized[weights])
    assert {p.stem for p in nets} == {p.stem for p in quantized_nets(tiny_seeing_dir[0])} and len(nets) > 2
    # only what ONNX Runtime loads: block_kv_<i> serves prefill and decode; block_<i> / block_cache_<i> are the TPU's
    assert sorted(p.name for p in quantized[weights].glob("*.onnx")) == ["block_kv_0.onnx", "block_kv_1.onnx",
                                                                         "lm_head.onnx", "vision.onnx"]
    for path in nets:
        float_matmuls, nbits = constant_matmuls(path)
        assert float_matmuls == [] and nbits, path.name
        if path.stem.startswith("block_kv_"):  # the llama layers are fused first
            assert "GroupQueryAttention" in {node.op_type for node in onnx.load(str(path)).graph.node}
        for node in nbits:
            attributes = {a.name: a.i for a in node.attribute}
            assert attributes["bits"] == bits and attributes["block_size"] == 32 and attributes["accuracy_level"] == 4
    vision = "vision.onnx"
    assert (quantized[weights] / vision).read_bytes() == (tiny_seeing_dir[0] / vision).read_bytes()
    assert read_config(quantized[weights])["weights"] == weights


def test_the_cpu_copy_fuses_a_llama_layer_and_it_computes_the_same(tmp_path):
    """export/llama_onnxruntime.py: the plain block_kv net's results from fewer nodes, over no
    history and over some, for one row and for several, as the ONNX Runtime backend runs them;
    the fused net writes the new rows' K/V into the cache it is given, heads-first."""
    from export.llama_onnxruntime import fuse_block_kv
    from runtime.onnx_backend import OnnxBackend

    export_tiny_llama(tmp_path / "export", seq_len=TINY_SEQ)
    plain = tmp_path / "export" / "block_kv_1.onnx"
    for folder in ("plain", "fused"):
        (tmp_path / folder).mkdir()
    (tmp_path / "plain" / plain.name).write_bytes(plain.read_bytes())
    fused = fuse_block_kv(plain, TINY_LLAMA).save(tmp_path / "fused" / plain.name)
    ops = [node.op_type for node in onnx.load(str(fused)).graph.node]
    assert ops.count("GroupQueryAttention") == 1 and "SkipSimplifiedLayerNormalization" in ops and "Neg" not in ops
    assert len(ops) < len(onnx.load(str(plain)).graph.node) / 3
    rng = np.random.default_rng(0)
    kv, d, h = TINY_LLAMA.num_kv_heads, TINY_LLAMA.head_dim, TINY_LLAMA.hidden_size
    backends = {name: OnnxBackend(tmp_path / name) for name in ("plain", "fused")}
    for filled, new in ((0, 5), (7, 1), (9, 4)):
        x, history = rng.standard_normal((1, new, h)), rng.standard_normal((2, 1, filled, kv, d))
        mask = np.where(np.arange(filled + new)[None] > filled + np.arange(new)[:, None], -1e4, 0)
        b, values = backends["plain"], (x, np.arange(filled, filled + new)[None], mask[None, None], *history)
        inputs = [b.alloc(np.shape(value), spec.dtype) for value, spec in zip(values, b.nets()["block_kv_1"].inputs)]
        for tensor, value in zip(inputs, values):
            b.write(tensor, value)
        outputs = [b.alloc(shape, np.float32) for shape in ((1, new, h), (1, new, kv, d), (1, new, kv, d))]
        b.run("block_kv_1", inputs, outputs)
        hidden, new_k, new_v = (b.read(t) for t in outputs)

        b = backends["fused"]
        caches = [b.alloc((1, kv, TINY_SEQ, d), np.float32) for _ in range(2)]
        for cache, rows in zip(caches, history):
            cache.array[:, :, :filled] = rows.transpose(0, 2, 1, 3)
        lengths = [b.alloc((1,), np.int32), b.alloc((), np.int32)]
        b.write(lengths[0], np.array([filled + new - 1])), b.write(lengths[1], np.array(filled + new))
        x_in, fused_hidden = b.alloc((1, new, h), np.float32), b.alloc((1, new, h), np.float32)
        b.write(x_in, x)
        b.run("block_kv_1", [x_in, *lengths, *caches], [fused_hidden, *caches])
        np.testing.assert_allclose(b.read(fused_hidden), hidden, rtol=1e-4, atol=1e-4)
        for cache, rows, written in zip(caches, history, (new_k, new_v)):
            np.testing.assert_array_equal(cache.array[:, :, :filled], rows.transpose(0, 2, 1, 3).astype(np.float32))
            np.testing.assert_allclose(cache.array[:, :, filled:filled + new], written.transpose(0, 2, 1, 3),
                                       rtol=1e-4, atol=1e-4)


def teacher_forced(model, ids: list[int], cut: int) -> np.ndarray:
    rows = [model.generator.prefill(ids[:cut])]
    rows += [model.generator.decode(token) for token in ids[cut:-1]]
    return np.stack(rows)


def test_logits_stay_close_to_float32_and_int8_closer_than_int4(tmp_path):
    """On a tiny model with trained-like activations (the peaked test models' large ones would
    overstate the error of quantizing them to int8 on the fly)."""
    export_tiny_llama(tmp_path / "export", seq_len=TINY_SEQ, peaked=False, weight_std=TINY_LLAMA.hidden_size ** -0.5)
    full = load_chat_model(tmp_path / "export")
    ids = full.family.encode([Turn("Hi", "Hello there!")], "Count to five, please.").ids
    reference = teacher_forced(full, ids, len(ids) // 2)
    error, agree = {}, {}
    for weights in ("fp32", "int8", "int4"):
        cpu_copy(tmp_path / "export", tmp_path / weights, weights)
        model = load_chat_model(tmp_path / weights)
        assert model.runs_on == f"CPU (ONNX Runtime), {weights} weights"
        logits = teacher_forced(model, ids, len(ids) // 2)
        error[weights] = np.linalg.norm(logits - reference) / np.linalg.norm(reference)
        agree[weights] = np.mean(logits.argmax(-1) == reference.argmax(-1))
    assert error["fp32"] < 1e-5 and agree["fp32"] == 1, error  # fused layers, the same arithmetic
    assert error["int8"] < 0.04 and error["int4"] < 0.3 and error["int8"] < error["int4"] / 3, error
    assert agree["int8"] >= 0.9, agree  # (measured: 1.8 % error and every argmax the same; int4 18 % and 62 %)


def test_quantized_nets_are_refused_where_they_cannot_go(quantized, tmp_path, capsys):
    assert cpu_weights.main([str(quantized["int8"]), str(tmp_path / "again"), "--weights", "int4"]) == 2
    assert "already a CPU copy (int8 weights)" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert cpu_weights.main([str(quantized["int8"]), str(tmp_path / "full")]) == 2  # never replaces a folder
    assert "not empty" in capsys.readouterr().err and (tmp_path / "full" / "notes.txt").is_file()
    assert bmodel.main([str(quantized["int8"]), str(tmp_path / "bmodel")]) == 2  # before any toolchain is needed
    assert "the TPU compiler cannot read" in capsys.readouterr().err


def test_a_named_model_gets_its_quantized_copy_once(tmp_path, monkeypatch):
    from models import catalog

    monkeypatch.setenv("VGLM_MODELS_DIR", str(tmp_path))

    def tiny_export(name, out_dir, seq_len, progress):  # stands in for the 30 s export of SmolLM2
        export_tiny_llama(out_dir, seq_len=seq_len)
        config = read_config(out_dir)
        write_config(out_dir, {**config, "name": name, "source": catalog._source(name, seq_len)})

    made = []
    monkeypatch.setattr(catalog, "export_catalog_model", tiny_export)
    monkeypatch.setattr(cpu_weights, "cpu_copy", lambda *args: made.append(args) or cpu_copy(*args))
    first = catalog.prepare_model(catalog.TEXT_MODEL, seq_len=64, progress=None, weights="int8")
    again = catalog.prepare_model(catalog.TEXT_MODEL, seq_len=64, progress=None, weights="int8")
    assert first == again == tmp_path / f"{catalog.TEXT_MODEL}-seq64-int8" and len(made) == 1
    assert read_config(first)["weights"] == "int8"
    assert catalog.prepare_model(catalog.TEXT_MODEL, seq_len=64, progress=None) == tmp_path / f"{catalog.TEXT_MODEL}-seq64"
