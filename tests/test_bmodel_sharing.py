"""A compiled model holds each layer's weights once, for every family.

block_<i> (prefill, at each width), block_cache_<i> (decode) and, for llama, block_kv_<i>
(a prefill after cached rows) are compiled from the same weights in the same op order, so
their coefficient blobs come out byte-identical and `model_tool --combine` keeps one copy for
all of them. A decode net with constants of its own (index or selection tables) would
get a blob of its own: a second copy of the whole layer on the device.

Skips, saying why, where the tpu-mlir toolchain is not installed (compile/setup_tpu_mlir.sh).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import pytest

from compile.bmodel import compile_model
from compile.bmodel_info import BmodelInfo, read_bmodel_info
from tests.fixtures.tiny_llama import TINY_LLAMA, export_tiny_llama
from tests.fixtures.tiny_glm import TINY_GLM, export_tiny_glm

pytestmark = pytest.mark.simulator

LAYERS = 2
CACHE_ROWS = 64  # the KV cache's rows: the exports' context
# Wide enough that a layer's blob (~0.6 MB at W8) dwarfs alignment padding; a small vocabulary
# keeps embedding and lm_head from hiding a second copy of the layers.
LLAMA = dataclasses.replace(TINY_LLAMA, hidden_size=256, intermediate_size=512, vocab_size=256, num_layers=LAYERS)
GLM = dataclasses.replace(TINY_GLM, hidden_size=256, inner_size=512, vocab_size=256, num_layers=LAYERS)
EXPORTS: dict[str, Callable[[Path], object]] = {
    "llama": lambda out: export_tiny_llama(out, CACHE_ROWS, arch=LLAMA, weight_std=LLAMA.hidden_size ** -0.5),
    "glm": lambda out: export_tiny_glm(out, CACHE_ROWS, arch=GLM),
}


@pytest.fixture(scope="module", params=sorted(EXPORTS))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def compiled(family, toolchain, tmp_path_factory) -> BmodelInfo:
    """What model_tool says about one family's tiny model compiled at W8BF16."""
    root = tmp_path_factory.mktemp(f"sharing-{family}")
    EXPORTS[family](root / "onnx")
    bmodel = compile_model(root / "onnx", root / "bmodel", quantize="W8BF16", prefill_widths=[32, 64],
                           embedding="device", progress=lambda *_: None)
    return read_bmodel_info(bmodel, toolchain)


def _coeff_size(info: BmodelInfo, net: str) -> int:
    return info.nets[net].stages[0].coeff.size


def test_each_decode_net_shares_its_prefill_nets_coefficients(compiled):
    for i in range(LAYERS):
        blob = compiled.nets[f"block_{i}"].stages[0].coeff
        assert compiled.nets[f"block_cache_{i}"].stages[0].coeff == blob, i
        assert compiled.nets[f"block_{i}_32"].stages[0].coeff == blob, i  # the narrower prefill too
        if f"block_kv_{i}" in compiled.nets:
            assert compiled.nets[f"block_kv_{i}"].stages[0].coeff == blob, i


def test_llama_has_a_prefill_after_cached_rows_at_the_narrowest_width(compiled, family):
    kv = sorted(name for name in compiled.nets if name.startswith("block_kv_"))
    if family == "glm":  # a prefix-LM: its cached rows change as the prompt grows, so GLM exports none
        assert kv == []
        return
    assert kv == [f"block_kv_{i}" for i in range(LAYERS)]
    shapes = [t.shape for t in compiled.nets["block_kv_0"].stages[0].inputs]
    rows = (1, CACHE_ROWS, LLAMA.num_kv_heads, LLAMA.head_dim)
    assert shapes == [(1, 32, LLAMA.hidden_size), (1, 32), (1, 1, 32, CACHE_ROWS + 32), rows, rows]


def test_device_weight_holds_each_layer_once(compiled):
    assert compiled.device.weight == sum(blob.size for blob in compiled.blobs())
    once = sum(_coeff_size(compiled, f"block_{i}") for i in range(LAYERS))
    once += _coeff_size(compiled, "embedding") + _coeff_size(compiled, "lm_head")
    assert compiled.device.weight == pytest.approx(once, rel=0.01)
