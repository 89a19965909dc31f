"""A THUDM/visualglm-6b Hugging Face checkpoint folder -> this project's model directory.

    python -m models.visualglm_checkpoint CHECKPOINT_DIR OUT_DIR [--seq-len 512]
                                          [--tokenizer-dir token_config/visualglm-6b]

The folder (as downloaded from the Hub): config.json; the weights as
pytorch_model-0000N-of-0000M.bin shards listed in pytorch_model.bin.index.json, or one
pytorch_model.bin; the tokenizer's ice_text.model, tokenizer_config.json (and
tokenization_chatglm.py). OUT_DIR gets the GLM nets (export/glm.py), the `vision` net
(export/visualglm_vision.py) and a config.json (family "glm"). The tokenizer files are
copied only when --tokenizer-dir names where to (token_config/visualglm-6b for the app).

Streaming, so the ~16 GB float16 checkpoint converts within 24 GB of RAM:
- CheckpointTensors is a lazy Mapping from parameter name to a LazyTensor handle (shape and
  dtype only). At start each shard is opened once, in turn, to learn its names and shapes:
  `torch.load(mmap=True, weights_only=True)` maps the file and reads only its pickle, so no
  weight is read. Every check (architecture, missing / mis-shaped parameters) runs on those
  shapes before anything is written.
- Each net's exporter asks for its tensors by name, layer by layer; only then does the
  handle's `np.asarray(handle, np.float32)` read that one tensor from its shard (one shard
  mapped at a time) and convert it to a float32 numpy array. The net is written (weights
  past 1 GiB straight to `<net>.onnx.data`, see export/onnx_graph.py) and dropped, and the
  arrays go with it, before the next net asks for its own.
- So at most about one net's float32 weights are alive at once: the largest is the
  embedding / lm_head table, 130528 x 4096 x 4 = 2.1 GB (the vision net is written with
  each weight streamed out as it is added). CheckpointTensors counts the float32 bytes it
  has handed out that are still alive (`live_bytes`, `peak_bytes`) so tests can check this.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from export.glm import GlmArch, check_tensors, export_glm
from export.split_nets import net_names
from export.visualglm_vision import (
    VisionCheckpointError,
    VisualGlmVisionConfig,
    check_vision_checkpoint,
    export_visualglm_vision,
)
from models.store import write_config

MODEL_NAME = "visualglm-6b"
CONFIG_FILE = "config.json"
INDEX_FILE = "pytorch_model.bin.index.json"
SINGLE_FILE = "pytorch_model.bin"
TOKENIZER_FILES = ("ice_text.model", "tokenizer_config.json", "tokenization_chatglm.py",
                   "special_tokens_map.json", "added_tokens.json")
REQUIRED_TOKENIZER_FILES = ("ice_text.model", "tokenizer_config.json")
DEFAULT_SEQ_LEN = 512

# Keys of ChatGLM2-6B / ChatGLM3-6B configs (also model_type "chatglm") that GLM v1 has not.
_GLM2_KEYS = ("multi_query_attention", "multi_query_group_num", "padded_vocab_size", "ffn_hidden_size",
              "kv_channels", "seq_length")
_GLM1_KEYS = ("hidden_size", "num_layers", "num_attention_heads", "inner_hidden_size", "vocab_size")

Progress = Callable[[str], None]


class CheckpointError(ValueError):
    """The checkpoint folder cannot be converted; the message names the folder and the reason."""

    def __init__(self, folder: Path, problem: str):
        self.folder, self.problem = Path(folder), problem
        super().__init__(f"cannot convert {folder}: {problem}")


# ---------------------------------------------------------------- config.json -> architecture

def read_hf_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(folder, f"it has no {CONFIG_FILE} (expected a Hugging Face checkpoint folder "
                                      "such as THUDM/visualglm-6b)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(folder, f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(folder, f"{CONFIG_FILE} is not a JSON object")
    return config


def read_architecture(folder: Path, config: dict) -> tuple[GlmArch, VisualGlmVisionConfig]:
    """The GLM and image-encoder sizes from THUDM/visualglm-6b's config.json; anything that is
    not VisualGLM-6B (GLM v1 + EVA ViT + Q-Former) is refused, saying what it is."""
    def fail(problem: str) -> CheckpointError:
        return CheckpointError(folder, problem)

    model_type = config.get("model_type")
    if model_type != "chatglm":
        what = ", ".join(config.get("architectures") or []) or "no architectures listed"
        raise fail(f"{CONFIG_FILE} says model_type {model_type!r} ({what}); VisualGLM-6B's is 'chatglm' "
                   "(GLM v1, as ChatGLM-6B)")
    glm2 = [key for key in _GLM2_KEYS if key in config]
    if glm2:
        raise fail(f"{CONFIG_FILE} is a ChatGLM2-6B / ChatGLM3-6B config (it has {', '.join(glm2)}); only GLM v1 "
                   "(ChatGLM-6B, VisualGLM-6B) is supported")
    missing = [key for key in _GLM1_KEYS if key not in config]
    if missing:
        raise fail(f"{CONFIG_FILE} lacks {', '.join(missing)}: not a ChatGLM-6B / VisualGLM-6B config")
    if not config.get("position_encoding_2d", True):
        raise fail(f"{CONFIG_FILE} has position_encoding_2d false; VisualGLM-6B uses 2-D positions")
    if config.get("quantization_bit"):
        raise fail(f"the checkpoint is quantized (quantization_bit {config['quantization_bit']}); "
                   "convert the float16 one")
    if config.get("pre_seq_len"):
        raise fail(f"{CONFIG_FILE} sets pre_seq_len {config['pre_seq_len']} (a P-tuning prefix), "
                   "which this export does not support")
    arch = GlmArch.from_hf_config(config)
    eva, qformer = config.get("eva_config"), config.get("qformer_config")
    if not isinstance(eva, dict) or not isinstance(qformer, dict):
        raise fail(f"{CONFIG_FILE} has no eva_config / qformer_config: a text-only ChatGLM-6B checkpoint, "
                   "not VisualGLM-6B")
    try:
        vision = _vision_config(eva, qformer, arch.hidden_size)
    except KeyError as exc:
        raise fail(f"{CONFIG_FILE}'s image-encoder config lacks {exc.args[0]}") from exc
    except ValueError as exc:
        raise fail(f"{CONFIG_FILE}'s image-encoder config: {exc}") from exc
    image_length = config.get("image_length", vision.num_queries)
    if image_length != vision.num_queries:
        raise fail(f"image_length {image_length} differs from the Q-Former's {vision.num_queries} queries "
                   "(qformer_config.vocab_size)")
    return arch, vision


def _vision_config(eva: dict, qformer: dict, lm_hidden: int) -> VisualGlmVisionConfig:
    """eva_config / qformer_config (THUDM/VisualGLM-6B model_config.json's eva_args /
    qformer_args) -> the vision export's config. Values a config leaves out keep the
    published model's; ln_vision's eps (nn.LayerNorm's default) is not in the config."""
    default = VisualGlmVisionConfig()
    if eva.get("use_final_layernorm"):
        raise ValueError("eva_config.use_final_layernorm is true; VisualGLM-6B's ViT has no final LayerNorm")
    for part, key, expected in ((eva, "layernorm_order", "pre"), (qformer, "layernorm_order", "post")):
        if part.get(key, expected) != expected:
            raise ValueError(f"{'eva' if part is eva else 'qformer'}_config.{key} is {part[key]!r}, "
                             f"VisualGLM-6B's is {expected!r}")
    size = eva.get("image_size", [default.image_size] * 2)
    size = list(size) if isinstance(size, (list, tuple)) else [size, size]
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"eva_config.image_size {size} is not square")
    layers = qformer["num_layers"]
    is_decoder = list(qformer.get("is_decoder", [i % 2 == 0 for i in range(layers)]))
    cross = [i for i, flag in enumerate(is_decoder) if flag]
    if len(is_decoder) != layers or not cross:
        raise ValueError(f"qformer_config.is_decoder {is_decoder} does not mark cross-attention layers "
                         f"of the {layers}")
    freq = cross[1] - cross[0] if len(cross) > 1 else layers
    if cross != list(range(0, layers, freq)):
        raise ValueError(f"qformer_config.is_decoder {is_decoder}: cross-attention layers {cross} are not every "
                         "k-th layer from layer 0, the only pattern this export supports")
    if qformer.get("cross_attn_hidden_size", eva["hidden_size"]) != eva["hidden_size"]:
        raise ValueError(f"qformer_config.cross_attn_hidden_size {qformer['cross_attn_hidden_size']} differs "
                         f"from the ViT's width {eva['hidden_size']}")
    config = VisualGlmVisionConfig(
        image_size=size[0], patch_size=eva.get("patch_size", default.patch_size),
        vit_width=eva["hidden_size"], vit_layers=eva["num_layers"], vit_heads=eva["num_attention_heads"],
        vit_mlp=eva.get("inner_hidden_size") or 4 * eva["hidden_size"],
        vit_eps=eva.get("layernorm_epsilon", default.vit_eps), ln_vision_eps=default.ln_vision_eps,
        qformer_width=qformer["hidden_size"], qformer_layers=layers, qformer_heads=qformer["num_attention_heads"],
        qformer_mlp=qformer.get("inner_hidden_size") or 4 * qformer["hidden_size"],
        qformer_eps=qformer.get("layernorm_epsilon", default.qformer_eps), cross_attention_freq=freq,
        num_queries=qformer["vocab_size"], lm_hidden=lm_hidden)
    config.validate()
    return config


