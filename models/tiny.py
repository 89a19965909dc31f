"""Tiny random checkpoints with the real parameter names, for tests.

Random small models have nearly flat logits, so two correct runtimes could pick different
greedy tokens over rounding noise. `peaked=True` scales the weights up and sharpens the
output head so the top-1 token wins by a clear margin (the tests check the margin).
"""
from __future__ import annotations

import numpy as np

from export.llama import LlamaArch

TINY_LLAMA = LlamaArch(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=128, vocab_size=49152, rope_theta=10000.0,
                       rms_eps=1e-5, max_positions=256)


def tiny_llama(arch: LlamaArch = TINY_LLAMA, seed: int = 0, peaked: bool = True,
               weight_std: float | None = None) -> dict[str, np.ndarray]:
    """`weight_std` overrides the layers' weight scale (1/sqrt(hidden) gives trained-like
    activations, for checks of quantization error rather than of token choices)."""
    rng = np.random.default_rng(seed)
    h, d, kv = arch.hidden_size, arch.head_dim, arch.num_kv_heads
    scale = weight_std or (0.2 if peaked else 0.02)

    def normal(*shape: int, std: float = scale) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tensors = {"model.embed_tokens.weight": normal(arch.vocab_size, h, std=1.0),
               "model.norm.weight": (1 + normal(h, std=0.1))}
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": 1 + normal(h, std=0.1),
            p + "post_attention_layernorm.weight": 1 + normal(h, std=0.1),
            p + "self_attn.q_proj.weight": normal(h, h),
            p + "self_attn.k_proj.weight": normal(kv * d, h),
            p + "self_attn.v_proj.weight": normal(kv * d, h),
            p + "self_attn.o_proj.weight": normal(h, h),
            p + "mlp.gate_proj.weight": normal(arch.intermediate_size, h),
            p + "mlp.up_proj.weight": normal(arch.intermediate_size, h),
            p + "mlp.down_proj.weight": normal(h, arch.intermediate_size),
        }
    tensors["lm_head.weight"] = normal(arch.vocab_size, h, std=1.0 if peaked else scale)
    return tensors


def export_tiny_llama(out_dir, seq_len: int = 64, seed: int = 0, peaked: bool = True,
                      arch: LlamaArch = TINY_LLAMA, vision: dict | None = None,
                      weight_std: float | None = None) -> dict[str, np.ndarray]:
    """Export a tiny random llama (SmolLM2's tokenizer), and a vision net if its weights are
    given, as a model directory; returns the language model's weights."""
    from pathlib import Path

    from export.llama import export_llama
    from models.store import write_config

    tensors = tiny_llama(arch, seed, peaked, weight_std)
    export_llama(arch, tensors, Path(out_dir), seq_len)
    if vision is not None:
        from export.vision import export_vision

        export_vision(vision["tensors"], vision["config"], Path(out_dir))
    write_config(Path(out_dir), {"name": "tiny-llama", "family": "llama", "tokenizer": "smollm2-135m-instruct",
                                 "architecture": arch.to_dict(), "source": {"random_seed": seed}})
    return tensors
