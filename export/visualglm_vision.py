"""VisualGLM-6B's image encoder (EVA ViT-g + BLIP-2 Q-Former + glm_proj) -> the ONNX `vision` net.

  vision   pixel_values [1,3,224,224] float32 (bicubic 224 px, CLIP mean/std: vision/preprocess.py)
           -> image_embeds [1,32,4096]: the rows that replace the 32 image placeholders in the prompt

Same input/output names as export/vision.py, so vision/encoder.py runs either net.

Where the names and the math come from (public code, read, not copied):
- THUDM/VisualGLM-6B model/blip2.py (`BLIP2`, `EVAViT`, `LNFinalyMixin`, `QFormer`, glm_proj) and
  model_config.json (eva_args / qformer_args). The Hugging Face port's modeling_chatglm.py (copy
  in samfunmula/visualGLM) builds `BLIP2(config.eva_config, config.qformer_config)` from its
  visual.py as `ChatGLMForConditionalGenerationWithImage.image_encoder`, a sibling of
  `transformer`, so the HF checkpoint's names are `image_encoder.<name>` (not
  `transformer.image_encoder.`); the SAT checkpoint's are `mixins.eva.model.<name>` (as a
  MindSpore converter of that checkpoint lists them). Those two, `transformer.image_encoder.<name>`
  and bare `<name>` are all accepted (PREFIXES).
- THUDM/SwissArmyTransformer sat/model/transformer.py, sat/transformer_defaults.py
  (layer_forward_default, attention / cross_attention defaults), sat/model/official/vit_model.py.
- A printout of the built SAT model (bokunopica/VisualGLM-6B visualglm_structure.ipynb) confirms
  every module and LayerNorm eps below.

Parameters (W = 1408, M = 6144, N = 256 patches, Wq = 768, Mq = 3072, Q = 32, H = 4096):

  vit.mixins.patch_embedding.proj.weight            [W,3,14,14]  + .bias [W]     Conv 14x14 stride 14
  vit.transformer.word_embeddings.weight            [1,W]        the class token (vocab_size 1)
  vit.transformer.position_embeddings.weight        [1+N,W]      learned, added to [cls, patches]
  vit.transformer.layers.{0..38}.input_layernorm.{weight,bias}              [W]   eps 1e-6
                                .attention.query_key_value.{weight,bias}    [3W,W], [3W]
                                .attention.dense.{weight,bias}              [W,W], [W]
                                .post_attention_layernorm.{weight,bias}     [W]   eps 1e-6
                                .mlp.dense_h_to_4h.{weight,bias}            [M,W], [M]
                                .mlp.dense_4h_to_h.{weight,bias}            [W,M], [W]
  vit.mixins.cls.ln_vision.{weight,bias}            [W]          nn.LayerNorm default eps 1e-5
  qformer.transformer.word_embeddings.weight        [Q,Wq]       the 32 learned queries
  qformer.transformer.layers.{0..11}.input_layernorm / post_attention_layernorm   [Wq] eps 1e-12
                                    .attention.query_key_value [3Wq,Wq], .attention.dense [Wq,Wq]
                                    .mlp.dense_h_to_4h [Mq,Wq], .mlp.dense_4h_to_h [Wq,Mq]
       even layers only (is_decoder = [True, False] * 6, cross_attn_hidden_size = W):
                                    .cross_attention.query [Wq,Wq], .cross_attention.key_value [2Wq,W],
                                    .cross_attention.dense [Wq,Wq], .post_cross_attention_layernorm [Wq]
  qformer.transformer.final_layernorm.{weight,bias} [Wq]         eps 1e-12
  glm_proj.{weight,bias}                            [H,Wq], [H]
  (every Linear has a bias)

What it computes (SAT BaseTransformer; the masks are [[1.]], i.e. full attention, no dropout):

  ViT (layernorm_order "pre", use_final_layernorm False, exact erf GELU: vit_model.py's F.gelu)
    x = [cls ; Conv(pixels) flattened]  + position_embeddings          [1,257,W]
    per layer: x = x + Dense(Attn(LN_in(x)));  x = x + W_4h_to_h(gelu(W_h_to_4h(LN_post(x))))
    image = ln_vision(x)                                               [1,257,W]
  Q-Former (layernorm_order "post", activation F.gelu, no position embeddings)
    h = queries                                                        [1,Q,Wq]
    per layer i:  a = LN_in(h);  m = LN_post(a + Dense(SelfAttn(a)))
                  if i is even:  m = LN_cross(m + Dense_c(CrossAttn(Query(m), KeyValue(image))))
                  h = m + W_4h_to_h(gelu(W_h_to_4h(m)))
    out = final_layernorm(h)
  image_embeds = glm_proj(out)                                         [1,Q,H]

- query_key_value's output is [q | k | v] in three contiguous thirds (split_tensor_along_last_dim
  with 3 parts), key_value's is [k | v]; heads are contiguous d-wide slices of each
  (d = 88 in the ViT, 64 in the Q-Former); scores are (q / sqrt(d)) . k, softmax over keys.
- SAT's "post" order is BLIP-2's BERT with each LayerNorm moved to the next layer's input:
  layer 0's input_layernorm is BERT's embedding LayerNorm on the queries, layer i's is layer
  i-1's output LayerNorm, final_layernorm is the last layer's.

What is used at inference: every parameter listed above. Not in the checkpoint at all (so
nothing to drop): EVA-CLIP-g's 40th block and its head (BLIP-2 builds the ViT with 39 layers
and no final norm: use_final_layernorm False), the ViT's ClsMixin classifier (del_mixin("cls")),
the Q-Former's position embeddings (set to None), and everything of BLIP-2's Q-Former that
serves text (text embeddings, the text FFN `intermediate`/`output`, ITC/ITM heads). Anything
else found under the prefixes is reported by `check_vision_checkpoint` as unused and ignored.
Layer 0's self-attention half depends only on the queries, so ONNX Runtime folds it into a
constant at session start.

Weights are converted to float32 (the HF checkpoint is float16). The real net holds ~1.1 B
parameters (4.4 GB in float32), past protobuf's 2 GB, so it is written with
export/onnx_graph.Graph.streamed: every weight of 1 KiB or more goes to `vision.onnx.data` next
to `vision.onnx` as it is added (ONNX external data, one file), one float32 weight in memory at a
time. The tiny test nets are written the same way, so the tests exercise that path.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from export.onnx_graph import Graph

Tensors = Mapping[str, Any]  # name -> np.ndarray (any float dtype), or anything np.asarray accepts

# Checked in this order; bare names (vit..., qformer..., glm_proj...) are accepted too.
PREFIXES = ("transformer.image_encoder.", "image_encoder.", "mixins.eva.model.")
_ROOTS = ("vit.", "qformer.", "glm_proj.")


class VisionCheckpointError(ValueError):
    """The checkpoint's vision parameters are missing or do not have the expected shapes."""


