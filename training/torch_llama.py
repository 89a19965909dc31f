"""A transformers (PyTorch) llama on the project's weights: what training back-propagates
through, and the reference for the parity tests and the benchmark.

Needs torch, which the app itself does not."""
from __future__ import annotations

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from export.llama import LlamaArch


def transformers_llama(arch: LlamaArch, tensors: dict[str, np.ndarray]) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads, vocab_size=arch.vocab_size,
        rope_theta=arch.rope_theta, rms_norm_eps=arch.rms_eps,
        max_position_embeddings=arch.max_positions, tie_word_embeddings="lm_head.weight" not in tensors,
    )
    model = LlamaForCausalLM(config).eval()
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in tensors.items()}  # writable copies
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model