# ---------------------------------------------------------------- the lazy tensor source

class LazyTensor:
    """One checkpoint parameter: its shape and dtype now, its values when np.asarray asks."""

    __slots__ = ("_source", "name", "shape", "dtype")

    def __init__(self, source: "CheckpointTensors", name: str, shape: tuple[int, ...], dtype: str):
        self._source, self.name, self.shape, self.dtype = source, name, shape, dtype

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self._source.load(self.name)
        return array if dtype is None or np.dtype(dtype) == array.dtype else array.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyTensor({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class CheckpointTensors(Mapping):
    """A checkpoint folder's parameters by name, read lazily, one shard mapped at a time.

    `source[name]` is a LazyTensor; `load(name)` (what np.asarray of it calls) returns the
    tensor as a new float32 array, counted in `live_bytes` until numpy frees it.
    `aliases` maps a name the checkpoint lacks to one it has (a tied lm_head)."""

    def __init__(self, folder: Path, aliases: Mapping[str, str] | None = None):
        import torch  # only the converter needs it

        self._torch = torch
        self.folder = Path(folder)
        self._shard_of: dict[str, str] = {}
        self._meta: dict[str, tuple[tuple[int, ...], str]] = {}
        self._open_shard: str | None = None
        self._open_tensors: dict | None = None
        self.live_bytes = self.peak_bytes = 0
        self.shard_opens: list[str] = []  # every (re)mapping of a shard, in order
        weight_map = self._read_index()
        missing_in_shard: list[str] = []
        for shard in dict.fromkeys(weight_map.values()) if weight_map else [SINGLE_FILE]:
            tensors = self._open(shard)
            for name, tensor in tensors.items():
                if not hasattr(tensor, "shape") or (weight_map and weight_map.get(name) != shard):
                    continue  # not a tensor, or the index says it lives elsewhere
                self._shard_of[name] = shard
                self._meta[name] = (tuple(int(d) for d in tensor.shape), str(tensor.dtype).removeprefix("torch."))
            missing_in_shard += [f"{name} ({shard})" for name, where in weight_map.items()
                                 if where == shard and name not in tensors]
        self.close()
        if missing_in_shard:
            raise CheckpointError(self.folder, f"{len(missing_in_shard)} parameter(s) that {INDEX_FILE} lists are "
                                               f"not in their shard: {', '.join(missing_in_shard[:5])}")
        self.aliases = {alias: real for alias, real in (aliases or {}).items()
                        if alias not in self._meta and real in self._meta}

    def _read_index(self) -> dict[str, str]:
        """name -> shard file from the index; {} for a single pytorch_model.bin."""
        index = self.folder / INDEX_FILE
        if not index.is_file():
            if (self.folder / SINGLE_FILE).is_file():
                return {}
            found = sorted(p.name for p in self.folder.glob("*.safetensors"))
            also = f" (only {', '.join(found)}: safetensors are not read)" if found else ""
            raise CheckpointError(self.folder, f"it has neither {INDEX_FILE} nor {SINGLE_FILE}{also}")
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(self.folder, f"{INDEX_FILE} has no valid weight_map: {exc}") from exc
        missing = sorted({shard for shard in weight_map.values() if not (self.folder / shard).is_file()})
        if missing:
            raise CheckpointError(self.folder, f"{len(missing)} shard(s) named in {INDEX_FILE} are missing: "
                                               f"{', '.join(missing)}")
        return weight_map

    def _open(self, shard: str) -> dict:
        if shard != self._open_shard:
            self.close()
            try:
                tensors = self._torch.load(self.folder / shard, map_location="cpu", mmap=True, weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
                raise CheckpointError(self.folder, f"cannot read {shard}: {exc}") from exc
            if not isinstance(tensors, dict):
                raise CheckpointError(self.folder, f"{shard} does not hold a state dict")
            self._open_shard, self._open_tensors = shard, tensors
            self.shard_opens.append(shard)
        return self._open_tensors

    def close(self) -> None:
        """Unmap the shard kept open (arrays already handed out stay valid)."""
        self._open_shard = self._open_tensors = None

    def load(self, name: str) -> np.ndarray:
        """The parameter as a new float32 array (converted from the shard's dtype)."""
        real = self.aliases.get(name, name)
        tensor = self._open(self._shard_of[real])[real]
        array = tensor.to(self._torch.float32).numpy()
        self.live_bytes += array.nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(array, self._freed, array.nbytes)
        return array

    def _freed(self, nbytes: int) -> None:
        self.live_bytes -= nbytes

    def float32_bytes(self, names) -> int:
        return sum(4 * int(np.prod(self[name].shape)) for name in names)

    def __getitem__(self, name: str) -> LazyTensor:
        real = self.aliases.get(name, name)
        if real not in self._meta:
            raise KeyError(name)
        shape, dtype = self._meta[real]
        return LazyTensor(self, name, shape, dtype)

    def __contains__(self, name: object) -> bool:
        return name in self._meta or name in self.aliases

    def __iter__(self) -> Iterator[str]:
        yield from self._meta
        yield from self.aliases

    def __len__(self) -> int:
        return len(self._meta) + len(self.aliases)


# ---------------------------------------------------------------- the conversion

@dataclass
class Conversion:
    out_dir: Path
    nets: list[str]
    tokenizer_dir: Path | None  # where the tokenizer files were copied; None: not copied
    tokenizer_files: list[str]  # the tokenizer files the checkpoint folder has
    peak_float32_bytes: int  # the most float32 checkpoint bytes alive at once
    shard_opens: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_checkpoint(folder: Path) -> tuple[dict, GlmArch, VisualGlmVisionConfig, CheckpointTensors, list[str]]:
    """Everything that can be checked without converting a weight: the config, the shards,
    every parameter's presence and shape. Returns (config.json, GLM sizes, vision sizes,
    the lazy tensors, notes)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "no such folder")
    config = read_hf_config(folder)
    arch, vision = read_architecture(folder, config)
    notes = []
    aliases = {}
    if config.get("tie_word_embeddings", True):  # transformers' default: lm_head tied to the embeddings
        aliases["lm_head.weight"] = "transformer.word_embeddings.weight"
    source = CheckpointTensors(folder, aliases)
    if source.aliases:
        notes.append("lm_head.weight is not in the checkpoint: using transformer.word_embeddings.weight "
                     "(tied, as transformers does when tie_word_embeddings is not false)")
    try:
        check_tensors(arch, source)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(folder, f"its GLM weights do not fit {CONFIG_FILE} ({arch.num_layers} layers x "
                                      f"{arch.hidden_size}, vocabulary {arch.vocab_size}): {exc.args[0]}") from exc
    try:
        vision, unused = check_vision_checkpoint(source, vision)
    except VisionCheckpointError as exc:
        raise CheckpointError(folder, str(exc)) from exc
    if unused:
        notes.append(f"{len(unused)} image-encoder parameter(s) not used by the vision net, e.g. {unused[0]}")
    return config, arch, vision, source, notes


def convert(checkpoint_dir: Path, out_dir: Path, seq_len: int = DEFAULT_SEQ_LEN, tokenizer_dir: Path | None = None,
            progress: Progress | None = None, layers: int | None = None) -> Conversion:
    """Convert the checkpoint folder into the model directory `out_dir` (replaced if it is
    one already; written under `<out_dir>.partial` and renamed into place at the end).
    `tokenizer_dir`: where to copy the tokenizer files (its name becomes the model's
    tokenizer name); None copies nothing. `layers`: convert only the first ones, a probe for
    measuring compile and device costs without the whole model's disk (config.json says
    "partial"; the runtime refuses it, compile.report extrapolates from it)."""
    say = progress or (lambda message: None)
    folder, out_dir = Path(checkpoint_dir), Path(out_dir)
    config, arch, vision, source, notes = check_checkpoint(folder)
    if not 0 < seq_len <= arch.max_positions:
        raise ValueError(f"--seq-len {seq_len} must be between 1 and the model's {arch.max_positions} positions")
    tokenizer_files = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if tokenizer_dir is not None:
        lacking = [name for name in REQUIRED_TOKENIZER_FILES if name not in tokenizer_files]
        if lacking:
            raise CheckpointError(folder, f"it lacks the tokenizer file(s) {', '.join(lacking)} to copy to "
                                          f"{tokenizer_dir}")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / CONFIG_FILE).is_file():
        raise FileExistsError(f"{out_dir} exists and is not a model directory: not writing into it")
    for note in notes:
        say(f"note: {note}")
    written_layers = min(layers or arch.num_layers, arch.num_layers)
    if written_layers < 1:
        raise ValueError(f"--layers {layers}: at least one layer")

    names = net_names(written_layers) + ["vision"]
    started = time.monotonic()

    def step(n: int, name: str) -> None:
        say(f"[{n + 1}/{len(names)}] {name:<16} {time.monotonic() - started:7.1f} s, "
            f"float32 weights alive {source.live_bytes / 2**20:,.0f} MiB (peak {source.peak_bytes / 2**20:,.0f} MiB)")

    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        export_glm(arch, source, staging, seq_len,
                   progress=lambda n, total, name: step(n, name) if n < total else None, layers=written_layers)
        step(len(names) - 1, "vision")
        export_visualglm_vision(source, vision, staging)
        tokenizer_name = Path(tokenizer_dir).name if tokenizer_dir is not None else MODEL_NAME
        write_config(staging, {
            "name": MODEL_NAME, "family": "glm", "tokenizer": tokenizer_name,
            "architecture": {**arch.to_dict(), "image_length": vision.num_queries, "vision": vision.to_dict()},
            "source": {"checkpoint": folder.resolve().name, "seq_len": seq_len,
                       "files": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}},
            **({"partial": {"layers": written_layers, "of": arch.num_layers}}
               if written_layers < arch.num_layers else {}),
        })
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        source.close()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.replace(out_dir)
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        tokenizer_dir.mkdir(parents=True, exist_ok=True)
        for name in tokenizer_files:
            shutil.copyfile(folder / name, tokenizer_dir / name)
        say(f"tokenizer files {', '.join(tokenizer_files)} -> {tokenizer_dir}")
    say(f"done in {time.monotonic() - started:.1f} s: {out_dir} (at most {source.peak_bytes / 2**20:,.0f} MiB "
        "of float32 weights alive at once)")
    return Conversion(out_dir, names, tokenizer_dir, tokenizer_files, source.peak_bytes,
                      list(source.shard_opens), notes)


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.visualglm_checkpoint",
        description="Convert a THUDM/visualglm-6b Hugging Face checkpoint folder into a model directory "
                    "(the ONNX nets + config.json).")
    parser.add_argument("checkpoint_dir", type=Path, help="the downloaded checkpoint folder")
    parser.add_argument("out_dir", type=Path, help="the model directory to write")
    parser.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN,
                        help=f"context length the nets are exported for (default {DEFAULT_SEQ_LEN})")
    parser.add_argument("--tokenizer-dir", type=Path, default=None,
                        help="copy the tokenizer files here, e.g. token_config/visualglm-6b (default: not copied)")
    parser.add_argument("--layers", type=int,
                        help="convert only the first N layers: a probe for compile.bmodel and compile.report "
                             "(not a runnable model)")
    args = parser.parse_args(argv)
    try:
        convert(args.checkpoint_dir, args.out_dir, args.seq_len, args.tokenizer_dir,
                progress=lambda message: print(message, flush=True), layers=args.layers)
    except (CheckpointError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
