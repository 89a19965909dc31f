"""GLM v1 checkpoint (ChatGLM-6B, the language model of VisualGLM-6B) -> the split nets, as ONNX files.

Same nets, tensor names and order as export/llama.py, so language/generate.py drives them
unchanged; only the position input differs: GLM's 2-D positions are [1,2,L] (row 0: the
token's position, row 1: its "block" position, see language/families/glm.py).

  embedding        input_ids [1,L] int32                      -> hidden [1,L,H]
  embedding_cache  input_ids [1,1] int32                      -> hidden [1,1,H]
  block_<i>        input_states [1,L,H], position_ids [1,2,L], attention_mask [1,1,L,L]
                   -> hidden_states, past_k [1,L,NH,D], past_v
  block_cache_<i>  input_states [1,1,H], position_ids [1,2,1], attention_mask [1,1,1,SEQ+1],
                   history_k [1,SEQ,NH,D], history_v -> hidden_states, present_k [1,1,NH,D], present_v
  lm_head          hidden_states [1,1,H] -> logits [1,V]   (final LayerNorm + projection)

Weights come in with the Hugging Face parameter names of THUDM/chatglm-6b
(`transformer.layers.0.attention.query_key_value.weight`, ...). What one layer computes
(THUDM's modeling_chatglm.py, GLMBlock / SelfAttention / GLU):

  a   = LayerNorm_in(x)
  h   = a * alpha + Dense(Attention(a))           alpha = sqrt(2 * 28), see below
  m   = LayerNorm_post(h)
  out = m * alpha + W_4h_to_h(gelu_tanh(W_h_to_4h(m)))

- query_key_value is one Linear(H, 3H) whose output is laid out per head: [q_h | k_h | v_h]
  for h = 0..NH-1 (view [.., NH, 3D], then split); it is split into q/k/v weights here.
- alpha is sqrt(2 x 28) at any depth: num_layers=28 is a default of the published
  GLMBlock.__init__ and ChatGLMModel.get_layer never passes the real depth (GlmArch.alpha_layers).
  For ChatGLM-6B itself (28 layers) that is the same number; a 2-layer test model also uses sqrt(56).
- Rotary is 2-D: the first half of each head's q/k is rotated by row 0 of position_ids,
  the second half by row 1, each half with rotate_half over its own D/2 values and
  inv_freq = 1 / 10000^(2j / (D/2)), rounded to float16 (`inv_freq.half()`) as published.
  The angles t x inv_freq and their cos/sin are made in the dtype the published model runs
  in (GlmArch.rotary_angles): float16 by default, as under `.half()`, which is how
  VisualGLM-6B is run (such angles are up to 0.5 rad from the float32 ones past position
  1024: docs/visualglm.md); float32 as under `.float()`. The nets themselves stay float32.
- Attention scores: the module divides q by sqrt(D) * (layer_id + 1), masks with -10000,
  multiplies by (layer_id + 1) again in float32 and softmaxes: in float32 that is plain
  softmax((q / sqrt(D)).k + mask), which is what the nets compute. The per-layer
  coefficient only keeps fp16 scores in range; q is still scaled before the dot product.
  The mask value differs (-10000 * (layer+1) there, -10000 here); both give exactly zero
  weight in float32.
- GELU is the tanh approximation ("OpenAI's gelu"), not the erf one.
- LayerNorms (with bias) everywhere; lm_head has no bias and is not tied.

Size: the real embedding / embedding_cache / lm_head nets hold a 130528 x 4096 float32 table,
2,138,570,752 bytes: 1.99 GiB, at the edge of what one protobuf (one .onnx file) can hold;
Graph.save writes such nets with their weights in `<net>.onnx.data` beside them
(export/onnx_graph.py, past EXTERNAL_DATA_ABOVE = 1 GiB). The 28 x 2 block nets (0.8 GB each)
stay single files. Each net is built, saved and released before the next, so an export
holds one net's float32 weights at a time (plus whatever `tensors` itself keeps).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from export.onnx_graph import Dim, Graph
from export.split_nets import Progress, write_nets

Tensors = Mapping[str, np.ndarray]  # or any Mapping whose values np.asarray converts and that have .shape


ROTARY_ANGLES = ("float16", "float32")  # the `.half()` deployment (default), the `.float()` one


@dataclass(frozen=True)
class GlmArch:
    hidden_size: int = 4096
    num_layers: int = 28
    num_heads: int = 32
    inner_size: int = 16384
    vocab_size: int = 130528
    layernorm_eps: float = 1e-5
    max_positions: int = 2048  # max_sequence_length
    rotary_base: float = 10000.0
    rotary_angles: str = "float16"  # precision of t x inv_freq and of cos/sin: one of ROTARY_ANGLES
    alpha_layers: int = 28  # GLMBlock's num_layers default, which the published model never overrides

    def __post_init__(self) -> None:
        if self.rotary_angles not in ROTARY_ANGLES:
            raise ValueError(f"rotary_angles must be one of {', '.join(ROTARY_ANGLES)}, got {self.rotary_angles!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def alpha(self) -> float:
        """The residual scale sqrt(2 x alpha_layers), whatever num_layers is (see the module docstring)."""
        return (2 * self.alpha_layers) ** 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter the nets read, Hugging Face name -> shape, in the state dict's order."""
        h, inner = self.hidden_size, self.inner_size
        shapes: dict[str, tuple[int, ...]] = {"transformer.word_embeddings.weight": (self.vocab_size, h)}
        for i in range(self.num_layers):
            p = f"transformer.layers.{i}."
            shapes |= {p + "input_layernorm.weight": (h,), p + "input_layernorm.bias": (h,),
                       p + "attention.query_key_value.weight": (3 * h, h),
                       p + "attention.query_key_value.bias": (3 * h,),
                       p + "attention.dense.weight": (h, h), p + "attention.dense.bias": (h,),
                       p + "post_attention_layernorm.weight": (h,), p + "post_attention_layernorm.bias": (h,),
                       p + "mlp.dense_h_to_4h.weight": (inner, h), p + "mlp.dense_h_to_4h.bias": (inner,),
                       p + "mlp.dense_4h_to_h.weight": (h, inner), p + "mlp.dense_4h_to_h.bias": (h,)}
        return shapes | {"transformer.final_layernorm.weight": (h,), "transformer.final_layernorm.bias": (h,),
                         "lm_head.weight": (self.vocab_size, h)}

    @staticmethod
    def from_hf_config(config: dict) -> "GlmArch":
        """From THUDM/chatglm-6b's config.json (num_layers, inner_hidden_size, ...)."""
        if not config.get("position_encoding_2d", True):
            raise ValueError("only GLM with 2-D position encoding (ChatGLM-6B v1) is supported")
        return GlmArch(hidden_size=config["hidden_size"], num_layers=config["num_layers"],
                       num_heads=config["num_attention_heads"], inner_size=config["inner_hidden_size"],
                       vocab_size=config["vocab_size"], layernorm_eps=config.get("layernorm_epsilon", 1e-5),
                       max_positions=config.get("max_sequence_length", 2048))


