"""The TPU path without a TPU: tiny nets compiled to bmodels by compile.bmodel and run on
tpu-mlir's chip simulator through the sail backend (the same code that drives a real chip).

Skips, saying why, where the tpu-mlir toolchain is not installed (compile/setup_tpu_mlir.sh).
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from compile.bmodel import NetPlan, compile_model, compile_net, input_shapes
from language.embedding import read_table
from language.families import Turn
from language.families.base import causal_mask, decode_mask, history_mask
from language.sampling import SamplingSettings
from models.loader import load_chat_model
from runtime import open_backend
from runtime.backend import BFLOAT16
from runtime.sail_backend import SailBackend
from tests.fixtures.tiny_llama import TINY_LLAMA, export_tiny_llama

pytestmark = pytest.mark.simulator

CHIP = "bm1684x"
WIDTHS = [40, 64]  # two prefill widths: short prompts take the narrow nets, longer ones the wide
# (and the prefill after cached rows, block_kv_<i>, is compiled at the narrow one)


@pytest.fixture(scope="session")
def simulated_sail(toolchain):
    from runtime import simulated_sail

    return simulated_sail


@pytest.fixture(scope="session")
def compiled(toolchain, tiny_seeing_dir, tmp_path_factory):
    """quantize mode -> the tiny seeing model compiled whole into one bmodel (cached per session)."""
    done = {}

    def get(quantize: str):
        if quantize not in done:
            out = tmp_path_factory.mktemp(f"bmodel-{quantize.lower()}")
            done[quantize] = compile_model(tiny_seeing_dir[0], out, quantize=quantize, chip=CHIP, prefill_widths=WIDTHS,
                                           progress=lambda *_: None)
        return done[quantize]
    return get


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def _inputs_for(spec, rng: np.random.Generator) -> list[np.ndarray]:
    """Plausible inputs for one net, by the contract's input names."""
    arrays = []
    for t in spec.inputs:
        if t.name == "input_ids":
            arrays.append(rng.integers(0, 49152, t.shape).astype(np.int32))
        elif t.name == "position_ids":
            width = t.shape[-1]
            arrays.append(np.arange(width, dtype=np.int32)[None] if width > 1 else np.array([[37]], np.int32))
        elif t.name == "attention_mask":
            rows, width = t.shape[-2:]
            if rows == 1:
                arrays.append(decode_mask(37, width - 1))
            else:  # a prefill's; block_kv's spans the cache rows too (37 of them filled)
                arrays.append(causal_mask(rows - 9, rows) if width == rows else history_mask(37, width - rows,
                                                                                            rows - 9, rows))
        else:
            arrays.append(rng.standard_normal(t.shape).astype(np.float32))
    return arrays