@dataclass(frozen=True)
class VisualGlmVisionConfig:
    """VisualGLM-6B's image encoder; defaults are the published model (model_config.json)."""
    image_size: int = 224
    patch_size: int = 14
    vit_width: int = 1408
    vit_layers: int = 39
    vit_heads: int = 16
    vit_mlp: int = 6144
    vit_eps: float = 1e-6
    ln_vision_eps: float = 1e-5
    qformer_width: int = 768
    qformer_layers: int = 12
    qformer_heads: int = 12
    qformer_mlp: int = 3072
    qformer_eps: float = 1e-12
    cross_attention_freq: int = 2  # layers 0, 2, 4, ... cross-attend to the image
    num_queries: int = 32
    lm_hidden: int = 4096

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def cross_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.qformer_layers) if i % self.cross_attention_freq == 0)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.vit_width % self.vit_heads:
            problems.append(f"vit_width {self.vit_width} is not divisible by vit_heads {self.vit_heads}")
        if self.qformer_width % self.qformer_heads:
            problems.append(f"qformer_width {self.qformer_width} is not divisible by "
                            f"qformer_heads {self.qformer_heads}")
        if self.cross_attention_freq < 1:
            problems.append(f"cross_attention_freq must be >= 1, got {self.cross_attention_freq}")
        if problems:
            raise ValueError("; ".join(problems))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter the net reads, bare name -> shape."""
        w, m, wq, mq = self.vit_width, self.vit_mlp, self.qformer_width, self.qformer_mlp
        shapes: dict[str, tuple[int, ...]] = {
            "vit.mixins.patch_embedding.proj.weight": (w, 3, self.patch_size, self.patch_size),
            "vit.mixins.patch_embedding.proj.bias": (w,),
            "vit.transformer.word_embeddings.weight": (1, w),
            "vit.transformer.position_embeddings.weight": (1 + self.num_patches, w),
        }
        for i in range(self.vit_layers):
            shapes |= _block_shapes(f"vit.transformer.layers.{i}.", w, m)
        shapes |= _norm_shapes("vit.mixins.cls.ln_vision", w)
        shapes["qformer.transformer.word_embeddings.weight"] = (self.num_queries, wq)
        for i in range(self.qformer_layers):
            p = f"qformer.transformer.layers.{i}."
            shapes |= _block_shapes(p, wq, mq)
            if i in self.cross_layers:
                shapes |= _linear_shapes(p + "cross_attention.query", wq, wq)
                shapes |= _linear_shapes(p + "cross_attention.key_value", 2 * wq, w)
                shapes |= _linear_shapes(p + "cross_attention.dense", wq, wq)
                shapes |= _norm_shapes(p + "post_cross_attention_layernorm", wq)
        shapes |= _norm_shapes("qformer.transformer.final_layernorm", wq)
        shapes |= _linear_shapes("glm_proj", self.lm_hidden, wq)
        return shapes

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Any], **fixed) -> "VisualGlmVisionConfig":
        """Sizes read from the checkpoint's tensor shapes (names with or without a prefix; values
        shapes or arrays). Head counts and eps values are not in the shapes: they come from
        `fixed` or the defaults. A size whose tensor is missing keeps its default, so
        `check_vision_checkpoint` can then name the missing tensor."""
        s = {name: _shape(value) for name, value in _strip(shapes)[0].items()}
        found: dict[str, int] = {}

        def dims(name: str, rank: int) -> tuple[int, ...] | None:
            shape = s.get(name)
            return shape if shape is not None and len(shape) == rank else None

        if d := dims("vit.mixins.patch_embedding.proj.weight", 4):
            found["vit_width"], found["patch_size"] = d[0], d[2]
        if d := dims("vit.transformer.position_embeddings.weight", 2):
            side = math.isqrt(max(d[0] - 1, 0))
            if side * side == d[0] - 1 and side:
                found["image_size"] = side * found.get("patch_size", cls.patch_size)
        if d := dims("vit.transformer.layers.0.mlp.dense_h_to_4h.weight", 2):
            found["vit_mlp"] = d[0]
        if d := dims("qformer.transformer.word_embeddings.weight", 2):
            found["num_queries"], found["qformer_width"] = d
        if d := dims("qformer.transformer.layers.0.mlp.dense_h_to_4h.weight", 2):
            found["qformer_mlp"] = d[0]
        if d := dims("glm_proj.weight", 2):
            found["lm_hidden"] = d[0]
        for key, root in (("vit_layers", "vit"), ("qformer_layers", "qformer")):
            layers = _layer_indices(s, rf"{root}\.transformer\.layers\.(\d+)\.")
            if layers:
                found[key] = max(layers) + 1
        cross = sorted(_layer_indices(s, r"qformer\.transformer\.layers\.(\d+)\.cross_attention\."))
        if cross:
            freq = cross[1] - cross[0] if len(cross) > 1 else found.get("qformer_layers", cls.qformer_layers)
            config = replace(cls(), **found, cross_attention_freq=max(freq, 1))
            if cross[0] != 0 or tuple(cross) != config.cross_layers:
                raise VisionCheckpointError(
                    f"the Q-Former's cross-attention layers {cross} are not every k-th layer from layer 0; "
                    "this export supports only that pattern (VisualGLM-6B: 0, 2, ..., 10)")
            found["cross_attention_freq"] = config.cross_attention_freq
        config = replace(cls(), **{**found, **fixed})
        config.validate()
        return config


def _linear_shapes(name: str, out: int, inp: int) -> dict[str, tuple[int, ...]]:
    return {name + ".weight": (out, inp), name + ".bias": (out,)}


def _norm_shapes(name: str, width: int) -> dict[str, tuple[int, ...]]:
    return {name + ".weight": (width,), name + ".bias": (width,)}


def _block_shapes(p: str, width: int, mlp: int) -> dict[str, tuple[int, ...]]:
    return {**_norm_shapes(p + "input_layernorm", width),
            **_linear_shapes(p + "attention.query_key_value", 3 * width, width),
            **_linear_shapes(p + "attention.dense", width, width),
            **_norm_shapes(p + "post_attention_layernorm", width),
            **_linear_shapes(p + "mlp.dense_h_to_4h", mlp, width),
            **_linear_shapes(p + "mlp.dense_4h_to_h", width, mlp)}


def _layer_indices(shapes: Mapping[str, Any], pattern: str) -> set[int]:
    regex = re.compile(pattern)
    return {int(m.group(1)) for name in shapes if (m := regex.match(name))}


def _shape(value: Any) -> tuple[int, ...]:
    if hasattr(value, "shape"):
        return tuple(int(d) for d in value.shape)
    return tuple(int(d) for d in value)


def _bare(name: str) -> str:
    return name[len(next((p for p in PREFIXES if name.startswith(p)), "")):]


def _strip(tensors: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The vision parameters under their bare names, and the prefix most of them had.

    Names outside the image encoder (a whole VisualGLM checkpoint's GLM weights) are skipped."""
    bare: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in tensors.items():
        short = _bare(name)
        if not short.startswith(_ROOTS):
            continue
        prefix = name[:len(name) - len(short)]
        if short in bare:
            raise VisionCheckpointError(f"{origin[short] + short} and {name} are the same parameter twice")
        bare[short], origin[short] = value, prefix
    common = Counter(origin.values()).most_common(1)
    return bare, (common[0][0] if common else "image_encoder.")


