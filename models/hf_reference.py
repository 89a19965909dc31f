"""transformers (PyTorch) models on the same weights: the reference for parity tests and benchmarks.

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


def greedy_reference(model, ids: list[int], new_tokens: int, stop_ids) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=sorted(stop_ids), pad_token_id=0)
    generated = out[0, len(ids):].tolist()
    stops = [i for i, t in enumerate(generated) if t in stop_ids]
    return generated[: stops[0]] if stops else generated


def teacher_forced_logits(model, ids: list[int]) -> np.ndarray:
    """Logits after every position of `ids`: [len(ids), vocab]."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()