def _run(backend, net: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    spec = backend.nets()[net]
    inputs = []
    for array, t in zip(arrays, spec.inputs):
        tensor = backend.alloc(array.shape, t.dtype)
        backend.write(tensor, array)
        inputs.append(tensor)
    outputs = [backend.alloc(t.shape if None not in t.shape else (*arrays[0].shape[:2], *t.shape[2:]), t.dtype)
               for t in spec.outputs]
    backend.run(net, inputs, outputs)
    return [backend.read(o) for o in outputs]


def _run_on_cpu(onnx_backend, net: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """`net` of a bmodel on ONNX Runtime, which loads one net per layer where the export has
    block_kv_<i>: a prefill (at any width) is block_kv_<i> after no cached rows, a decode step
    (block_cache_<i>, same inputs) is block_kv_<i> for one row after the cached ones."""
    net = re.sub(r"^(block_\d+)_\d+$", r"\1", net)
    layer = re.fullmatch(r"block(_cache)?_(\d+)", net)
    if net in onnx_backend.nets() or layer is None:
        return _run(onnx_backend, net, arrays)
    kv_net = onnx_backend.nets()[f"block_kv_{layer.group(2)}"]
    if layer.group(1):
        return _run(onnx_backend, kv_net.name, arrays)
    no_rows = np.zeros((1, 0, *kv_net.inputs[3].shape[2:]), np.float32)
    return _run(onnx_backend, kv_net.name, [*arrays, no_rows, no_rows])


def _net_cosines(sail_backend, onnx_backend, nets) -> dict[str, float]:
    """Lowest output cosine per net, same inputs on the simulator and on ONNX Runtime."""
    rng = np.random.default_rng(0)
    worst = {}
    for net in nets:
        arrays = _inputs_for(sail_backend.nets()[net], rng)
        got, want = _run(sail_backend, net, arrays), _run_on_cpu(onnx_backend, net, arrays)
        worst[net] = min(_cosine(g, w) for g, w in zip(got, want))
    return worst


def test_f16_model_answers_with_the_same_tokens_as_onnx_runtime(compiled, simulated_sail, tiny_seeing_dir, caplog):
    bmodel = compiled("F16")
    on_cpu = load_chat_model(tiny_seeing_dir[0])
    on_sim = load_chat_model(bmodel, backend="sail-simulator")
    assert on_sim.runs_on.startswith("SIMULATED TPU") and on_cpu.runs_on == "CPU (ONNX Runtime), fp32 weights"
    greedy = SamplingSettings(max_new_tokens=8, repetition_penalty=1.0)
    picture = Image.new("RGB", (40, 30), (200, 30, 30))
    with_image = [m.reply([], "What is this?", greedy, image=picture) for m in (on_cpu, on_sim)]
    text_only = [m.reply([], "Hello there", greedy) for m in (on_cpu, on_sim)]
    longer = [m.reply([], "Hello there, please tell me something nice about red circles", greedy)
              for m in (on_cpu, on_sim)]
    assert [d.prompt_tokens <= WIDTHS[0] for d in (with_image[0], text_only[0], longer[0])] == [True, True, False]
    assert with_image[1].answer == with_image[0].answer and with_image[1].new_tokens == with_image[0].new_tokens
    assert text_only[1].answer == text_only[0].answer and longer[1].answer == longer[0].answer
    assert with_image[0].answer != text_only[0].answer  # the picture's rows reached the blocks on both
    follow_up = on_sim.reply([], "And now?", greedy, image=picture)
    assert follow_up.vision_s == 0.0  # the cached rows stay on the device


def test_answers_interleaved_on_two_device_slots_match_the_cpu(compiled, simulated_sail, tiny_seeing_dir):
    from language.chat import Done
    from serving.scheduler import Scheduler

    on_cpu = load_chat_model(tiny_seeing_dir[0])
    on_sim = load_chat_model(compiled("F16"), backend="sail-simulator")
    greedy = SamplingSettings(max_new_tokens=6, repetition_penalty=1.0)
    asks = [("What is this?", Image.new("RGB", (40, 30), (200, 30, 30))), ("Hello there", None)]
    expected = [on_cpu.reply([], q, greedy, image=p).answer for q, p in asks]
    scheduler = Scheduler(on_sim, slots=2)  # two KV caches in device memory, stepped in turn
    streams = [scheduler.stream([], q, greedy, p) for q, p in asks]
    done: dict[int, str] = {}
    while len(done) < 2:
        for n, stream in enumerate(streams):
            if n not in done:
                event = next(stream)
                if isinstance(event, Done):
                    done[n] = event.answer
    assert [done[0], done[1]] == expected


def test_follow_ups_and_long_prompts_read_after_cached_rows_answer_as_the_cpu(compiled, simulated_sail,
                                                                            tiny_seeing_dir):
    """On the device a follow-up reads only its new turn through block_kv (the first prompt went
    through block_<i>), and a prompt wider than every block_<i> is read in chunks; the CPU reads
    each prompt whole."""
    on_cpu = load_chat_model(tiny_seeing_dir[0])
    on_cpu.generator.reuse_prefixes = False
    on_sim = load_chat_model(compiled("F16"), backend="sail-simulator")
    greedy = SamplingSettings(max_new_tokens=6, repetition_penalty=1.0)
    first = [m.reply([], "Hello there", greedy) for m in (on_cpu, on_sim)]
    history = [Turn("Hello there", first[0].answer)]
    follow_up = [m.reply(history, "And what about the red circles?", greedy) for m in (on_cpu, on_sim)]
    assert first[1].answer == first[0].answer and follow_up[1].answer == follow_up[0].answer
    assert first[1].prompt_tokens <= follow_up[1].cached_tokens < follow_up[1].prompt_tokens
    long_question = "Please tell me something nice about red circles, blue squares and green triangles " * 3
    long = [m.reply([], long_question, greedy) for m in (on_cpu, on_sim)]
    assert long[0].prompt_tokens > max(WIDTHS) and long[1].answer == long[0].answer


def test_f16_and_bf16_nets_match_onnx_runtime(compiled, simulated_sail, tiny_seeing_dir):
    on_cpu = open_backend("onnx", tiny_seeing_dir[0])
    for quantize, floor in (("F16", 0.9999), ("BF16", 0.999)):
        on_sim = SailBackend(compiled(quantize), sail=simulated_sail)
        cosines = _net_cosines(on_sim, on_cpu, sorted(on_sim.nets()))
        assert min(cosines.values()) >= floor, (quantize, cosines)


# Cosine floors as for every net above; largest error at most this share of the largest value
# (measured on hidden_states: F16 0.5%, BF16 2.5%; block_0_40's: 0.3%, 2.1%).
@pytest.mark.parametrize("quantize, floor, tolerance", [("F16", 0.9999, 2**-6), ("BF16", 0.999, 2**-4)])
def test_prefill_after_cached_rows_matches_onnx_runtime(quantize, floor, tolerance, compiled, simulated_sail,
                                                        tiny_seeing_dir):
    """block_kv_0 on the simulator reads the whole static cache, the mask hiding its unfilled
    rows (garbage here); ONNX Runtime gets the filled rows only."""
    on_sim = SailBackend(compiled(quantize), sail=simulated_sail)
    on_cpu = open_backend("onnx", tiny_seeing_dir[0])
    spec = on_sim.nets()["block_kv_0"]
    width, rows = spec.inputs[0].shape[1], spec.inputs[3].shape[1]
    assert width == WIDTHS[0] and spec.inputs[2].shape == (1, 1, width, rows + width)
    filled, length = 50, 29  # 29 new tokens (padded to the net's 40) after 50 cached rows
    rng = np.random.default_rng(1)
    x = rng.standard_normal(spec.inputs[0].shape).astype(np.float32)
    positions = np.arange(filled, filled + width, dtype=np.int32)[None]
    k, v = (rng.standard_normal(spec.inputs[3].shape).astype(np.float32) for _ in range(2))
    k[:, filled:] *= 4  # unfilled rows: garbage the mask must hide
    v[:, filled:] *= 4
    got = _run(on_sim, "block_kv_0", [x, positions, history_mask(filled, rows, length, width), k, v])
    want = _run(on_cpu, "block_kv_0", [x, positions, history_mask(filled, filled, length, width),
                                       k[:, :filled], v[:, :filled]])
    for name, g, w in zip(("hidden_states", "past_k", "past_v"), got, want):
        assert _cosine(g, w) >= floor, (name, _cosine(g, w))
        np.testing.assert_allclose(g, w, rtol=0, atol=tolerance * np.abs(w).max(), err_msg=name)


def test_bf16_bmodel_keeps_hidden_states_and_cache_in_bf16(compiled, simulated_sail):
    bmodel = compiled("BF16")
    nets = SailBackend(bmodel, sail=simulated_sail).nets()
    assert nets["block_cache_0"].inputs[3].dtype == BFLOAT16  # the KV cache
    assert "embedding" not in nets and read_table(bmodel.parent).dtype == BFLOAT16  # rows uploaded from the host
    assert nets["vision"].outputs[0].dtype == nets["block_0"].inputs[0].dtype == BFLOAT16  # spliced rows
    assert nets["block_0"].inputs[1].dtype == np.int32 and nets["lm_head"].outputs[0].dtype == np.float32


@pytest.fixture(scope="module")
def trained_like_dir(tmp_path_factory):
    """A tiny llama whose layers are scaled like a trained model's (weight std 1/sqrt(hidden)).

    The peaked test model multiplies every error by its oversized activations (4-bit weights
    give it a block cosine of 0.95-0.97); quantization error is measured here instead."""
    out = tmp_path_factory.mktemp("tiny-trained-like")
    export_tiny_llama(out, seq_len=64, weight_std=TINY_LLAMA.hidden_size ** -0.5)
    return out


@pytest.mark.parametrize("quantize,floor", [("W8BF16", 0.999), ("W4BF16", 0.99)])
def test_weight_only_quantized_blocks_stay_close_to_onnx_runtime(quantize, floor, toolchain, simulated_sail,
                                                                 trained_like_dir, tmp_path):
    on_cpu = open_backend("onnx", trained_like_dir)
    for name in ("block_0", "block_cache_0"):
        path = trained_like_dir / f"{name}.onnx"
        plan = NetPlan(name, path, input_shapes(path, 64), quantize, quant_input=True, quant_output=True)
        bmodel = compile_net(toolchain, plan, CHIP, 64, tmp_path).bmodel
        cosines = _net_cosines(SailBackend(bmodel, sail=simulated_sail), on_cpu, [name])
        assert cosines[name] >= floor, (quantize, cosines)


def test_8_bit_lm_head_and_vision_nets_stay_close_to_onnx_runtime(toolchain, simulated_sail, tiny_seeing_dir,
                                                                     tmp_path):
    """W8BF16 is what compile.bmodel gives these two by default next to weight-quantized blocks."""
    on_cpu = open_backend("onnx", tiny_seeing_dir[0])
    for name in ("lm_head", "vision"):
        path = tiny_seeing_dir[0] / f"{name}.onnx"
        plan = NetPlan(name, path, input_shapes(path, 1), "W8BF16", quant_input=name != "vision",
                       quant_output=name != "lm_head")
        bmodel = compile_net(toolchain, plan, CHIP, 64, tmp_path).bmodel
        cosines = _net_cosines(SailBackend(bmodel, sail=simulated_sail), on_cpu, [name])
        assert cosines[name] >= 0.999, cosines


def test_sail_backend_without_sophon_sail_says_how_to_install_it(compiled, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sophon", None)  # as on a machine without the SDK
    with pytest.raises(ModuleNotFoundError, match="dfss"):
        open_backend("sail", compiled("F16"))
