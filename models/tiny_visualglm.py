"""A tiny random VisualGLM-6B written as a Hugging Face checkpoint folder, for tests of the
converter (models/visualglm_checkpoint.py).

The folder looks like THUDM/visualglm-6b's: a config.json with the same keys (GLM v1's
`num_layers`, `inner_hidden_size`, ..., the special ids, `image_length`, and the image
encoder's `eva_config` / `qformer_config`, as THUDM/VisualGLM-6B's model_config.json has them
under `eva_args` / `qformer_args` and the HF modeling_chatglm.py reads them:
`BLIP2(config.eva_config, config.qformer_config)`, `config.image_length`); float16 weights
under the real names (`transformer.*`, `lm_head.weight`, `image_encoder.*`, and the
`rotary_emb.inv_freq` buffers a saved ChatGLM-6B state dict carries) in `torch.save`d shards
`pytorch_model-0000N-of-0000M.bin` with a `pytorch_model.bin.index.json`, or one
`pytorch_model.bin`; and tokenizer files by the real names (placeholders: the tests use
models/tiny_glm.stand_in_tokenizer, which has ChatGLM-6B's special ids).

The weights are models/tiny_glm.py's language model and models/tiny_visualglm_vision.py's
image encoder (lm_hidden = the GLM's hidden size, image_length = its query count), rounded
to float16 as stored.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from export.glm import GlmArch
from export.visualglm_vision import VisualGlmVisionConfig
from models.tiny_glm import TINY_GLM, tiny_glm
from models.tiny_visualglm_vision import TINY_VISUALGLM_VISION, tiny_visualglm_vision

INDEX_FILE = "pytorch_model.bin.index.json"
SINGLE_FILE = "pytorch_model.bin"

# Special ids and other constants of THUDM/visualglm-6b's config.json (ChatGLM-6B's).
_SPECIAL_IDS = {"bos_token_id": 130004, "eos_token_id": 130005, "mask_token_id": 130000,
                "gmask_token_id": 130001, "pad_token_id": 3}


def tiny_visualglm_config(arch: GlmArch = TINY_GLM, vision: VisualGlmVisionConfig = TINY_VISUALGLM_VISION) -> dict:
    """A config.json with THUDM/visualglm-6b's keys, for these sizes."""
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


def tiny_visualglm(arch: GlmArch = TINY_GLM, vision: VisualGlmVisionConfig = TINY_VISUALGLM_VISION,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint, float16, by its Hugging Face name (in state-dict order)."""
    language = tiny_glm(arch, seed)
    tensors: dict[str, np.ndarray] = {}
    for name, value in language.items():
        tensors[name] = value.astype(np.float16)
        if name.endswith(".post_attention_layernorm.bias"):  # the buffer saved with each layer
            layer = name[:-len("post_attention_layernorm.bias")]
            dim = arch.head_dim // 2  # RotaryEmbedding(dim = D/2): inv_freq has dim/2 entries
            inv_freq = 1.0 / (10000 ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
            tensors[layer + "attention.rotary_emb.inv_freq"] = inv_freq.astype(np.float16)
    tensors |= tiny_visualglm_vision(vision, seed, prefix="image_encoder.", dtype=np.float16)
    return tensors


def language_tensors(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The GLM's part of the checkpoint (what export_glm reads)."""
    return {k: v for k, v in tensors.items() if not k.startswith("image_encoder.") and "rotary_emb" not in k}


def _shard_of(name: str, shards: int, num_layers: int) -> int:
    """0-based shard: word embeddings, the first half of the layers and the image encoder in
    the first; the other layers, final norm and lm_head after (so a conversion goes back and forth)."""
    if shards == 1:
        return 0
    if name.startswith("transformer.layers."):
        layer = int(name.split(".")[2])
        return min(shards - 1, layer * shards // num_layers)
    if name.startswith(("transformer.word_embeddings", "image_encoder.")):
        return 0
    return shards - 1


def write_tiny_visualglm(folder: Path, arch: GlmArch = TINY_GLM,
                         vision: VisualGlmVisionConfig = TINY_VISUALGLM_VISION, seed: int = 0,
                         shards: int = 2) -> dict[str, np.ndarray]:
    """Write the checkpoint folder; returns its tensors (float16 numpy, real names).

    shards > 1: `pytorch_model-0000N-of-0000M.bin` + `pytorch_model.bin.index.json`;
    shards == 1: one `pytorch_model.bin`, no index."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = tiny_visualglm(arch, vision, seed)
    files = [SINGLE_FILE] if shards == 1 else [f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin" for i in range(shards)]
    parts: list[dict] = [{} for _ in files]
    weight_map = {}
    for name, value in tensors.items():
        shard = _shard_of(name, shards, arch.num_layers)
        parts[shard][name] = torch.from_numpy(value.copy())
        weight_map[name] = files[shard]
    for file, part in zip(files, parts):
        torch.save(part, folder / file)
    if shards > 1:
        total = sum(v.nbytes for v in tensors.values())
        (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total},
                                                     "weight_map": weight_map}, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(tiny_visualglm_config(arch, vision), indent=2) + "\n")
    _write_tokenizer_files(folder)
    return tensors


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