def rotary_inv_freq(arch: GlmArch) -> np.ndarray:
    """RotaryEmbedding(dim = D/2)'s float32 inv_freq [D/4], before the published module's .half()."""
    dim = arch.head_dim // 2
    return (1.0 / (arch.rotary_base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))).astype(np.float32)


def rotary_tables(arch: GlmArch, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [positions, D/2] for one half of a head, laid out for rotate_half: cat(f, f).

    As the published RotaryEmbedding in the arch.rotary_angles dtype: t, each angle
    t x inv_freq (exact in float32 for float16 factors, so rounding it once is a float16
    multiply) and cos/sin rounded to that dtype. Float32 tables either way.
    """
    dtype = np.dtype(arch.rotary_angles)

    def rounded(values: np.ndarray) -> np.ndarray:
        return values.astype(dtype).astype(np.float32)

    inv_freq = rotary_inv_freq(arch).astype(np.float16).astype(np.float32)
    angles = rounded(np.outer(rounded(np.arange(positions)), inv_freq))
    angles = np.concatenate([angles, angles], axis=-1).astype(np.float64)
    return rounded(np.cos(angles)), rounded(np.sin(angles))


def split_query_key_value(weight: np.ndarray, bias: np.ndarray, num_heads: int
                          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fused, per-head interleaved [3H, H] projection -> (W [H_out, H], b) for q, k and v."""
    weight, bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
    d = weight.shape[0] // (3 * num_heads)
    w = weight.reshape(num_heads, 3, d, weight.shape[1])
    b = bias.reshape(num_heads, 3, d)
    return [(w[:, j].reshape(num_heads * d, -1), b[:, j].reshape(-1)) for j in range(3)]


class _BlockWriter:
    """Writes the ops of one GLM layer into a graph; shared by prefill and decode."""

    def __init__(self, g: Graph, arch: GlmArch, tensors: Tensors, layer: int, tables):
        self.g, self.arch, self.t, self.tables = g, arch, tensors, tables
        self.prefix = f"transformer.layers.{layer}."

    def tensor(self, name: str) -> np.ndarray:
        return np.asarray(self.t[self.prefix + name], np.float32)

    def layer_norm(self, x: str, name: str) -> str:
        return self.g.layer_norm(x, self.tensor(name + ".weight"), self.tensor(name + ".bias"),
                                 self.arch.layernorm_eps, self.prefix + name)

    def linear(self, x: str, name: str) -> str:
        return self.g.linear(x, self.tensor(name + ".weight"), self.tensor(name + ".bias"), self.prefix + name)

    def rotary(self, positions: str) -> tuple[str, str]:
        """position_ids [1,2,L] -> cos, sin [1,L,1,D]: row 0's table for the first half of D,
        row 1's for the second, broadcast over heads."""
        g, d = self.g, self.arch.head_dim
        out = []
        for table in self.tables:
            rows = g.op("Gather", g.weight(table), positions)  # [1,2,L,D/2]
            out.append(g.reshape(g.transpose(rows, [0, 2, 1, 3]), [1, -1, 1, d]))
        return out[0], out[1]

    def rotate(self, x: str, cos: str, sin: str) -> str:
        """x [1,L,NH,D] = [a b | c d] (quarters) -> x*cos + [-b a | -d c]*sin."""
        g, q = self.g, self.arch.head_dim // 4
        a, b, c, d = (g.slice_last(x, i * q, (i + 1) * q) for i in range(4))
        rotated = g.op("Concat", g.op("Neg", b), a, g.op("Neg", d), c, axis=-1)
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))

    def qkv(self, x: str, positions: str) -> tuple[str, str, str, str]:
        """-> LayerNorm_in(x) (the residual branch), q, k (rotated), v, each [1,L,NH,D]."""
        g, a = self.g, self.arch
        normed = self.layer_norm(x, "input_layernorm")
        parts = split_query_key_value(self.tensor("attention.query_key_value.weight"),
                                      self.tensor("attention.query_key_value.bias"), a.num_heads)
        q, k, v = (g.reshape(g.linear(normed, w, b, f"{self.prefix}attention.{name}"),
                             [1, -1, a.num_heads, a.head_dim])
                   for (w, b), name in zip(parts, ("query", "key", "value")))
        cos, sin = self.rotary(positions)
        return normed, self.rotate(q, cos, sin), self.rotate(k, cos, sin), v

    def scaled(self, q: str) -> str:
        """q / sqrt(D), before any dot product, as the published module scales q (there further
        divided by layer + 1, undone in float32 after the mask): raw q.k can overflow float16."""
        return self.g.op("Mul", q, self.g.weight(np.array(self.arch.head_dim ** -0.5, np.float32)))

    def attention(self, q: str, k: str, v: str, mask: str) -> str:
        """Full attention over the prompt: q/k/v [1,L,NH,D], mask [1,1,L,L] -> [1,L,H]."""
        g = self.g
        q_t, k_t = g.transpose(self.scaled(q), [0, 2, 1, 3]), g.transpose(k, [0, 2, 3, 1])
        scores = g.op("MatMul", q_t, k_t)  # [1,NH,L,L]
        probs = g.op("Softmax", g.op("Add", scores, mask), axis=-1)
        ctx = g.op("MatMul", probs, g.transpose(v, [0, 2, 1, 3]))  # [1,NH,L,D]
        ctx = g.reshape(g.transpose(ctx, [0, 2, 1, 3]), [1, -1, self.arch.hidden_size])
        return self.linear(ctx, "attention.dense")

    def attention_over_cache(self, q: str, k: str, v: str, history_k: str, history_v: str, mask: str) -> str:
        """One query token against the cache [1,SEQ,NH,D] and itself: the prefill's attention over
        the cache with the new row appended.

        Measured at the real size (bm1684x, W4BF16, SEQ 1024), this MatMul form is estimated at
        2.77 ms per layer against 3.51 ms for per-head Mul + ReduceSum over the cache in place,
        which writes and re-reads a [SEQ, NH, D] product. It uses no weight of its own, so the
        decode net's coefficients stay those of the prefill net (one copy per layer)."""
        g = self.g
        return self.attention(q, g.op("Concat", history_k, k, axis=1), g.op("Concat", history_v, v, axis=1), mask)

    def residual(self, branch: str, update: str) -> str:
        """GLM's residual: the LayerNorm output (not the layer input) times alpha, plus the update."""
        g = self.g
        return g.op("Add", g.op("Mul", branch, g.weight(np.array(self.arch.alpha, np.float32))), update)

    def mlp_block(self, h: str) -> str:
        normed = self.layer_norm(h, "post_attention_layernorm")
        act = gelu_tanh(self.g, self.linear(normed, "mlp.dense_h_to_4h"))
        return self.residual(normed, self.linear(act, "mlp.dense_4h_to_h"))


