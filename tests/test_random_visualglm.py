"""models/random_visualglm.py's streamed writer, on a small (2-layer) VisualGLM-6B cut into many
shards: the converter's checks accept the folder, its index says where every tensor is, shards
keep to the budget, and every tensor can be regenerated from (seed, name)."""
import json

import numpy as np
import pytest
import torch

from export.glm import GlmArch
from export.visualglm_vision import VisualGlmVisionConfig
from models import random_visualglm
from models.random_visualglm import (
    INV_FREQ,
    checkpoint_shapes,
    main,
    pack_shards,
    random_tensor,
    rotary_buffer,
    shard_files,
    visualglm_config,
    write_checkpoint,
    write_random_visualglm,
)
from models.visualglm_checkpoint import INDEX_FILE, check_checkpoint
from tests.fixtures.tiny_glm import TINY_GLM
from tests.fixtures.tiny_visualglm_vision import TINY_VISUALGLM_VISION

SMALL_GLM = GlmArch(hidden_size=128, num_layers=2, num_heads=4, inner_size=512, max_positions=256)
SMALL_VISION = VisualGlmVisionConfig(image_size=56, patch_size=14, vit_width=64, vit_layers=2, vit_heads=4,
                                     vit_mlp=176, qformer_width=64, qformer_layers=2, qformer_heads=4,
                                     qformer_mlp=256, num_queries=8, lm_hidden=128)
SEED = 7
BUDGET = 200_000  # bytes per shard: a layer takes several shards, each vocabulary table one of its own


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("random") / "visualglm"
    lines: list[str] = []
    weight_map = write_random_visualglm(folder, SMALL_GLM, SMALL_VISION, SEED, BUDGET, progress=lines.append)
    return folder, weight_map, lines


def shards(folder, weight_map) -> dict[str, dict[str, torch.Tensor]]:
    return {file: torch.load(folder / file, map_location="cpu", mmap=True, weights_only=True)
            for file in dict.fromkeys(weight_map.values())}


def test_the_converter_accepts_it(written):
    folder, weight_map, lines = written
    config, arch, vision, source, notes = check_checkpoint(folder)
    assert (arch, vision, notes) == (SMALL_GLM, SMALL_VISION, [])
    assert config == json.loads(json.dumps(visualglm_config(SMALL_GLM, SMALL_VISION)))
    assert list(source) == list(weight_map) == list(checkpoint_shapes(SMALL_GLM, SMALL_VISION))
    assert not folder.with_name("visualglm.partial").exists()
    assert len(lines) == len(set(weight_map.values()))  # one progress line per shard


def test_the_index_maps_every_tensor_to_its_shard_in_order_within_the_budget(written):
    folder, weight_map, _ = written
    index = json.loads((folder / INDEX_FILE).read_text())
    assert index["weight_map"] == weight_map
    files = shard_files(len(set(weight_map.values())))
    assert len(files) >= 3
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*files, INDEX_FILE, "config.json", "ice_text.model", "tokenizer_config.json"])
    # Filled in state-dict order: embeddings, layers, final LayerNorm, lm_head, image encoder.
    positions = [files.index(file) for file in weight_map.values()]
    assert positions == sorted(positions)
    shapes = checkpoint_shapes(SMALL_GLM, SMALL_VISION)
    total = 0
    for file, tensors in shards(folder, weight_map).items():
        assert set(tensors) == {name for name, where in weight_map.items() if where == file}
        assert all(t.dtype == torch.float16 and tuple(t.shape) == shapes[name] for name, t in tensors.items())
        size = sum(t.nbytes for t in tensors.values())
        assert size <= BUDGET or len(tensors) == 1, file  # only a tensor past the budget is alone past it
        total += size
    assert index["metadata"]["total_size"] == total
    for table in ("transformer.word_embeddings.weight", "lm_head.weight"):  # 33 MB each: a shard of its own
        assert list(weight_map.values()).count(weight_map[table]) == 1


