"""models/visualglm_checkpoint.py on a tiny random VisualGLM-6B written as a Hugging Face
checkpoint folder (models/random_visualglm.py): the model directory it writes against a direct
export of the same tensors and against the PyTorch references of tests/test_glm_parity.py
and tests/test_visualglm_vision.py; its errors; and that it streams."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import export.onnx_graph as onnx_graph
from export.glm import export_glm
from export.visualglm_vision import export_visualglm_vision
from language.families.glm import GlmFamily
from language.embedding import read_table
from language.generate import Generator, ImageRows
from language.sampling import Sampler, SamplingSettings
from tests.fixtures.tiny_visualglm import language_tensors, write_tiny_visualglm
from models.store import read_config
from tests.fixtures.tiny_glm import TINY_GLM, stand_in_tokenizer
from tests.fixtures.tiny_visualglm_vision import TINY_VISUALGLM_VISION as TINY_VISION
from models.visualglm_checkpoint import INDEX_FILE, CheckpointError, CheckpointTensors, convert, main
from runtime import open_backend
from tests.test_glm_parity import reference_greedy
from tests.test_visualglm_vision import reference as vision_reference
from vision.encoder import VisionEncoder
from vision.preprocess import to_pixels

SEQ = 64
NEW_TOKENS = 8
GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=NEW_TOKENS)
# Past 1 MiB of weights a net gets external data here, so the tiny 33 MB embedding / lm_head
# tables take the path the real 2.1 GB ones do, while the blocks stay single files.
EXTERNAL_ABOVE = 2 ** 20
SHARDS = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
TABLE_BYTES = TINY_GLM.vocab_size * TINY_GLM.hidden_size * 4  # embedding / lm_head in float32
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def external_above():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_graph, "EXTERNAL_DATA_ABOVE", EXTERNAL_ABOVE)
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("visualglm-checkpoint")
    return folder, write_tiny_visualglm(folder)


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory, external_above):
    root = tmp_path_factory.mktemp("converted")
    lines = []
    result = convert(checkpoint[0], root / "model", SEQ, tokenizer_dir=root / "visualglm-6b", progress=lines.append)
    return result, lines


@pytest.fixture(scope="module")
def direct(checkpoint, tmp_path_factory, external_above):
    """The same tensors exported straight from memory."""
    out = tmp_path_factory.mktemp("direct")
    tensors = checkpoint[1]
    export_glm(TINY_GLM, language_tensors(tensors), out, SEQ)
    export_visualglm_vision(tensors, TINY_VISION, out)
    return out


def net_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if ".onnx" in p.name or p.suffix == ".npy"}


# ---------------------------------------------------------------- the model directory

def test_converted_nets_are_the_direct_export(converted, direct):
    ours, theirs = net_files(converted[0].out_dir), net_files(direct)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert ours[name] == theirs[name], name
    # The real layout: the tables and the vision net with external data, the blocks single files.
    with_data = sorted(name.removesuffix(".onnx.data") for name in ours if name.endswith(".data"))
    assert with_data == ["lm_head", "vision"]
    assert np.load(converted[0].out_dir / "embedding.npy").nbytes == TABLE_BYTES  # the host table, float32
    assert converted[0].nets == ["embedding.npy", "block_0", "block_cache_0", "block_1", "block_cache_1", "lm_head",
                                 "vision"]


def test_config_json_and_tokenizer_files(converted, checkpoint):
    result, folder = converted[0], checkpoint[0]
    config = read_config(result.out_dir)
    assert (config["name"], config["family"], config["tokenizer"]) == ("visualglm-6b", "glm", "visualglm-6b")
    arch = config["architecture"]
    assert {k: arch[k] for k in TINY_GLM.to_dict()} == json.loads(json.dumps(TINY_GLM.to_dict()))
    assert arch["image_length"] == TINY_VISION.num_queries == 4
    assert arch["vision"] == json.loads(json.dumps(TINY_VISION.to_dict()))
    source = config["source"]
    assert source["seq_len"] == SEQ and source["checkpoint"] == folder.name
    assert source["files"] == {p.name: p.stat().st_size for p in folder.iterdir()}
    assert set(source["files"]) >= {"config.json", INDEX_FILE, *SHARDS, "ice_text.model", "tokenizer_config.json"}
    assert result.tokenizer_files == ["ice_text.model", "tokenizer_config.json"]
    for name in result.tokenizer_files:
        assert (result.tokenizer_dir / name).read_bytes() == (folder / name).read_bytes()


def test_greedy_tokens_with_a_picture_match_direct_export_and_reference(converted, direct, checkpoint):
    tensors = checkpoint[1]
    family = GlmFamily(stand_in_tokenizer())
    picture = Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    runs, rows = {}, {}
    for name, directory in (("converted", converted[0].out_dir), ("direct", direct)):
        backend = open_backend("onnx", directory, threads=1)
        encoder = VisionEncoder(backend)
        embeds = encoder.encode(picture).embeds
        prompt = family.encode([], "描述一下图片", image_tokens=encoder.rows)
        generator = Generator(backend, family, read_table(directory))
        runs[name] = list(generator.generate(prompt.ids, Sampler(GREEDY), NEW_TOKENS,
                                             ImageRows(embeds, prompt.image_start)))
        rows[name] = backend.read(embeds)[0]
    vision = {k: v for k, v in tensors.items() if k.startswith("image_encoder.")}
    expected_rows = vision_reference(vision, TINY_VISION, to_pixels(picture, TINY_VISION.image_size))[0]
    assert np.abs(rows["converted"] - expected_rows).max() < 1e-4
    language = language_tensors(tensors)
    theirs = reference_greedy(language, prompt.ids, NEW_TOKENS, (prompt.image_start, expected_rows))
    assert len(theirs) == NEW_TOKENS
    assert runs["converted"] == runs["direct"] == theirs
    assert theirs != reference_greedy(language, prompt.ids, NEW_TOKENS)  # the picture decides the answer


# ---------------------------------------------------------------- streaming

def test_converter_holds_about_one_net_of_float32_weights(converted, checkpoint):
    result, tensors = converted[0], checkpoint[1]
    total = sum(4 * v.size for v in tensors.values())
    assert total > 2 * TABLE_BYTES  # the checkpoint in float32: embedding + lm_head + the rest
    # The largest net is lm_head: its table and the final LayerNorm. The converter never held more
    # (all of it at once would be `total`; embedding and lm_head together twice the table).
    largest_net = TABLE_BYTES + 2 * TINY_GLM.hidden_size * 4
    assert TABLE_BYTES <= result.peak_float32_bytes <= largest_net
    # One shard mapped at a time: each is opened once to read the names and shapes, then again
    # only when a net needs a tensor of it (embedding, layer 0 and vision: 1; layer 1, lm_head: 2).
    assert result.shard_opens == [SHARDS[0], SHARDS[1], SHARDS[0], SHARDS[1], SHARDS[0]]


def test_lazy_tensors_read_on_demand_and_count_what_is_alive(checkpoint):
    folder, tensors = checkpoint
    source = CheckpointTensors(folder)
    handle = source["lm_head.weight"]
    assert handle.shape == (TINY_GLM.vocab_size, TINY_GLM.hidden_size) and handle.dtype == "float16"
    assert source.live_bytes == 0 and source.shard_opens == SHARDS  # shapes come without reading
    array = np.asarray(handle, np.float32)
    assert array.dtype == np.float32 and source.live_bytes == source.peak_bytes == TABLE_BYTES
    np.testing.assert_array_equal(array, tensors["lm_head.weight"].astype(np.float32))
    view = array.T
    del array
    assert source.live_bytes == TABLE_BYTES  # a view keeps its array alive
    del view
    assert source.live_bytes == 0 and source.peak_bytes == TABLE_BYTES
    assert "image_encoder.glm_proj.weight" in source and "nope" not in source
    assert len(source) == len(tensors) and set(source) == set(tensors)


def test_single_file_checkpoint(tmp_path, external_above, direct):
    write_tiny_visualglm(tmp_path / "ckpt", shards=1)
    assert not (tmp_path / "ckpt" / INDEX_FILE).exists()
    result = convert(tmp_path / "ckpt", tmp_path / "model", SEQ)
    assert net_files(result.out_dir) == net_files(direct)
    assert result.tokenizer_dir is None and not (tmp_path / "visualglm-6b").exists()


# ---------------------------------------------------------------- errors

def rewrite_shard(folder: Path, shard: str, change) -> None:
    path = folder / shard
    tensors = torch.load(path, map_location="cpu", weights_only=True)
    change(tensors)
    torch.save(tensors, path)


def drop(name: str, shard: str, from_index: bool = True):
    def apply(folder: Path) -> None:
        rewrite_shard(folder, shard, lambda tensors: tensors.pop(name))
        if from_index:
            index = json.loads((folder / INDEX_FILE).read_text())
            del index["weight_map"][name]
            (folder / INDEX_FILE).write_text(json.dumps(index))
    return apply


def reshape(name: str, shard: str, shape: tuple[int, ...]):
    def apply(folder: Path) -> None:
        rewrite_shard(folder, shard, lambda tensors: tensors.__setitem__(name, torch.zeros(shape, dtype=torch.float16)))
    return apply


def edit_config(change):
    def apply(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))
    return apply


LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 49152}
CHATGLM2 = {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "num_layers": 28, "hidden_size": 4096,
            "ffn_hidden_size": 13696, "kv_channels": 128, "multi_query_attention": True,
            "multi_query_group_num": 2, "padded_vocab_size": 65024, "seq_length": 32768}

BROKEN = {
    "no config.json": (lambda folder: (folder / "config.json").unlink(), r"has no config\.json"),
    "a shard is missing": (lambda folder: (folder / SHARDS[1]).unlink(),
                           r"1 shard\(s\) named in pytorch_model\.bin\.index\.json are missing: "
                           r"pytorch_model-00002-of-00002\.bin"),
    "a GLM parameter is missing": (
        drop("transformer.layers.1.mlp.dense_4h_to_h.bias", SHARDS[1]),
        r"lacks 1 GLM parameter\(s\), e\.g\. transformer\.layers\.1\.mlp\.dense_4h_to_h\.bias"),
    "a vision parameter is missing": (
        drop("image_encoder.qformer.transformer.layers.2.cross_attention.key_value.weight", SHARDS[0]),
        r"missing \(1\):\n    image_encoder\.qformer\.transformer\.layers\.2\.cross_attention\.key_value\.weight"),
    "the index names a parameter its shard lacks": (
        drop("transformer.final_layernorm.weight", SHARDS[1], from_index=False),
        r"1 parameter\(s\) that pytorch_model\.bin\.index\.json lists are not in their shard: "
        r"transformer\.final_layernorm\.weight \(pytorch_model-00002-of-00002\.bin\)"),
    "a GLM parameter has the wrong shape": (
        reshape("transformer.layers.0.attention.dense.weight", SHARDS[0], (64, 63)),
        r"transformer\.layers\.0\.attention\.dense\.weight \(64, 63\) != \(64, 64\)"),
    "a vision parameter has the wrong shape": (
        reshape("image_encoder.glm_proj.weight", SHARDS[0], (64, 31)),
        r"image_encoder\.glm_proj\.weight: \[64, 31\], expected \[64, 32\]"),
    "a llama checkpoint": (edit_config(lambda c: (c.clear(), c.update(LLAMA))),
                           r"model_type 'llama' \(LlamaForCausalLM\); VisualGLM-6B's is 'chatglm'"),
    "a ChatGLM2 checkpoint": (edit_config(lambda c: (c.clear(), c.update(CHATGLM2))),
                              r"a ChatGLM2-6B / ChatGLM3-6B config \(it has multi_query_attention"),
    "a text-only ChatGLM-6B": (edit_config(lambda c: (c.pop("eva_config"), c.pop("qformer_config"))),
                               r"no eva_config / qformer_config: a text-only ChatGLM-6B checkpoint"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_checkpoint_is_refused_clearly(checkpoint, tmp_path, case):
    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoint[0], folder)
    breakage, message = BROKEN[case]
    breakage(folder)
    with pytest.raises(CheckpointError, match=message) as error:
        convert(folder, tmp_path / "model", SEQ, tokenizer_dir=tmp_path / "tokenizer")
    assert str(error.value).startswith(f"cannot convert {folder}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # nothing written


def test_other_usage_errors(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--seq-len 300 must be between 1 and the model's 256 positions"):
        convert(checkpoint[0], tmp_path / "model", 300)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a model directory"):
        convert(checkpoint[0], tmp_path / "busy", SEQ)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]
    with pytest.raises(CheckpointError, match="no such folder"):
        convert(tmp_path / "nowhere", tmp_path / "model", SEQ)


def test_a_probe_of_the_first_layers_is_marked_and_cannot_answer(checkpoint, tmp_path):
    from models.loader import load_chat_model
    from runtime.backend import ModelFileError

    result = convert(checkpoint[0], tmp_path / "probe", SEQ, layers=1)
    assert result.nets == ["embedding.npy", "block_0", "block_cache_0", "lm_head", "vision"]
    assert read_config(result.out_dir)["partial"] == {"layers": 1, "of": TINY_GLM.num_layers}
    with pytest.raises(ModelFileError, match="1 of the model's 2 layers"):
        load_chat_model(result.out_dir)
    with pytest.raises(ValueError, match="at least one layer"):
        convert(checkpoint[0], tmp_path / "none", SEQ, layers=-1)


# ---------------------------------------------------------------- CLI

def test_cli_prints_progress_per_net_and_leaves_token_config_alone(checkpoint, tmp_path, capsys):
    before = sorted(p.name for p in (ROOT / "token_config").iterdir())
    assert main([str(checkpoint[0]), str(tmp_path / "model"), "--seq-len", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = ["embedding.npy", "block_0", "block_cache_0", "block_1", "block_cache_1", "lm_head", "vision"]
    steps = [line for line in lines if line.startswith("[")]
    assert [line.split()[:2] for line in steps] == [[f"[{i + 1}/7]", name] for i, name in enumerate(names)]
    assert lines[-1].startswith("done in ")
    assert read_config(tmp_path / "model")["source"]["seq_len"] == 32
    assert sorted(p.name for p in (ROOT / "token_config").iterdir()) == before
    # A second run replaces the model directory; a broken folder is an error message and exit 2.
    assert main([str(checkpoint[0]), str(tmp_path / "model"), "--seq-len", "32"]) == 0
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot convert {tmp_path / 'nowhere'}: no such folder")
