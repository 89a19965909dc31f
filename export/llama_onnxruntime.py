"""The llama layer for ONNX Runtime on the CPU: block_kv_<i> written with ONNX Runtime's own
fused operators, for the CPU copies of a model (models/cpu_weights.py).

The same weights and arithmetic as export/llama.py's block_kv_<i>, which tpu-mlir compiles, in
20 nodes instead of 69 (fewer still once ONNX Runtime has fused the RMS norm and SiLU). At the
default model's size a node costs ONNX Runtime a few microseconds whatever it does, as much as
a decode step's int8 matrix products, so:
- Q, K and V come from one matrix product, and so do the MLP's gate and up projections;
- GroupQueryAttention rotates Q and K, attends and writes the new rows' K/V into the cache,
  in one node;
- SkipSimplifiedLayerNormalization adds the attention's residual and normalizes in one node.

So the CPU net has a contract of its own, the in-place cache (language/generate.py NetLayout):
- the cache is heads-first, [1, KV, SEQ, D], the layout GroupQueryAttention reads;
- the net's present K/V outputs are bound to the very tensors given as past K/V, and it writes
  the new rows at `total_sequence_length - rows`: nothing is copied into the cache and the
  history is never concatenated or transposed;
- a row's position is its index in the cache (the llama family's), so positions and the
  causal mask come from the two lengths;
- the first dimension is a batch: one row per KV slot, each with its own length, so that the
  decode steps of several conversations run as one (lm_head takes the same batch).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from export.llama import BlockWriter, LlamaArch, rope_tables
from export.onnx_graph import Graph

ORT_DOMAIN = "com.microsoft"
BATCH = "batch"
# The weights of the plain net, by the names export/llama.py gives them -> Hugging Face names.
PLAIN_MATRICES = {"q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
                  "o": "self_attn.o_proj.weight", "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight",
                  "down": "mlp.down_proj.weight"}
PLAIN_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")


def fused_block_kv_net(arch: LlamaArch, tensors, layer: int, tables, seq_len: int) -> Graph:
    g = Graph(f"block_kv_{layer}")
    nh, kv, d, rows = arch.num_heads, arch.num_kv_heads, arch.head_dim, "seq"
    x = g.input("input_states", np.float32, [BATCH, rows, arch.hidden_size])
    last_row = g.input("seqlens_k", np.int32, [BATCH])  # each slot's rows after this step - 1 (GroupQueryAttention's)
    total = g.input("total_sequence_length", np.int32, [])  # the most rows any slot has after it
    past_k = g.input("past_key", np.float32, [BATCH, kv, seq_len, d])
    past_v = g.input("past_value", np.float32, [BATCH, kv, seq_len, d])
    w, prefix = BlockWriter(g, arch, tensors, layer), f"model.layers.{layer}."

    h = g.rms_norm(x, np.asarray(tensors[prefix + PLAIN_NORMS[0]]), arch.rms_eps, prefix + PLAIN_NORMS[0])
    qkv = g.matmul(h, np.concatenate([w.w(PLAIN_MATRICES[m]) for m in "qkv"], axis=1), prefix + "qkv")
    half = d // 2
    cos, sin = g.weight(np.ascontiguousarray(tables[0][:, :half])), g.weight(np.ascontiguousarray(tables[1][:, :half]))
    attended, present_k, present_v = g.ops("GroupQueryAttention", qkv, "", "", past_k, past_v, last_row, total, cos, sin,
                                           outputs=3, domain=ORT_DOMAIN, num_heads=nh, kv_num_heads=kv, do_rotary=1)
    attended = g.matmul(attended, w.w(PLAIN_MATRICES["o"]), prefix + "o")

    norm = g.weight(np.asarray(tensors[prefix + PLAIN_NORMS[1]], np.float32), prefix + PLAIN_NORMS[1])
    h, _, _, x = g.ops("SkipSimplifiedLayerNormalization", x, attended, norm, outputs=4, domain=ORT_DOMAIN,
                       epsilon=arch.rms_eps)
    gate_up = g.matmul(h, np.concatenate([w.w(PLAIN_MATRICES["gate"]), w.w(PLAIN_MATRICES["up"])], axis=1),
                       prefix + "gate_up")
    gate, up = g.ops("Split", gate_up, g.ints([arch.intermediate_size] * 2), outputs=2, axis=-1)
    x = g.op("Add", x, w.down(gate, up))
    g.output(x, "hidden_states", np.float32, [BATCH, rows, arch.hidden_size])
    g.output(present_k, "present_key", np.float32, [BATCH, kv, seq_len, d])
    g.output(present_v, "present_value", np.float32, [BATCH, kv, seq_len, d])
    return g


def batched_lm_head(plain: Path, arch: LlamaArch) -> Graph:
    """export/llama.py's lm_head, from the weights of its file, for a batch of last rows."""
    weights = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(plain)).graph.initializer}
    g = Graph("lm_head")
    x = g.input("hidden_states", np.float32, [BATCH, 1, arch.hidden_size])
    h = g.rms_norm(x, weights["norm"], arch.rms_eps, "norm")
    g.output(g.matmul(g.reshape(h, [-1, arch.hidden_size]), weights["lm_head"], "lm_head"), "logits", np.float32,
             [BATCH, arch.vocab_size])
    return g


def fuse_block_kv(plain: Path, arch: LlamaArch) -> Graph:
    """The fused net of a plain block_kv_<i> file, from the weights it holds."""
    layer = int(Path(plain).stem.rsplit("_", 1)[1])
    model = onnx.load(str(plain))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    prefix = f"model.layers.{layer}."
    tensors = {prefix + hf: weights[prefix + name].T for name, hf in PLAIN_MATRICES.items()}  # stored [in, out]
    tensors |= {prefix + name: weights[prefix + name] for name in PLAIN_NORMS}
    history = next(i for i in model.graph.input if i.name == "history_k")
    seq_len = history.type.tensor_type.shape.dim[1].dim_value
    return fused_block_kv_net(arch, tensors, layer, rope_tables(arch, seq_len), seq_len)