def _listing(items: list[str], limit: int = 20) -> str:
    shown = "\n".join(f"    {item}" for item in items[:limit])
    return shown + (f"\n    ... and {len(items) - limit} more" if len(items) > limit else "")


def check_vision_checkpoint(shapes: Mapping[str, Any], config: VisualGlmVisionConfig | None = None
                            ) -> tuple[VisualGlmVisionConfig, list[str]]:
    """Check that every parameter the vision net needs is there with the right shape.

    `shapes`: parameter name -> shape (or array), names with or without a known prefix. Without
    `config`, sizes are inferred from the shapes (`VisualGlmVisionConfig.from_shapes`). Returns
    the config checked against and the names found under the image encoder that the net does
    not use. Raises VisionCheckpointError listing every missing and every mis-shaped parameter,
    named with the checkpoint's own prefix."""
    bare, prefix = _strip(shapes)
    if not bare:
        sample = ", ".join(list(shapes)[:5]) or "nothing"
        raise VisionCheckpointError(
            "no VisualGLM image-encoder parameter found (names starting with vit., qformer. or glm_proj., "
            f"optionally under {', '.join(PREFIXES)}); the checkpoint has: {sample}")
    config = config or VisualGlmVisionConfig.from_shapes(bare)
    config.validate()
    expected = config.expected_shapes()
    missing = [prefix + name for name in expected if name not in bare]
    wrong = [f"{prefix + name}: {list(_shape(bare[name]))}, expected {list(shape)}"
             for name, shape in expected.items() if name in bare and _shape(bare[name]) != shape]
    if missing or wrong:
        what = (f"ViT {config.vit_layers} x {config.vit_width} ({config.image_size} px, patch {config.patch_size}), "
                f"Q-Former {config.qformer_layers} x {config.qformer_width} with {config.num_queries} queries, "
                f"projection to {config.lm_hidden}")
        parts = [f"the VisualGLM vision checkpoint does not fit the architecture ({what}):"]
        if missing:
            parts.append(f"  missing ({len(missing)}):\n{_listing(missing)}")
        if wrong:
            parts.append(f"  wrong shape ({len(wrong)}):\n{_listing(wrong)}")
        raise VisionCheckpointError("\n".join(parts))
    unused = sorted(prefix + name for name in bare if name not in expected)
    return config, unused


