"""The llama layer for ONNX Runtime on the CPU: block_kv_<i> written with ONNX Runtime's own
fused operators, for the CPU copies of a model (models/cpu_weights.py).

The same inputs, outputs, weights and attention as export/llama.py's block_kv_<i>, which
tpu-mlir compiles, in fewer and larger nodes (35 against 54 once ONNX Runtime has optimized
either). At the default model's size a node costs ONNX Runtime a few microseconds whatever it
does, as much as a decode step's int8 matrix products, so:
- RotaryEmbedding (com.microsoft) replaces the rotation's gathers, slices, negation and concat;
- Q, K and V come from one matrix product, and so do the MLP's gate and up projections;
- SkipSimplifiedLayerNormalization adds the attention's residual and normalizes in one node.
ONNX Runtime already fuses the plain net's RMS norms and SiLU by itself.

GroupQueryAttention was tried and left out: it takes the cache heads-first, so the history is
transposed at every step, and over 500 cached rows and more it was slower than this attention.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from export.llama import BlockWriter, LlamaArch, rope_tables
from export.onnx_graph import Graph

ORT_DOMAIN = "com.microsoft"
# The weights of the plain net, by the names export/llama.py gives them -> Hugging Face names.
PLAIN_MATRICES = {"q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
                  "o": "self_attn.o_proj.weight", "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight",
                  "down": "mlp.down_proj.weight"}
PLAIN_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")


def fused_block_kv_net(arch: LlamaArch, tensors, layer: int, tables, seq_len: int) -> Graph:
    g = Graph(f"block_kv_{layer}")
    nh, kv, d, rows = arch.num_heads, arch.num_kv_heads, arch.head_dim, "seq"
    x = g.input("input_states", np.float32, [1, rows, arch.hidden_size])
    positions = g.op("Cast", g.input("position_ids", np.int32, [1, rows]), to=TensorProto.INT64)
    mask = g.input("attention_mask", np.float32, [1, 1, rows, "seq_and_new"])
    history_k = g.input("history_k", np.float32, [1, seq_len, kv, d])
    history_v = g.input("history_v", np.float32, [1, seq_len, kv, d])
    w, prefix = BlockWriter(g, arch, tensors, layer), f"model.layers.{layer}."

    h = g.rms_norm(x, np.asarray(tensors[prefix + PLAIN_NORMS[0]]), arch.rms_eps, prefix + PLAIN_NORMS[0])
    qkv = g.matmul(h, np.concatenate([w.w(PLAIN_MATRICES[m]) for m in "qkv"], axis=1), prefix + "qkv")
    q, k, v = g.ops("Split", qkv, g.ints([nh * d, kv * d, kv * d]), outputs=3, axis=-1)
    half = d // 2
    cos, sin = g.weight(np.ascontiguousarray(tables[0][:, :half])), g.weight(np.ascontiguousarray(tables[1][:, :half]))
    q = g.op("RotaryEmbedding", q, positions, cos, sin, domain=ORT_DOMAIN, num_heads=nh, interleaved=0)
    k = g.reshape(g.op("RotaryEmbedding", k, positions, cos, sin, domain=ORT_DOMAIN, num_heads=kv, interleaved=0),
                  [1, -1, kv, d])
    v = g.reshape(v, [1, -1, kv, d])
    attended = w.attention(g.reshape(q, [1, -1, nh, d]), g.op("Concat", history_k, k, axis=1),
                           g.op("Concat", history_v, v, axis=1), mask)

    norm = g.weight(np.asarray(tensors[prefix + PLAIN_NORMS[1]], np.float32), prefix + PLAIN_NORMS[1])
    h, _, _, x = g.ops("SkipSimplifiedLayerNormalization", x, attended, norm, outputs=4, domain=ORT_DOMAIN,
                       epsilon=arch.rms_eps)
    gate_up = g.matmul(h, np.concatenate([w.w(PLAIN_MATRICES["gate"]), w.w(PLAIN_MATRICES["up"])], axis=1),
                       prefix + "gate_up")
    gate, up = g.ops("Split", gate_up, g.ints([arch.intermediate_size] * 2), outputs=2, axis=-1)
    x = g.op("Add", x, w.down(gate, up))
    g.output(x, "hidden_states", np.float32, [1, rows, arch.hidden_size])
    g.output(k, "past_k", np.float32, [1, rows, kv, d])
    g.output(v, "past_v", np.float32, [1, rows, kv, d])
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
