"""A random-weight VisualGLM-6B written as a Hugging Face checkpoint folder, at any size: the
real one (~7.8 B parameters, ~15.6 GB in float16) for trying the converter and the compiler on
real sizes without the real weights, or the tests' small ones.

    python -m models.random_visualglm OUT_DIR [--seed 0] [--shard-gb 2]

The folder looks like THUDM/visualglm-6b's: a config.json with the same keys (GLM v1's
`num_layers`, `inner_hidden_size`, ..., the special ids, `image_length`, and the image
encoder's `eva_config` / `qformer_config`, as THUDM/VisualGLM-6B's model_config.json has them
under `eva_args` / `qformer_args` and the HF modeling_chatglm.py reads them:
`BLIP2(config.eva_config, config.qformer_config)`, `config.image_length`); float16 weights
under the real names (`transformer.*`, `lm_head.weight`, `image_encoder.*`, and the
`rotary_emb.inv_freq` buffers a saved ChatGLM-6B state dict carries) in `torch.save`d shards
`pytorch_model-0000N-of-0000M.bin` with a `pytorch_model.bin.index.json`, or one
`pytorch_model.bin`; and tokenizer files by the real names (placeholders: the tests use
a character-level stand-in with ChatGLM-6B's special ids). It is written under
`OUT_DIR.partial` and renamed to OUT_DIR when complete.

`write_random_visualglm` (the CLI) writes any size, streamed. Each tensor is drawn on its own
from `SeedSequence([seed, crc32(name)])`, so its values depend on the seed and its name
only (not on the shard layout) and `random_tensor` regenerates any one of them. Shards are
filled in the state dict's order (word embeddings, layers 0..N-1, final LayerNorm, lm_head,
image encoder) up to a byte budget; each is generated, saved and freed before the next, so
about one shard is in memory at a time. Values are drawn in float32 blocks of
`BLOCK_VALUES` and stored as float16, so a 130528 x 4096 table needs no float32 copy.
Scales are of the order a trained model's have, so that quantization error measured on
these weights means something (but the draws are Gaussian: no outlier channels, which
trained LLMs have and which make quantization harder):
    Linear / Conv weights   N(0, 1/fan_in), fan_in = the product of all but the first dim
                            (lm_head too: logits of unit scale for a LayerNorm'd input)
    LayerNorm weights       1 + N(0, NOISE_STD^2);   every bias N(0, NOISE_STD^2)
    embeddings              N(0, EMBEDDING_STD^2): word embeddings, the ViT's class token and
                            positions, the Q-Former's queries. 0.02 is the usual initializer
                            range (BERT, BLIP-2's query tokens, EVA's positions), and the order
                            of trained LLM embedding rows; ChatGLM LayerNorms the embedding
                            before use, so its scale does not change the language model's output.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from export.glm import GlmArch, rotary_inv_freq
from export.visualglm_vision import VisualGlmVisionConfig
from models.visualglm_checkpoint import CONFIG_FILE, INDEX_FILE, SINGLE_FILE

# Special ids and other constants of THUDM/visualglm-6b's config.json (ChatGLM-6B's).
_SPECIAL_IDS = {"bos_token_id": 130004, "eos_token_id": 130005, "mask_token_id": 130000,
                "gmask_token_id": 130001, "pad_token_id": 3}
INV_FREQ = "attention.rotary_emb.inv_freq"

EMBEDDING_STD = 0.02
NOISE_STD = 0.02
BLOCK_VALUES = 1 << 22  # float32 values drawn at a time (16 MiB)
GB = 10 ** 9  # --shard-gb counts decimal gigabytes, as Hugging Face's max_shard_size "2GB"
HF_PREFIX = "image_encoder."  # the image encoder's tensors in the checkpoint
CLI_SIZE = (GlmArch(), VisualGlmVisionConfig())  # what the command line writes: THUDM/visualglm-6b's sizes

Progress = Callable[[str], None]
MakeTensor = Callable[[str], np.ndarray]


def visualglm_config(arch: GlmArch = GlmArch(), vision: VisualGlmVisionConfig = VisualGlmVisionConfig()) -> dict:
    """A config.json with THUDM/visualglm-6b's keys, for these sizes (the defaults: its values)."""
    assert vision.lm_hidden == arch.hidden_size
    eva = {
        "num_layers": vision.vit_layers, "hidden_size": vision.vit_width,
        "num_attention_heads": vision.vit_heads, "vocab_size": 1, "layernorm_order": "pre",
        "model_parallel_size": 1, "max_sequence_length": 1 + vision.num_patches,
        "inner_hidden_size": vision.vit_mlp, "use_final_layernorm": False,
        "layernorm_epsilon": vision.vit_eps, "image_size": [vision.image_size, vision.image_size],
        "pre_len": 1, "post_len": 0, "in_channels": 3, "num_classes": 0, "patch_size": vision.patch_size,
    }
    qformer = {
        "num_layers": vision.qformer_layers, "hidden_size": vision.qformer_width,
        "num_attention_heads": vision.qformer_heads, "vocab_size": vision.num_queries,
        "layernorm_order": "post", "model_parallel_size": 1, "max_sequence_length": 0,
        "is_decoder": [i in vision.cross_layers for i in range(vision.qformer_layers)],
        "cross_attn_hidden_size": vision.vit_width, "layernorm_epsilon": vision.qformer_eps,
    }
    if vision.qformer_mlp != 4 * vision.qformer_width:  # the published Q-Former uses the 4 x default
        qformer["inner_hidden_size"] = vision.qformer_mlp
    return {
        "_name_or_path": "THUDM/visualglm-6b",
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGenerationWithImage",
            "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGenerationWithImage",
        },
        **_SPECIAL_IDS,
        "hidden_size": arch.hidden_size,
        "inner_hidden_size": arch.inner_size,
        "layernorm_epsilon": arch.layernorm_eps,
        "max_sequence_length": arch.max_positions,
        "model_type": "chatglm",
        "num_attention_heads": arch.num_heads,
        "num_layers": arch.num_layers,
        "position_encoding_2d": True,
        "torch_dtype": "float16",
        "pre_seq_len": None,
        "prefix_projection": False,
        "quantization_bit": 0,
        "use_cache": True,
        "vocab_size": arch.vocab_size,
        "image_length": vision.num_queries,
        "eva_config": eva,
        "qformer_config": qformer,
    }


