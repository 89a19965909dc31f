"""A tiny random VisualGLM-6B image encoder with the real parameter names, for tests.

Same layout as the published checkpoint (see export/visualglm_vision.py): EVA ViT with a class
token and learned positions, a Q-Former whose even layers cross-attend to the image, glm_proj.
The weights are scaled so the output rows differ from each other and from picture to picture
(see _gain), and stored as float16 like the Hugging Face checkpoint, so the export's
conversion to float32 is exercised.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from export.visualglm_vision import VisualGlmVisionConfig

# 3 Q-Former layers so that both kinds occur after a cross-attention layer (0 and 2 cross-attend);
# vit_mlp is not 4 x width, as in the real ViT (6144 / 1408).
TINY_VISUALGLM_VISION = VisualGlmVisionConfig(
    image_size=28, patch_size=14, vit_width=32, vit_layers=2, vit_heads=2, vit_mlp=80,
    qformer_width=32, qformer_layers=3, qformer_heads=2, qformer_mlp=128, cross_attention_freq=2,
    num_queries=4, lm_hidden=64)

HF_PREFIX = "image_encoder."


def tiny_visualglm_vision(config: VisualGlmVisionConfig = TINY_VISUALGLM_VISION, seed: int = 0,
                          prefix: str = HF_PREFIX, dtype=np.float16) -> dict[str, np.ndarray]:
    """Random weights for every parameter of `config`, named `prefix` + the real name."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in config.expected_shapes().items():
        if name.endswith("layernorm.weight") or name.endswith("ln_vision.weight"):
            value = 1 + 0.2 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            value = 0.2 * rng.standard_normal(shape)
        elif name.endswith("word_embeddings.weight") or name.endswith("position_embeddings.weight"):
            value = rng.standard_normal(shape)  # class token, positions, queries: unit scale
        else:  # a Linear / Conv weight [out, in, ...], fan-in scaled
            value = rng.standard_normal(shape) * (_gain(name) / np.sqrt(np.prod(shape[1:])))
        tensors[prefix + name] = np.asarray(value, dtype=dtype)
    return tensors


def _gain(name: str) -> float:
    """Larger than unit gain, so the output depends strongly on the picture; but the Q-Former's
    self-attention among its 4 queries gets less, or every query ends up with the same row."""
    return 0.5 if name.startswith("qformer.") and ".attention." in name else 1.2


def export_tiny_visualglm_vision(out_dir, config: VisualGlmVisionConfig = TINY_VISUALGLM_VISION, seed: int = 0,
                                 prefix: str = HF_PREFIX) -> dict[str, np.ndarray]:
    """Write the tiny encoder's `vision.onnx` into out_dir; returns its weights."""
    from export.visualglm_vision import export_visualglm_vision

    tensors = tiny_visualglm_vision(config, seed, prefix)
    export_visualglm_vision(tensors, config, Path(out_dir))
    return tensors
