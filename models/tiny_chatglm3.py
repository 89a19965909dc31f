"""A tiny random ChatGLM3 with the real parameter names and vocabulary size, exported in the
layout of Sophgo's prebuilt ChatGLM3 bmodels; a numpy reference forward of the same model;
and a character-level stand-in for ChatGLM3's tokenizer. For tests.

The vocabulary stays 65024 (padded_vocab_size) so the special ids are ChatGLM3's own.
`peaked=True` scales the weights up and sharpens the output head so each greedy choice wins
by a clear margin (the tests check the margin).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from export.chatglm3_layout import Chatglm3Arch
from language.families.chatglm3 import EOS_ID, SPECIAL_IDS

TINY_CHATGLM3 = Chatglm3Arch(hidden_size=64, num_layers=2, num_heads=4, num_kv_groups=2, head_dim=16,
                             ffn_hidden_size=96, vocab_size=65024)

STAND_IN_TOKENIZER = "chatglm3-stand-in"  # not in token_config/: tests build it with stand_in_tokenizer()


def tiny_chatglm3(arch: Chatglm3Arch = TINY_CHATGLM3, seed: int = 0, peaked: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, d = arch.hidden_size, arch.head_dim
    qkv = (arch.num_heads + 2 * arch.num_kv_groups) * d
    scale = 0.2 if peaked else 0.02

    def normal(*shape: int, std: float = scale) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tensors = {"transformer.embedding.word_embeddings.weight": normal(arch.vocab_size, h, std=1.0),
               "transformer.encoder.final_layernorm.weight": 1 + normal(h, std=0.1)}
    for i in range(arch.num_layers):
        p = f"transformer.encoder.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": 1 + normal(h, std=0.1),
            p + "post_attention_layernorm.weight": 1 + normal(h, std=0.1),
            p + "self_attention.query_key_value.weight": normal(qkv, h),
            p + "self_attention.query_key_value.bias": normal(qkv, std=0.1),
            p + "self_attention.dense.weight": normal(h, arch.num_heads * d),
            p + "mlp.dense_h_to_4h.weight": normal(2 * arch.ffn_hidden_size, h),
            p + "mlp.dense_4h_to_h.weight": normal(h, arch.ffn_hidden_size),
        }
    tensors["transformer.output_layer.weight"] = normal(arch.vocab_size, h, std=1.0 if peaked else scale)
    return tensors


def export_tiny_chatglm3(out_dir, seq_len: int = 64, seed: int = 0, peaked: bool = True, token_head: bool = True,
                         arch: Chatglm3Arch = TINY_CHATGLM3) -> dict[str, np.ndarray]:
    """Export a tiny random ChatGLM3 in the vendor layout as a model directory; returns its weights.

    config.json names the stand-in tokenizer, which has no folder in token_config/: drive the
    directory with language.shifted_generate and Chatglm3Family(stand_in_tokenizer())."""
    from export.chatglm3_layout import export_chatglm3
    from models.store import write_config

    tensors = tiny_chatglm3(arch, seed, peaked)
    export_chatglm3(arch, tensors, Path(out_dir), seq_len, token_head=token_head)
    write_config(Path(out_dir), {"name": "tiny-chatglm3", "family": "chatglm3", "tokenizer": STAND_IN_TOKENIZER,
                                 "architecture": arch.to_dict(), "layout": "sophgo-chatglm3",
                                 "source": {"random_seed": seed, "token_head": token_head}})
    return tensors


# ---------------------------------------------------------------- reference

def reference_logits(arch: Chatglm3Arch, tensors: dict, ids: list[int], rows: slice = slice(None)) -> np.ndarray:
    """Logits [len(ids[rows]), V] of ChatGLM3 on `ids`, the whole sequence at once (no cache),
    in float64, written from modeling_chatglm.py's math (positions 0..n-1, causal)."""
    t = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    n, nh, kv, d = len(ids), arch.num_heads, arch.num_kv_groups, arch.head_dim
    rot = d // 2  # RotaryEmbedding(kv_channels // 2): rotates the first half of each head
    theta = 1.0 / arch.rope_base ** (np.arange(0, rot, 2) / rot)
    angles = np.outer(np.arange(n), theta)[:, None, :]  # [n,1,rot/2]
    cos, sin = np.cos(angles), np.sin(angles)

    def rope(x: np.ndarray) -> np.ndarray:  # [n, heads, d]; pairs (2p, 2p+1) of the first rot dims
        pairs = x[..., :rot].reshape(n, x.shape[1], rot // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        turned = np.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(n, x.shape[1], rot)
        return np.concatenate([turned, x[..., rot:]], axis=-1)

    def rms(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + arch.layernorm_eps) * weight

    causal = np.tril(np.ones((n, n), dtype=bool))
    x = t["transformer.embedding.word_embeddings.weight"][np.asarray(ids)]
    for i in range(arch.num_layers):
        p = f"transformer.encoder.layers.{i}."
        mixed = rms(x, t[p + "input_layernorm.weight"]) @ t[p + "self_attention.query_key_value.weight"].T \
            + t[p + "self_attention.query_key_value.bias"]
        q = rope(mixed[:, :nh * d].reshape(n, nh, d))
        k = rope(mixed[:, nh * d:(nh + kv) * d].reshape(n, kv, d))
        v = mixed[:, (nh + kv) * d:].reshape(n, kv, d)
        k, v = np.repeat(k, nh // kv, axis=1), np.repeat(v, nh // kv, axis=1)  # head h reads group h // (nh/kv)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
        scores = np.where(causal, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = np.einsum("hqk,khd->qhd", probs, v).reshape(n, nh * d)
        x = x + context @ t[p + "self_attention.dense.weight"].T
        gate, up = np.split(rms(x, t[p + "post_attention_layernorm.weight"]) @ t[p + "mlp.dense_h_to_4h.weight"].T, 2,
                            axis=-1)
        x = x + (gate / (1 + np.exp(-gate)) * up) @ t[p + "mlp.dense_4h_to_h.weight"].T
    x = rms(x[rows], t["transformer.encoder.final_layernorm.weight"])
    return x @ t["transformer.output_layer.weight"].T


def greedy_reference(arch: Chatglm3Arch, tensors: dict, prompt: list[int], max_new_tokens: int,
                     stop_ids, context: int | None = None) -> tuple[list[int], list[float]]:
    """Greedy tokens after `prompt` (recomputing the whole sequence each step), stopping at a
    stop id, after max_new_tokens, or when the sequence fills `context` positions; and each
    choice's top-1 margin over the runner-up."""
    ids, tokens, margins = list(prompt), [], []
    for _ in range(max_new_tokens):
        logits = reference_logits(arch, tensors, ids, slice(-1, None))[0]
        top2 = np.sort(logits)[-2:]
        token = int(np.argmax(logits))
        if token in stop_ids:
            break
        tokens.append(token)
        margins.append(float(top2[1] - top2[0]))
        if context is not None and len(ids) >= context:
            break
        ids.append(token)
    return tokens, margins


# ---------------------------------------------------------------- tokenizer stand-in

_CHINESE = "你好我是的了在有这个人们中国问答：，。？！、介绍一下自己"


def stand_in_tokenizer():
    """One token per character, with ChatGLM3's special tokens at their real ids.

    A transformers tokenizer (encode / decode / convert_tokens_to_ids) for tests; it is not
    ChatGLM3's sentencepiece vocabulary, so ids mean nothing to a real checkpoint."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {"<unk>": 0, "<s>": 1, "</s>": EOS_ID, **SPECIAL_IDS}
    chars = [chr(c) for c in range(32, 127)] + ["\n"] + list(dict.fromkeys(_CHINESE))
    vocab = dict(specials) | {ch: 5 + i for i, ch in enumerate(chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    # "sop" / "eop" are bare words: only whole words become the special token, never part of "people".
    backend.add_special_tokens([AddedToken(token, single_word=token.isalpha(), special=True) for token in specials])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
