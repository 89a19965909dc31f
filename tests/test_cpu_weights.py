"""CPU nets with 8- and 4-bit weights (models/cpu_weights.py): what they hold, how close they
answer to float32, and that the TPU compiler refuses them."""
import numpy as np
import onnx
import pytest

from compile import bmodel
from models import cpu_weights
from models.cpu_weights import quantize_model_dir, quantized_nets
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
        quantize_model_dir(tiny_seeing_dir[0], folders[weights], weights)
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
        for node in nbits:
            attributes = {a.name: a.i for a in node.attribute}
            assert attributes["bits"] == bits and attributes["block_size"] == 32 and attributes["accuracy_level"] == 4
    vision = "vision.onnx"
    assert (quantized[weights] / vision).read_bytes() == (tiny_seeing_dir[0] / vision).read_bytes()
    assert read_config(quantized[weights])["weights"] == weights


def teacher_forced(model, ids: list[int], cut: int) -> np.ndarray:
    rows = [model.generator.prefill(ids[:cut])]
    rows += [model.generator.decode(token) for token in ids[cut:-1]]
    return np.stack(rows)


def test_logits_stay_close_to_float32_and_int8_closer_than_int4(tmp_path):
    """On a tiny model with trained-like activations (the peaked test models' large ones would
    overstate the error of quantizing them to int8 on the fly)."""
    export_tiny_llama(tmp_path / "fp32", seq_len=TINY_SEQ, peaked=False, weight_std=TINY_LLAMA.hidden_size ** -0.5)
    full = load_chat_model(tmp_path / "fp32")
    ids = full.family.encode([Turn("Hi", "Hello there!")], "Count to five, please.").ids
    reference = teacher_forced(full, ids, len(ids) // 2)
    error, agree = {}, {}
    for weights in ("int8", "int4"):
        quantize_model_dir(tmp_path / "fp32", tmp_path / weights, weights)
        model = load_chat_model(tmp_path / weights)
        assert model.runs_on == f"CPU (ONNX Runtime), {weights} weights"
        logits = teacher_forced(model, ids, len(ids) // 2)
        error[weights] = np.linalg.norm(logits - reference) / np.linalg.norm(reference)
        agree[weights] = np.mean(logits.argmax(-1) == reference.argmax(-1))
    assert error["int8"] < 0.04 and error["int4"] < 0.3 and error["int8"] < error["int4"] / 3, error
    assert agree["int8"] >= 0.9, agree  # (measured: 1.8 % error and every argmax the same; int4 18 % and 62 %)


def test_quantized_nets_are_refused_where_they_cannot_go(quantized, tmp_path, capsys):
    assert cpu_weights.main([str(quantized["int8"]), str(tmp_path / "again"), "--weights", "int4"]) == 2
    assert "already quantized (int8)" in capsys.readouterr().err
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
    monkeypatch.setattr(cpu_weights, "quantize_model_dir", lambda *args: made.append(args) or quantize_model_dir(*args))
    first = catalog.prepare_model(catalog.TEXT_MODEL, seq_len=64, progress=None, weights="int8")
    again = catalog.prepare_model(catalog.TEXT_MODEL, seq_len=64, progress=None, weights="int8")
    assert first == again == tmp_path / f"{catalog.TEXT_MODEL}-seq64-int8" and len(made) == 1
    assert read_config(first)["weights"] == "int8"
    assert catalog.prepare_model(catalog.TEXT_MODEL, seq_len=64, progress=None) == tmp_path / f"{catalog.TEXT_MODEL}-seq64"
