"""Llama-architecture checkpoint -> the split nets of the contract, as ONNX files.

Weights come in with Hugging Face parameter names (`model.layers.0.self_attn.q_proj.weight`,
...), whatever file they were read from. Net and tensor names follow the vendor
(LLM-TPU) conventions so the same files compile with tpu-mlir:

  embedding        input_ids [1,L] int32                      -> hidden [1,L,H]
  embedding_cache  input_ids [1,1] int32                      -> hidden [1,1,H]
  block_<i>        input_states [1,L,H], position_ids [1,L], attention_mask [1,1,L,L]
                   -> hidden_states, past_k [1,L,KV,D], past_v
  block_cache_<i>  input_states [1,1,H], position_ids [1,1], attention_mask [1,1,1,SEQ+1],
                   history_k [1,SEQ,KV,D], history_v -> hidden_states, present_k [1,1,KV,D], present_v
  block_kv_<i>     input_states [1,L,H], position_ids [1,L], attention_mask [1,1,L,SEQ+L],
                   history_k [1,SEQ,KV,D], history_v -> hidden_states, past_k [1,L,KV,D], past_v
                   (a prefill after cached rows: a follow-up's new tokens, or a long prompt's
                   next chunk; tpu-mlir's `block_kv` phase of --use_history_kv)
  lm_head          hidden_states [1,1,H] -> logits [1,V]

L is dynamic in the ONNX files (`prefill_len` fixes it for a static compile); SEQ, the KV
cache length, is fixed here and read back from the files by the runtime.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from export.onnx_graph import Dim, Graph
from export.split_nets import Progress, write_nets

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class LlamaArch:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    max_positions: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


def rope_tables(arch: LlamaArch, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin per position, laid out as HF's rotate_half expects: [pos, D] = cat(f, f)."""
    half = arch.head_dim // 2
    inv_freq = 1.0 / (arch.rope_theta ** (np.arange(half, dtype=np.float64) * 2 / arch.head_dim))
    angles = np.outer(np.arange(positions, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _weight_in_out(tensors: Tensors, name: str) -> np.ndarray:
    return np.asarray(tensors[name], dtype=np.float32).T


class BlockWriter:
    """Writes the ops of one decoder layer into a graph; shared by prefill and decode."""

    def __init__(self, g: Graph, arch: LlamaArch, tensors: Tensors, layer: int):
        self.g, self.arch, self.t = g, arch, tensors
        self.prefix = f"model.layers.{layer}."

    def w(self, name: str) -> np.ndarray:
        return _weight_in_out(self.t, self.prefix + name)

    def rope(self, x: str, positions: str, cos: np.ndarray, sin: np.ndarray) -> str:
        g, half = self.g, self.arch.head_dim // 2
        # [1,L] positions -> [1,L,1,D] tables, broadcast over heads.
        c = g.op("Unsqueeze", g.op("Gather", g.weight(cos), positions), g.ints([2]))
        s = g.op("Unsqueeze", g.op("Gather", g.weight(sin), positions), g.ints([2]))
        x1, x2 = g.slice_last(x, 0, half), g.slice_last(x, half, 2 * half)
        rotated = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
        return g.op("Add", g.op("Mul", x, c), g.op("Mul", rotated, s))

    def qkv(self, x: str, positions: str, tables) -> tuple[str, str, str]:
        g, a = self.g, self.arch
        h = g.rms_norm(x, np.asarray(self.t[self.prefix + "input_layernorm.weight"]), a.rms_eps,
                       self.prefix + "input_layernorm.weight")
        q = g.reshape(g.matmul(h, self.w("self_attn.q_proj.weight"), self.prefix + "q"), [1, -1, a.num_heads, a.head_dim])
        k = g.reshape(g.matmul(h, self.w("self_attn.k_proj.weight"), self.prefix + "k"), [1, -1, a.num_kv_heads, a.head_dim])
        v = g.reshape(g.matmul(h, self.w("self_attn.v_proj.weight"), self.prefix + "v"), [1, -1, a.num_kv_heads, a.head_dim])
        return self.rope(q, positions, *tables), self.rope(k, positions, *tables), v

    def attention(self, q: str, keys: str, values: str, mask: str) -> str:
        """q [1,L,NH,D]; keys/values [1,S,KV,D]; mask broadcastable to [1,NH,L,S] -> [1,L,H].

        Query heads are grouped under their KV head ([1,KV,G*L,D]) so the cache is
        never repeated per query head.
        """
        g, a = self.g, self.arch
        groups = a.num_heads // a.num_kv_heads
        q = g.transpose(g.reshape(q, [1, -1, a.num_kv_heads, groups, a.head_dim]), [0, 2, 3, 1, 4])
        q = g.reshape(q, [1, a.num_kv_heads, -1, a.head_dim])
        k_t = g.transpose(keys, [0, 2, 3, 1])  # [1,KV,D,S]
        scores = g.op("MatMul", q, k_t)
        scores = g.op("Mul", scores, g.weight(np.array(a.head_dim ** -0.5, np.float32)))
        scores = g.op("Add", g.reshape(scores, [1, a.num_heads, -1, 0]), mask)
        probs = g.reshape(g.op("Softmax", scores, axis=-1), [1, a.num_kv_heads, -1, 0])
        ctx = g.op("MatMul", probs, g.transpose(values, [0, 2, 1, 3]))  # [1,KV,G*L,D]
        ctx = g.transpose(g.reshape(ctx, [1, a.num_kv_heads, groups, -1, a.head_dim]), [0, 3, 1, 2, 4])
        ctx = g.reshape(ctx, [1, -1, a.hidden_size])
        return g.matmul(ctx, self.w("self_attn.o_proj.weight"), self.prefix + "o")

    def attention_over_cache(self, q: str, k: str, v: str, history_k: str, history_v: str, mask: str) -> str:
        """One query token against the cache plus itself, without copying the cache.

        The cache stays [SEQ*KV, D] / [SEQ, KV*D] (free reshapes of [1,SEQ,KV,D]); every query
        head is scored against every KV head and `_own_group` keeps its own group. That costs
        KV x the (tiny) attention arithmetic but no transpose or concat of SEQ rows. Only shape
        ops do the grouping, so the net holds the same constants as the prefill net and the
        compiled model stores one copy of the layer for both.
        """
        g, a = self.g, self.arch
        nh, kv, d, groups = a.num_heads, a.num_kv_heads, a.head_dim, a.num_heads // a.num_kv_heads
        q = g.reshape(q, [nh, d])
        # Scores against the history: [SEQ*KV, D] @ [D, NH] -> each head's own group -> [NH, SEQ].
        s_hist = g.op("MatMul", g.reshape(history_k, [-1, d]), g.transpose(q, [1, 0]))
        s_hist = _own_group(g, g.reshape(s_hist, [-1, kv * nh]), kv, 1, groups)  # [SEQ, KV, G]
        s_hist = g.transpose(g.reshape(s_hist, [-1, nh]), [1, 0])
        # Score against the current token: its K, repeated per query head.
        s_cur = g.op("ReduceSum", g.op("Mul", q, self.per_head(k)), g.ints([-1]), keepdims=1)
        scores = g.op("Mul", g.op("Concat", s_hist, s_cur, axis=-1), g.weight(np.array(d ** -0.5, np.float32)))
        probs = g.op("Softmax", g.op("Add", scores, g.reshape(mask, [1, -1])), axis=-1)
        p_hist, p_cur = g.slice_last(probs, 0, -1), g.slice_last(probs, -1, 2 ** 31 - 1)
        # Context: [NH, SEQ] @ [SEQ, KV*D] -> each head's own group -> [NH, D], plus the current V.
        ctx = g.op("MatMul", p_hist, g.reshape(history_v, [-1, kv * d]))
        ctx = g.reshape(_own_group(g, g.reshape(ctx, [1, -1]), kv, groups, d), [nh, d])
        ctx = g.op("Add", ctx, g.op("Mul", p_cur, self.per_head(v)))
        return g.matmul(g.reshape(ctx, [1, 1, a.hidden_size]), self.w("self_attn.o_proj.weight"), self.prefix + "o")

    def per_head(self, x: str) -> str:
        """The current token's K or V [1,1,KV,D] -> [NH,D], each KV head repeated for its group."""
        g, a = self.g, self.arch
        kv, d = a.num_kv_heads, a.head_dim
        return g.reshape(g.op("Expand", g.reshape(x, [kv, 1, d]), g.ints([kv, a.num_heads // kv, d])),
                         [a.num_heads, d])

    def mlp(self, x: str) -> str:
        g = self.g
        h = g.rms_norm(x, np.asarray(self.t[self.prefix + "post_attention_layernorm.weight"]), self.arch.rms_eps,
                       self.prefix + "post_attention_layernorm.weight")
        gate = g.matmul(h, self.w("mlp.gate_proj.weight"), self.prefix + "gate")
        up = g.matmul(h, self.w("mlp.up_proj.weight"), self.prefix + "up")
        return self.down(gate, up)

    def down(self, gate: str, up: str) -> str:
        """The MLP's output from its gate and up projections: down(silu(gate) * up)."""
        g = self.g
        act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)
        return g.matmul(act, self.w("mlp.down_proj.weight"), self.prefix + "down")


def _own_group(g: Graph, x: str, kv: int, inner: int, width: int) -> str:
    """x [R, KV*inner*KV*width], each row a [KV, inner, KV, width] array -> [R, KV*inner, width]:
    the entries whose two KV indices agree (a block diagonal), taken with shape ops only, so
    no index or mask constant enters the net.

    Padding a row by KV*width puts entry (j, i, j, :) at offset i*KV*width of row j of a
    [KV, (inner*KV + 1)*width] view: slicing those rows keeps exactly the wanted entries.
    """
    span = inner * kv * width
    padded = g.op("Pad", x, g.ints([0, 0, 0, kv * width]))
    rows = g.reshape(padded, [0, kv, span + width])
    if inner > 1:
        rows = g.reshape(g.slice_last(rows, 0, span), [0, kv * inner, kv * width])
    return g.slice_last(rows, 0, width)


def block_net(arch: LlamaArch, tensors: Tensors, layer: int, tables, prefill_len: Dim = "seq",
              history_len: int | None = None) -> Graph:
    """block_<i>; with `history_len` (the cache's rows) block_kv_<i>, whose new rows also attend to
    `history_k`/`history_v` as the mask says: the same ops and weights, with the history
    concatenated in front of the new K/V."""
    g = Graph(f"block_{layer}" if history_len is None else f"block_kv_{layer}")
    L, kv, d = prefill_len, arch.num_kv_heads, arch.head_dim
    x = g.input("input_states", np.float32, [1, L, arch.hidden_size])
    pos = g.input("position_ids", np.int32, [1, L])
    seen: Dim = L if history_len is None else history_len + L if isinstance(L, int) else "seq_and_new"
    mask = g.input("attention_mask", np.float32, [1, 1, L, seen])
    if history_len is not None:
        hk = g.input("history_k", np.float32, [1, history_len, kv, d])
        hv = g.input("history_v", np.float32, [1, history_len, kv, d])
    w = BlockWriter(g, arch, tensors, layer)
    q, k, v = w.qkv(x, pos, tables)
    keys, values = (k, v) if history_len is None else (g.op("Concat", hk, k, axis=1), g.op("Concat", hv, v, axis=1))
    x = g.op("Add", x, w.attention(q, keys, values, mask))
    x = g.op("Add", x, w.mlp(x))
    g.output(x, "hidden_states", np.float32, [1, L, arch.hidden_size])
    g.output(k, "past_k", np.float32, [1, L, kv, d])
    g.output(v, "past_v", np.float32, [1, L, kv, d])
    return g


def block_cache_net(arch: LlamaArch, tensors: Tensors, layer: int, tables, seq_len: int) -> Graph:
    g = Graph(f"block_cache_{layer}")
    kv, d = arch.num_kv_heads, arch.head_dim
    x = g.input("input_states", np.float32, [1, 1, arch.hidden_size])
    pos = g.input("position_ids", np.int32, [1, 1])
    mask = g.input("attention_mask", np.float32, [1, 1, 1, seq_len + 1])
    hk = g.input("history_k", np.float32, [1, seq_len, kv, d])
    hv = g.input("history_v", np.float32, [1, seq_len, kv, d])
    w = BlockWriter(g, arch, tensors, layer)
    q, k, v = w.qkv(x, pos, tables)
    x = g.op("Add", x, w.attention_over_cache(q, k, v, hk, hv, mask))
    x = g.op("Add", x, w.mlp(x))
    g.output(x, "hidden_states", np.float32, [1, 1, arch.hidden_size])
    g.output(k, "present_k", np.float32, [1, 1, kv, d])
    g.output(v, "present_v", np.float32, [1, 1, kv, d])
    return g


def lm_head_net(arch: LlamaArch, tensors: Tensors) -> Graph:
    g = Graph("lm_head")
    x = g.input("hidden_states", np.float32, [1, 1, arch.hidden_size])
    h = g.rms_norm(x, np.asarray(tensors["model.norm.weight"]), arch.rms_eps, "norm")
    head = tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"])  # tied when absent
    logits = g.op("MatMul", g.reshape(h, [1, arch.hidden_size]), g.weight(np.asarray(head, np.float32).T, "lm_head"))
    g.output(logits, "logits", np.float32, [1, arch.vocab_size])
    return g


def export_llama(arch: LlamaArch, tensors: Tensors, out_dir: Path, seq_len: int,
                 progress: Progress | None = None) -> list[Path]:
    """Write every net of the model into out_dir; returns the files written."""
    if seq_len > arch.max_positions:
        raise ValueError(f"seq_len {seq_len} exceeds the model's {arch.max_positions} positions")
    tables = rope_tables(arch, seq_len)
    return write_nets(out_dir, arch.num_layers,
                      embedding_table=lambda: tensors["model.embed_tokens.weight"],
                      block=lambda i: block_net(arch, tensors, i, tables),
                      block_cache=lambda i: block_cache_net(arch, tensors, i, tables, seq_len),
                      block_kv=lambda i: block_net(arch, tensors, i, tables, history_len=seq_len),
                      lm_head=lambda: lm_head_net(arch, tensors), progress=progress)