class _Writer:
    def __init__(self, g: Graph, tensors: Mapping[str, Any], c: VisualGlmVisionConfig):
        self.g, self.t, self.c = g, tensors, c

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.t[name], dtype=np.float32)

    def linear(self, x: str, name: str) -> str:
        return self.g.linear(x, self.array(name + ".weight"), self.array(name + ".bias"), name)

    def split_linear(self, x: str, name: str, parts: int, index: int, tag: str) -> str:
        """One of the contiguous parts of a fused projection (query_key_value, key_value)."""
        weight, bias = self.array(name + ".weight"), self.array(name + ".bias")
        rows = weight.shape[0] // parts
        part = slice(index * rows, (index + 1) * rows)
        return self.g.linear(x, weight[part], bias[part], f"{name}.{tag}")

    def norm(self, x: str, name: str, eps: float) -> str:
        return self.g.layer_norm(x, self.array(name + ".weight"), self.array(name + ".bias"), eps, name)

    def attend(self, q: str, k: str, v: str, width: int, heads: int) -> str:
        g, d = self.g, width // heads

        def split(t: str) -> str:  # [1,N,width] -> [1,heads,N,d]
            return g.transpose(g.reshape(t, [1, -1, heads, d]), [0, 2, 1, 3])

        q = g.op("Mul", split(q), g.weight(np.array(d ** -0.5, np.float32)))
        probs = g.op("Softmax", g.op("MatMul", q, g.transpose(split(k), [0, 1, 3, 2])), axis=-1)
        return g.reshape(g.transpose(g.op("MatMul", probs, split(v)), [0, 2, 1, 3]), [1, -1, width])

    def self_attention(self, x: str, p: str, width: int, heads: int) -> str:
        qkv = p + "attention.query_key_value"
        q, k, v = (self.split_linear(x, qkv, 3, i, tag) for i, tag in enumerate(("q", "k", "v")))
        return self.linear(self.attend(q, k, v, width, heads), p + "attention.dense")

    def cross_attention(self, x: str, image: str, p: str) -> str:
        c, kv = self.c, p + "cross_attention.key_value"
        q = self.linear(x, p + "cross_attention.query")
        k, v = self.split_linear(image, kv, 2, 0, "k"), self.split_linear(image, kv, 2, 1, "v")
        return self.linear(self.attend(q, k, v, c.qformer_width, c.qformer_heads), p + "cross_attention.dense")

    def mlp(self, x: str, p: str) -> str:
        return self.linear(self.g.gelu(self.linear(x, p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")

    def vit(self, pixels: str) -> str:
        g, c = self.g, self.c
        proj = "vit.mixins.patch_embedding.proj"
        x = g.op("Conv", pixels, g.weight(self.array(proj + ".weight"), proj + ".weight"),
                 g.weight(self.array(proj + ".bias"), proj + ".bias"),
                 kernel_shape=[c.patch_size] * 2, strides=[c.patch_size] * 2)
        x = g.transpose(g.reshape(x, [1, c.vit_width, c.num_patches]), [0, 2, 1])
        cls = self.array("vit.transformer.word_embeddings.weight").reshape(1, 1, c.vit_width)
        x = g.op("Concat", g.weight(cls, "vit.transformer.word_embeddings.weight"), x, axis=1)
        pos = "vit.transformer.position_embeddings.weight"
        x = g.op("Add", x, g.weight(self.array(pos), pos))
        for i in range(c.vit_layers):
            p = f"vit.transformer.layers.{i}."
            x = g.op("Add", x, self.self_attention(self.norm(x, p + "input_layernorm", c.vit_eps), p,
                                                   c.vit_width, c.vit_heads))
            x = g.op("Add", x, self.mlp(self.norm(x, p + "post_attention_layernorm", c.vit_eps), p))
        return self.norm(x, "vit.mixins.cls.ln_vision", c.ln_vision_eps)

    def qformer(self, image: str) -> str:
        g, c = self.g, self.c
        queries = "qformer.transformer.word_embeddings.weight"
        h = g.weight(self.array(queries).reshape(1, c.num_queries, c.qformer_width), queries)
        for i in range(c.qformer_layers):
            p = f"qformer.transformer.layers.{i}."
            a = self.norm(h, p + "input_layernorm", c.qformer_eps)
            m = self.norm(g.op("Add", a, self.self_attention(a, p, c.qformer_width, c.qformer_heads)),
                          p + "post_attention_layernorm", c.qformer_eps)
            if i in c.cross_layers:
                m = self.norm(g.op("Add", m, self.cross_attention(m, image, p)),
                              p + "post_cross_attention_layernorm", c.qformer_eps)
            h = g.op("Add", m, self.mlp(m, p))
        out = self.norm(h, "qformer.transformer.final_layernorm", c.qformer_eps)
        return self.linear(out, "glm_proj")


def _build(g: Graph, bare: Mapping[str, Any], config: VisualGlmVisionConfig) -> None:
    size = config.image_size
    pixels = g.input("pixel_values", np.float32, [1, 3, size, size])
    w = _Writer(g, bare, config)
    g.output(w.qformer(w.vit(pixels)), "image_embeds", np.float32, [1, config.num_queries, config.lm_hidden])


def export_visualglm_vision(tensors: Tensors, config: VisualGlmVisionConfig | None, out_dir: Path) -> Path:
    """Write `vision.onnx` (+ `vision.onnx.data`) for VisualGLM-6B's image encoder into out_dir.

    `tensors`: the checkpoint's parameters (HF `image_encoder.*`, `transformer.image_encoder.*`,
    SAT `mixins.eva.model.*` or bare names; other names are ignored); any float dtype, converted
    to float32 one tensor at a time. `config`: None to infer the sizes from the shapes."""
    bare, _ = _strip(tensors)
    config, _unused = check_vision_checkpoint(tensors, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "vision.onnx"
    with Graph.streamed("vision", path) as g:
        _build(g, bare, config)
    return path


def vision_parameter_names(names: Sequence[str]) -> list[str]:
    """The names among `names` that belong to the image encoder, to load only those from a
    whole VisualGLM checkpoint (the GLM's 13 GB need not be read)."""
    return [name for name in names if _bare(name).startswith(_ROOTS)]
