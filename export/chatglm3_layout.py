"""ChatGLM3 checkpoint -> ONNX nets in the layout of Sophgo's prebuilt ChatGLM3 bmodels.

That layout (sophon-demo sample/ChatGLM3/tools/export_onnx.py, LLM-TPU
models/ChatGLM3/compile/export_onnx.py) is not the project's own (export/llama.py): the
blocks are sequence-first, block_cache returns the whole KV cache shifted by one row, and
lm_head can return the argmax token. language/shifted_generate.py runs it.

  embedding        input_ids [1,SEQ] int32                        -> input_embed [1,SEQ,H]
  embedding_cache  input_ids [1,1] int32                          -> input_embed [1,1,H]
  block_<i>        input_states [SEQ,1,H], position_ids [1,SEQ] int32, attention_mask [1,1,SEQ,SEQ]
                   -> hidden_states [SEQ,1,H], past_k [SEQ,1,KV,D], past_v
  block_cache_<i>  input_states [1,1,H], position_ids [1,1], attention_mask [1,1,1,SEQ+1],
                   history_k [SEQ,1,KV,D], history_v
                   -> hidden_states [1,1,H], past_k = cat(history_k, k)[1:] [SEQ,1,KV,D], past_v
  lm_head          hidden_states [1,H] -> token [1,1] int32 (ArgMax)   or, token_head=False,
                                          logits [1,V] (LLM-TPU's lm_head)

Every shape is fixed (SEQ = the cache length, also the prefill width), as in the vendor
export. Masks are additive (0 / -10000), as the vendor runtimes fill them.

The model (THUDM/chatglm3-6b modeling_chatglm.py, HF parameter names): RMSNorm; one
query_key_value projection with bias giving NH query heads and KV (multi_query_group_num)
key/value heads of D (kv_channels); rotary embedding on the first D/2 dims of each head,
rotating interleaved pairs (2p, 2p+1) by position * 10000^(-2p/(D/2)), the rest passed
through; scores / sqrt(D) (apply_query_key_layer_scaling divides and multiplies by the same
layer number); dense without bias; SwiGLU MLP (dense_h_to_4h gives [gate, up]); final
RMSNorm; output_layer without bias.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from onnx import TensorProto

from export.onnx_graph import Graph
from export.split_nets import Progress, embedding_net, write_nets

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Chatglm3Arch:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_groups: int  # multi_query_group_num
    head_dim: int  # kv_channels
    ffn_hidden_size: int
    vocab_size: int  # padded_vocab_size
    layernorm_eps: float = 1e-5
    rope_base: float = 10000.0

    def to_dict(self) -> dict:
        return asdict(self)


CHATGLM3_6B = Chatglm3Arch(hidden_size=4096, num_layers=28, num_heads=32, num_kv_groups=2, head_dim=128,
                           ffn_hidden_size=13696, vocab_size=65024)


def rope_tables(arch: Chatglm3Arch, positions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C, S, R) with rope(x) = x * C[pos] + (x @ R) * S[pos] over a whole head of D values:
    C / S [positions, D] hold each pair's cos / sin twice (1 / 0 on the pass-through half);
    R [D, D] maps each pair (a, b) to (-b, a)."""
    d = arch.head_dim
    pairs = d // 4  # rotary over D/2 dims: D/4 pairs
    theta = arch.rope_base ** (-np.arange(pairs, dtype=np.float64) * 2 / (d // 2))
    angles = np.outer(np.arange(positions, dtype=np.float64), theta)
    cos, sin = np.ones((positions, d)), np.zeros((positions, d))
    cos[:, 0:2 * pairs:2] = cos[:, 1:2 * pairs:2] = np.cos(angles)
    sin[:, 0:2 * pairs:2] = sin[:, 1:2 * pairs:2] = np.sin(angles)
    rotate = np.zeros((d, d), np.float32)
    rotate[2 * np.arange(pairs) + 1, 2 * np.arange(pairs)] = -1.0
    rotate[2 * np.arange(pairs), 2 * np.arange(pairs) + 1] = 1.0
    return cos.astype(np.float32), sin.astype(np.float32), rotate


class _LayerWriter:
    """The ops of one GLMBlock, sequence-first ([S,1,...]); shared by block and block_cache."""

    def __init__(self, g: Graph, arch: Chatglm3Arch, tensors: Tensors, layer: int, tables):
        self.g, self.a, self.t, self.tables = g, arch, tensors, tables
        self.prefix = f"transformer.encoder.layers.{layer}."

    def tensor(self, name: str) -> np.ndarray:
        return np.asarray(self.t[self.prefix + name], np.float32)

    def norm(self, x: str, name: str) -> str:
        return self.g.rms_norm(x, self.tensor(name + ".weight"), self.a.layernorm_eps, self.prefix + name)

    def rope(self, x: str, positions: str, length: int) -> str:
        g, d = self.g, self.a.head_dim
        cos, sin, rotate = self.tables
        c = g.reshape(g.op("Gather", g.weight(cos), positions), [length, 1, 1, d])
        s = g.reshape(g.op("Gather", g.weight(sin), positions), [length, 1, 1, d])
        return g.op("Add", g.op("Mul", x, c), g.op("Mul", g.op("MatMul", x, g.weight(rotate)), s))

    def qkv(self, x: str, positions: str, length: int) -> tuple[str, str, str]:
        g, a = self.g, self.a
        nh, kv, d = a.num_heads, a.num_kv_groups, a.head_dim
        mixed = g.linear(self.norm(x, "input_layernorm"), self.tensor("self_attention.query_key_value.weight"),
                         self.tensor("self_attention.query_key_value.bias"), self.prefix + "query_key_value")
        q = g.reshape(g.slice_last(mixed, 0, nh * d), [length, 1, nh, d])
        k = g.reshape(g.slice_last(mixed, nh * d, (nh + kv) * d), [length, 1, kv, d])
        v = g.reshape(g.slice_last(mixed, (nh + kv) * d, (nh + 2 * kv) * d), [length, 1, kv, d])
        return self.rope(q, positions, length), self.rope(k, positions, length), v

    def attention(self, q: str, keys: str, values: str, mask: str, sq: int, sk: int) -> str:
        """q [sq,1,NH,D], keys / values [sk,1,KV,D], additive mask [1,1,sq,sk] -> [sq,1,H].
        Query head h uses KV head h // (NH / KV), as ChatGLM's expand does."""
        g, a = self.g, self.a
        nh, kv, d = a.num_heads, a.num_kv_groups, a.head_dim
        groups = nh // kv
        q = g.reshape(g.transpose(g.reshape(q, [sq, kv, groups, d]), [1, 2, 0, 3]), [kv, groups * sq, d])
        k_t = g.transpose(g.reshape(keys, [sk, kv, d]), [1, 2, 0])  # [KV,D,sk]
        scores = g.op("Mul", g.op("MatMul", q, k_t), g.weight(np.array(d ** -0.5, np.float32)))
        scores = g.op("Add", g.reshape(scores, [kv, groups, sq, sk]), mask)
        probs = g.reshape(g.op("Softmax", scores, axis=-1), [kv, groups * sq, sk])
        ctx = g.op("MatMul", probs, g.transpose(g.reshape(values, [sk, kv, d]), [1, 0, 2]))  # [KV,G*sq,D]
        ctx = g.reshape(g.transpose(g.reshape(ctx, [kv, groups, sq, d]), [2, 0, 1, 3]), [sq, 1, nh * d])
        return g.matmul(ctx, self.tensor("self_attention.dense.weight").T, self.prefix + "dense")

    def mlp(self, x: str) -> str:
        g, f = self.g, self.a.ffn_hidden_size
        h = g.matmul(self.norm(x, "post_attention_layernorm"), self.tensor("mlp.dense_h_to_4h.weight").T,
                     self.prefix + "dense_h_to_4h")
        gate, up = g.slice_last(h, 0, f), g.slice_last(h, f, 2 * f)
        act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)
        return g.matmul(act, self.tensor("mlp.dense_4h_to_h.weight").T, self.prefix + "dense_4h_to_h")


def block_net(arch: Chatglm3Arch, tensors: Tensors, layer: int, tables, seq: int) -> Graph:
    g = Graph(f"block_{layer}")
    kv, d, h = arch.num_kv_groups, arch.head_dim, arch.hidden_size
    x = g.input("input_states", np.float32, [seq, 1, h])
    positions = g.input("position_ids", np.int32, [1, seq])
    mask = g.input("attention_mask", np.float32, [1, 1, seq, seq])
    w = _LayerWriter(g, arch, tensors, layer, tables)
    q, k, v = w.qkv(x, positions, seq)
    x = g.op("Add", x, w.attention(q, k, v, mask, seq, seq))
    x = g.op("Add", x, w.mlp(x))
    g.output(x, "hidden_states", np.float32, [seq, 1, h])
    g.output(k, "past_k", np.float32, [seq, 1, kv, d])
    g.output(v, "past_v", np.float32, [seq, 1, kv, d])
    return g


def block_cache_net(arch: Chatglm3Arch, tensors: Tensors, layer: int, tables, seq: int) -> Graph:
    g = Graph(f"block_cache_{layer}")
    kv, d, h = arch.num_kv_groups, arch.head_dim, arch.hidden_size
    x = g.input("input_states", np.float32, [1, 1, h])
    positions = g.input("position_ids", np.int32, [1, 1])
    mask = g.input("attention_mask", np.float32, [1, 1, 1, seq + 1])
    history_k = g.input("history_k", np.float32, [seq, 1, kv, d])
    history_v = g.input("history_v", np.float32, [seq, 1, kv, d])
    w = _LayerWriter(g, arch, tensors, layer, tables)
    q, k, v = w.qkv(x, positions, 1)
    keys = g.op("Concat", history_k, k, axis=0)  # [SEQ+1,1,KV,D]
    values = g.op("Concat", history_v, v, axis=0)
    x = g.op("Add", x, w.attention(q, keys, values, mask, 1, seq + 1))
    x = g.op("Add", x, w.mlp(x))
    shift = [g.ints([1]), g.ints([seq + 1]), g.ints([0])]  # drop the oldest row: the cache stays SEQ long
    g.output(x, "hidden_states", np.float32, [1, 1, h])
    g.output(g.op("Slice", keys, *shift), "past_k", np.float32, [seq, 1, kv, d])
    g.output(g.op("Slice", values, *shift), "past_v", np.float32, [seq, 1, kv, d])
    return g


def word_embeddings(tensors: Tensors) -> np.ndarray:
    return tensors["transformer.embedding.word_embeddings.weight"]


def lm_head_net(arch: Chatglm3Arch, tensors: Tensors, token_head: bool = True) -> Graph:
    g = Graph("lm_head")
    x = g.input("hidden_states", np.float32, [1, arch.hidden_size])
    h = g.rms_norm(x, np.asarray(tensors["transformer.encoder.final_layernorm.weight"], np.float32),
                   arch.layernorm_eps, "final_layernorm")
    logits = g.matmul(h, np.asarray(tensors["transformer.output_layer.weight"], np.float32).T, "output_layer")
    if token_head:
        token = g.op("Cast", g.op("ArgMax", logits, axis=-1, keepdims=1), to=TensorProto.INT32)
        g.output(token, "token", np.int32, [1, 1])
    else:
        g.output(logits, "logits", np.float32, [1, arch.vocab_size])
    return g


def export_chatglm3(arch: Chatglm3Arch, tensors: Tensors, out_dir: Path, seq_len: int, token_head: bool = True,
                    progress: Progress | None = None) -> list[Path]:
    """Write every net into out_dir in the vendor layout; returns the files written."""
    if arch.num_heads % arch.num_kv_groups or arch.head_dim % 4:
        raise ValueError("num_heads must be a multiple of num_kv_groups and head_dim a multiple of 4")
    tables = rope_tables(arch, seq_len)
    return write_nets(out_dir, arch.num_layers,
                      embedding=lambda: embedding_net(word_embeddings(tensors), "word_embeddings", "embedding", seq_len,
                                                      "input_embed"),
                      embedding_cache=lambda: embedding_net(word_embeddings(tensors), "word_embeddings",
                                                            "embedding_cache", 1, "input_embed"),
                      block=lambda i: block_net(arch, tensors, i, tables, seq_len),
                      block_cache=lambda i: block_cache_net(arch, tensors, i, tables, seq_len),
                      lm_head=lambda: lm_head_net(arch, tensors, token_head), progress=progress)