def gelu_tanh(g: Graph, x: str) -> str:
    """0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))), ChatGLM's gelu_impl."""
    def const(value: float) -> str:
        return g.weight(np.array(value, np.float32))

    inner = g.op("Mul", g.op("Mul", x, const(0.7978845608028654)),
                 g.op("Add", const(1.0), g.op("Mul", g.op("Mul", x, x), const(0.044715))))
    return g.op("Mul", g.op("Mul", x, const(0.5)), g.op("Add", const(1.0), g.op("Tanh", inner)))


def block_net(arch: GlmArch, tensors: Tensors, layer: int, tables, prefill_len: Dim = "seq") -> Graph:
    g = Graph(f"block_{layer}")
    L, nh, d = prefill_len, arch.num_heads, arch.head_dim
    x = g.input("input_states", np.float32, [1, L, arch.hidden_size])
    pos = g.input("position_ids", np.int32, [1, 2, L])
    mask = g.input("attention_mask", np.float32, [1, 1, L, L])
    w = _BlockWriter(g, arch, tensors, layer, tables)
    normed, q, k, v = w.qkv(x, pos)
    h = w.residual(normed, w.attention(q, k, v, mask))
    g.output(w.mlp_block(h), "hidden_states", np.float32, [1, L, arch.hidden_size])
    g.output(k, "past_k", np.float32, [1, L, nh, d])
    g.output(v, "past_v", np.float32, [1, L, nh, d])
    return g


