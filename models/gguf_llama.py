"""Read a llama-architecture GGUF file into Hugging Face parameter names (fp32 numpy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from export.llama import LlamaArch

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _hf_name(gguf_name: str) -> str:
    stem, suffix = gguf_name.rsplit(".", 1)
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{suffix}"
    return f"{_GLOBAL_NAMES[stem]}.{suffix}"


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k rows (interleaved rotary pairs -> HF's halves)."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def read_llama_gguf(path: Path) -> tuple[LlamaArch, dict[str, np.ndarray]]:
    reader = GGUFReader(path)

    def field(key: str):
        if key not in reader.fields:
            raise ValueError(f"{path} is not a llama GGUF file: it has no '{key}'")
        return reader.fields[key].contents()

    if field("general.architecture") != "llama":
        raise ValueError(f"{path}: architecture {field('general.architecture')!r}, expected 'llama'")
    arch = LlamaArch(
        hidden_size=field("llama.embedding_length"),
        num_layers=field("llama.block_count"),
        num_heads=field("llama.attention.head_count"),
        num_kv_heads=field("llama.attention.head_count_kv"),
        intermediate_size=field("llama.feed_forward_length"),
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        rope_theta=float(field("llama.rope.freq_base")),
        rms_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        max_positions=field("llama.context_length"),
    )
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        if name.endswith("q_proj.weight"):
            w = _unpermute(w, arch.num_heads)
        elif name.endswith("k_proj.weight"):
            w = _unpermute(w, arch.num_kv_heads)
        tensors[name] = w
    return arch, tensors