def test_every_tensor_regenerates_from_seed_and_name(written):
    folder, weight_map, _ = written
    for tensors in shards(folder, weight_map).values():
        for name, tensor in tensors.items():
            expected = rotary_buffer(SMALL_GLM) if name.endswith(INV_FREQ) else random_tensor(SEED, name, tensor.shape)
            np.testing.assert_array_equal(tensor.numpy(), expected, err_msg=name)
    name, shape = "transformer.layers.1.mlp.dense_h_to_4h.weight", (512, 128)
    assert not np.array_equal(random_tensor(SEED, name, shape), random_tensor(SEED + 1, name, shape))
    assert np.array_equal(random_tensor(SEED, name, shape, block_values=1000), random_tensor(SEED, name, shape))


@pytest.mark.parametrize("name, mean, std", [
    ("transformer.word_embeddings.weight", 0, 0.02),
    ("transformer.layers.0.attention.query_key_value.weight", 0, 128 ** -0.5),
    ("transformer.layers.1.mlp.dense_4h_to_h.weight", 0, 512 ** -0.5),
    ("transformer.layers.1.input_layernorm.weight", 1, 0.02),
    ("transformer.layers.0.mlp.dense_h_to_4h.bias", 0, 0.02),
    ("lm_head.weight", 0, 128 ** -0.5),
    ("image_encoder.vit.mixins.patch_embedding.proj.weight", 0, (3 * 14 * 14) ** -0.5),
    ("image_encoder.qformer.transformer.layers.0.cross_attention.key_value.weight", 0, 64 ** -0.5),
    ("image_encoder.qformer.transformer.word_embeddings.weight", 0, 0.02),
])
def test_weights_have_trained_like_scales(written, name, mean, std):
    folder, weight_map, _ = written
    values = shards(folder, {name: weight_map[name]})[weight_map[name]][name].numpy().astype(np.float64)
    assert abs(values.mean() - mean) < 0.2 * std
    assert values.std() == pytest.approx(std, rel=0.2)


def test_cli_writes_a_checkpoint_and_refuses_a_full_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(random_visualglm, "CLI_SIZE", (TINY_GLM, TINY_VISUALGLM_VISION))  # not 15.6 GB here
    out = tmp_path / "tiny"
    assert main([str(out), "--shard-gb", "0.01", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # The 16.7 MB vocabulary tables are past the 10 MB budget: each gets a shard of its own.
    assert [line.split()[:2] for line in lines[:-1]] == [
        [f"[{i}/4]", f"pytorch_model-0000{i}-of-00004.bin:"] for i in range(1, 5)]
    assert lines[-1].startswith("done in ") and "peak RSS" in lines[-1]
    _, arch, _, source, _ = check_checkpoint(out)
    assert arch.num_layers == 2 and source["lm_head.weight"].shape == (130528, 64)
    np.testing.assert_array_equal(np.asarray(source["lm_head.weight"], np.float16),
                                  random_tensor(3, "lm_head.weight", (130528, 64)))
    assert main([str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_the_real_size_layout_without_writing_it():
    shapes = checkpoint_shapes(GlmArch(), VisualGlmVisionConfig())
    assert len(shapes) == 1039 and 2 * sum(int(np.prod(s)) for s in shapes.values()) == 15_604_388_608
    layout = pack_shards(shapes, 2 * 10 ** 9)
    assert len(layout) == 9 and [name for shard in layout for name in shard] == list(shapes)
    assert all(2 * sum(int(np.prod(shapes[name])) for name in shard) <= 2 * 10 ** 9 for shard in layout)


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def make(name: str) -> np.ndarray:
        if name == "b":
            raise RuntimeError("out of disk")
        return np.zeros(4, np.float16)

    with pytest.raises(RuntimeError, match="out of disk"):
        write_checkpoint(tmp_path / "ckpt", {}, {"a": (4,), "b": (4,)}, [["a"], ["b"]], make)
    assert list(tmp_path.iterdir()) == []