def block_cache_net(arch: GlmArch, tensors: Tensors, layer: int, tables, seq_len: int) -> Graph:
    g = Graph(f"block_cache_{layer}")
    nh, d = arch.num_heads, arch.head_dim
    x = g.input("input_states", np.float32, [1, 1, arch.hidden_size])
    pos = g.input("position_ids", np.int32, [1, 2, 1])
    mask = g.input("attention_mask", np.float32, [1, 1, 1, seq_len + 1])
    hk = g.input("history_k", np.float32, [1, seq_len, nh, d])
    hv = g.input("history_v", np.float32, [1, seq_len, nh, d])
    w = _BlockWriter(g, arch, tensors, layer, tables)
    normed, q, k, v = w.qkv(x, pos)
    h = w.residual(normed, w.attention_over_cache(q, k, v, hk, hv, mask))
    g.output(w.mlp_block(h), "hidden_states", np.float32, [1, 1, arch.hidden_size])
    g.output(k, "present_k", np.float32, [1, 1, nh, d])
    g.output(v, "present_v", np.float32, [1, 1, nh, d])
    return g


def lm_head_net(arch: GlmArch, tensors: Tensors) -> Graph:
    g = Graph("lm_head")
    x = g.input("hidden_states", np.float32, [1, 1, arch.hidden_size])
    h = g.layer_norm(x, np.asarray(tensors["transformer.final_layernorm.weight"]),
                     np.asarray(tensors["transformer.final_layernorm.bias"]), arch.layernorm_eps,
                     "transformer.final_layernorm")
    flat = g.reshape(h, [1, arch.hidden_size])
    # Stored [H, V]; the [V, H] float32 array is released as soon as the transposed copy is made.
    logits = g.op("MatMul", flat, g.weight(np.asarray(tensors["lm_head.weight"], np.float32).T, "lm_head"))
    g.output(logits, "logits", np.float32, [1, arch.vocab_size])
    return g


def check_tensors(arch: GlmArch, tensors: Tensors) -> None:
    """Every parameter the nets need, with the shape the architecture says."""
    expected = arch.expected_shapes()
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise KeyError(f"the checkpoint lacks {len(missing)} GLM parameter(s), e.g. {', '.join(missing[:3])}")
    wrong = [f"{name} {tuple(np.shape(tensors[name]))} != {shape}" for name, shape in expected.items()
             if tuple(np.shape(tensors[name])) != shape]
    if wrong:
        raise ValueError("checkpoint and architecture disagree: " + "; ".join(wrong[:3]))
    if arch.head_dim % 4:
        raise ValueError(f"2-D rotary needs a head size divisible by 4, got {arch.head_dim}")


def export_glm(arch: GlmArch, tensors: Tensors, out_dir: Path, seq_len: int,
               progress: Progress | None = None, layers: int | None = None) -> list[Path]:
    """Write every net of the model into out_dir; returns the .onnx files written (a net past
    onnx_graph.EXTERNAL_DATA_ABOVE bytes of weights also gets its `.onnx.data` file).
    `layers`: write only the first ones (a probe of the model's size, not a runnable model)."""
    if seq_len > arch.max_positions:
        raise ValueError(f"seq_len {seq_len} exceeds the model's {arch.max_positions} positions")
    check_tensors(arch, tensors)
    tables = rotary_tables(arch, seq_len)
    return write_nets(out_dir, min(layers or arch.num_layers, arch.num_layers),
                      embedding_table=lambda: tensors["transformer.word_embeddings.weight"],
                      block=lambda i: block_net(arch, tensors, i, tables),
                      block_cache=lambda i: block_cache_net(arch, tensors, i, tables, seq_len),
                      lm_head=lambda: lm_head_net(arch, tensors), progress=progress)
