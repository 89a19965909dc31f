"""A tiny random GLM v1 (ChatGLM-6B layout) with the real parameter names and vocabulary size,
for tests; and a character-level stand-in for ChatGLM's tokenizer.

The vocabulary stays 130528 so the special ids are ChatGLM-6B's own ([gMASK] 130001,
<sop> 130004, <eop> 130005). `peaked=True` scales the weights up and sharpens the output
head so each greedy choice wins by a clear margin (the tests check the margin).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from export.glm import GlmArch

TINY_GLM = GlmArch(hidden_size=64, num_layers=2, num_heads=4, inner_size=256, vocab_size=130528,
                   layernorm_eps=1e-5, max_positions=256)

STAND_IN_TOKENIZER = "glm-stand-in"  # not in token_config/: tests build it with stand_in_tokenizer()


def tiny_glm(arch: GlmArch = TINY_GLM, seed: int = 0, peaked: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, inner = arch.hidden_size, arch.inner_size
    scale = 0.2 if peaked else 0.02

    def normal(*shape: int, std: float = scale) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {prefix + ".weight": 1 + normal(h, std=0.1), prefix + ".bias": normal(h, std=0.1)}

    tensors = {"transformer.word_embeddings.weight": normal(arch.vocab_size, h, std=1.0),
               **norm("transformer.final_layernorm")}
    for i in range(arch.num_layers):
        p = f"transformer.layers.{i}."
        tensors |= {
            **norm(p + "input_layernorm"), **norm(p + "post_attention_layernorm"),
            p + "attention.query_key_value.weight": normal(3 * h, h),
            p + "attention.query_key_value.bias": normal(3 * h, std=0.1),
            p + "attention.dense.weight": normal(h, h),
            p + "attention.dense.bias": normal(h, std=0.1),
            p + "mlp.dense_h_to_4h.weight": normal(inner, h),
            p + "mlp.dense_h_to_4h.bias": normal(inner, std=0.1),
            p + "mlp.dense_4h_to_h.weight": normal(h, inner),
            p + "mlp.dense_4h_to_h.bias": normal(h, std=0.1),
        }
    tensors["lm_head.weight"] = normal(arch.vocab_size, h, std=1.0 if peaked else scale)
    return tensors


def export_tiny_glm(out_dir, seq_len: int = 64, seed: int = 0, peaked: bool = True,
                    arch: GlmArch = TINY_GLM) -> dict[str, np.ndarray]:
    """Export a tiny random GLM as a model directory; returns its weights.

    config.json names the stand-in tokenizer, which has no folder in token_config/ yet:
    drive the directory with a Generator and GlmFamily(stand_in_tokenizer()), not
    load_chat_model.
    """
    from export.glm import export_glm
    from models.store import write_config

    tensors = tiny_glm(arch, seed, peaked)
    export_glm(arch, tensors, Path(out_dir), seq_len)
    write_config(Path(out_dir), {"name": "tiny-glm", "family": "glm", "tokenizer": STAND_IN_TOKENIZER,
                                 "architecture": arch.to_dict(), "source": {"random_seed": seed}})
    return tensors


# Characters the stand-in knows, beyond printable ASCII and "\n": the prompt's own, and a few common ones.
_CHINESE = "问答：，。？！、；你好我是的了在有这个人们中国图片描述一下什么颜色红蓝绿圆形方三角星介绍自己"


def stand_in_tokenizer(vocab_size: int = TINY_GLM.vocab_size):
    """One token per character, with ChatGLM-6B's special tokens at their real ids.

    A transformers tokenizer (encode / decode / convert_tokens_to_ids) for tests; it is not
    ChatGLM's sentencepiece vocabulary, so ids mean nothing to a real checkpoint.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {"<unk>": 0, "<pad>": 3, "[MASK]": 130000, "[gMASK]": 130001, "<sop>": 130004, "<eop>": 130005}
    chars = [chr(c) for c in range(32, 127)] + ["\n"] + list(dict.fromkeys(_CHINESE))
    vocab = dict(specials)
    vocab |= {ch: 5 + i for i, ch in enumerate(chars)}
    assert max(vocab.values()) < vocab_size
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<sop>", eos_token="<eop>", mask_token="[MASK]")