def checkpoint_shapes(arch: GlmArch, vision: VisualGlmVisionConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint, name -> shape, in the state dict's order: the GLM with
    each layer's rotary buffer where its module sits (after input_layernorm), then the image
    encoder."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in arch.expected_shapes().items():
        if name.endswith(".attention.query_key_value.weight"):
            shapes[name.removesuffix("attention.query_key_value.weight") + INV_FREQ] = (arch.head_dim // 4,)
        shapes[name] = shape
    return shapes | {HF_PREFIX + name: shape for name, shape in vision.expected_shapes().items()}


def rotary_buffer(arch: GlmArch) -> np.ndarray:
    """The saved `rotary_emb.inv_freq`: float16, as the published module keeps it."""
    return rotary_inv_freq(arch).astype(np.float16)


# ---------------------------------------------------------------- random tensors of any size

def _mean_std(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """The distribution of a parameter, from its name (see the module docstring)."""
    if name.endswith(".bias"):
        return 0.0, NOISE_STD
    if "layernorm" in name or "ln_vision" in name:
        return 1.0, NOISE_STD
    if name.endswith(("word_embeddings.weight", "position_embeddings.weight")):
        return 0.0, EMBEDDING_STD
    return 0.0, float(np.prod(shape[1:])) ** -0.5  # a Linear / Conv weight [out, in, ...]


def random_tensor(seed: int, name: str, shape: tuple[int, ...], block_values: int = BLOCK_VALUES) -> np.ndarray:
    """The parameter's float16 values: a function of (seed, name, shape) only. Drawn from one
    generator in float32 blocks (the same stream whatever `block_values` is)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))
    mean, std = _mean_std(name, shape)
    out = np.empty(shape, np.float16)
    flat = out.reshape(-1)
    block = np.empty(min(block_values, flat.size), np.float32)
    for start in range(0, flat.size, block.size):
        part = block[:min(block.size, flat.size - start)]
        rng.standard_normal(dtype=np.float32, out=part)
        part *= std
        part += mean
        flat[start:start + part.size] = part
    return out


def _float16_bytes(shape: tuple[int, ...]) -> int:
    return 2 * int(np.prod(shape))


def pack_shards(shapes: Mapping[str, tuple[int, ...]], budget_bytes: int) -> list[list[str]]:
    """Names in order, cut into shards of at most `budget_bytes` of float16 (a larger tensor
    gets a shard of its own), as Hugging Face's max_shard_size does."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, shape in shapes.items():
        size = _float16_bytes(shape)
        if shards[-1] and used + size > budget_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write_random_visualglm(folder: Path, arch: GlmArch = GlmArch(),
                           vision: VisualGlmVisionConfig = VisualGlmVisionConfig(), seed: int = 0,
                           shard_bytes: int = 2 * GB, progress: Progress | None = None) -> dict[str, str]:
    """Write the checkpoint folder with random weights (one shard in memory at a time); returns
    the weight map (name -> shard file)."""
    shapes = checkpoint_shapes(arch, vision)

    def make(name: str) -> np.ndarray:
        return rotary_buffer(arch) if name.endswith(INV_FREQ) else random_tensor(seed, name, shapes[name])

    return write_checkpoint(folder, visualglm_config(arch, vision), shapes, pack_shards(shapes, shard_bytes),
                            make, progress)


# ---------------------------------------------------------------- writing the folder

def shard_files(count: int) -> list[str]:
    return [SINGLE_FILE] if count == 1 else [f"pytorch_model-{i + 1:05d}-of-{count:05d}.bin" for i in range(count)]


def write_checkpoint(folder: Path, config: dict, shapes: Mapping[str, tuple[int, ...]], layout: list[list[str]],
                     make: MakeTensor, progress: Progress | None = None) -> dict[str, str]:
    """Write the folder: shard i holds the tensors `layout[i]` names, each made by `make(name)`
    (float16, of its `shapes` entry) only when its shard is written. Written under
    `<folder>.partial`, renamed to `folder` at the end; `folder` must be absent or empty.
    Returns the weight map."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty: not writing a checkpoint into it")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        weight_map, total = _write_shards(staging, shapes, layout, make, progress or (lambda message: None))
        if len(layout) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (staging / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        _write_tokenizer_files(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if folder.exists():
        folder.rmdir()
    staging.rename(folder)
    return weight_map


def _write_shards(staging: Path, shapes: Mapping[str, tuple[int, ...]], layout: list[list[str]],
                  make: MakeTensor, say: Progress) -> tuple[dict[str, str], int]:
    """Every shard in turn, saying how far it got after each; returns the weight map and the bytes written."""
    files = shard_files(len(layout))
    total = sum(_float16_bytes(shape) for shape in shapes.values())
    weight_map: dict[str, str] = {}
    written = 0
    started = time.monotonic()
    for n, (file, names) in enumerate(zip(files, layout)):
        written += _write_shard(staging / file, names, shapes, make)
        weight_map |= dict.fromkeys(names, file)
        say(f"[{n + 1}/{len(files)}] {file}: {len(weight_map)}/{len(shapes)} tensors, "
            f"{written / GB:.2f}/{total / GB:.2f} GB, {time.monotonic() - started:.1f} s")
    return weight_map, written


def _write_shard(path: Path, names: list[str], shapes: Mapping[str, tuple[int, ...]], make: MakeTensor) -> int:
    """Make the shard's tensors, save them as one state dict, and let them go; returns their bytes."""
    import torch  # only writing needs it

    part = {}
    for name in names:
        value = make(name)
        assert value.dtype == np.float16 and value.shape == tuple(shapes[name]), name
        part[name] = torch.from_numpy(value)
    torch.save(part, path)
    return sum(tensor.nbytes for tensor in part.values())


def _write_tokenizer_files(folder: Path) -> None:
    """The real tokenizer's file names; the contents are placeholders (no sentencepiece model)."""
    (folder / "ice_text.model").write_bytes(b"placeholder for ChatGLM-6B's sentencepiece model\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "name_or_path": "THUDM/visualglm-6b", "tokenizer_class": "ChatGLMTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
        "bos_token": "<sop>", "eos_token": "<eop>", "end_token": "</s>", "gmask_token": "[gMASK]",
        "mask_token": "[MASK]", "pad_token": "<pad>", "unk_token": "<unk>",
        "do_lower_case": False, "remove_space": False,
    }, indent=2) + "\n")


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.random_visualglm",
        description="Write a random-weight VisualGLM-6B Hugging Face checkpoint folder (real names, "
                    "config and shard layout), one shard in memory at a time.")
    parser.add_argument("out_dir", type=Path, help="the checkpoint folder to write (absent or empty)")
    parser.add_argument("--seed", type=int, default=0, help="every tensor is drawn from (seed, its name)")
    parser.add_argument("--shard-gb", type=float, default=2.0,
                        help="float16 bytes per shard, in GB of 10^9 (default 2; a larger tensor gets its own)")
    args = parser.parse_args(argv)
    if args.shard_gb <= 0:
        parser.error("--shard-gb must be positive")
    started = time.monotonic()
    try:
        write_random_visualglm(args.out_dir, *CLI_SIZE, args.seed, int(args.shard_gb * GB),
                               progress=lambda message: print(message, flush=True))
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(f"done in {time.monotonic() - started:.1f} s: {args.out_dir} (peak RSS {peak_rss / GB:.2f} GB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
