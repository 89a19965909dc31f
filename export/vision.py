"""The vision tower's state dict -> the ONNX `vision` net: pixels [1,3,S,S] -> prefix [1,Q,H].

Mirrors training/vision_tower.py op for op (convolution stem, ViT, Q-Former, projection); the parameter
names are that module's state-dict names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from export.onnx_graph import Graph

Tensors = Mapping[str, np.ndarray]


class _VisionWriter:
    def __init__(self, g: Graph, tensors: Tensors, config: dict):
        self.g, self.t, self.c = g, tensors, config

    def linear(self, x: str, name: str) -> str:
        return self.g.linear(x, self.t[name + ".weight"], self.t[name + ".bias"], name)

    def norm(self, x: str, name: str) -> str:
        return self.g.layer_norm(x, self.t[name + ".weight"], self.t[name + ".bias"], self.c["eps"], name)

    def attention(self, x: str, context: str, name: str, width: int, heads: int) -> str:
        g, d = self.g, width // heads

        def split(t: str) -> str:  # [1,N,W] -> [1,heads,N,d]
            return g.transpose(g.reshape(t, [1, -1, heads, d]), [0, 2, 1, 3])

        q, k, v = (split(self.linear(src, f"{name}.{p}")) for src, p in ((x, "q"), (context, "k"), (context, "v")))
        scores = g.op("Mul", g.op("MatMul", q, g.transpose(k, [0, 1, 3, 2])), g.weight(np.array(d ** -0.5, np.float32)))
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        return self.linear(g.reshape(g.transpose(ctx, [0, 2, 1, 3]), [1, -1, width]), f"{name}.out")

    def conv(self, x: str, name: str, kernel: int, stride: int, pad: int) -> str:
        return self.g.op("Conv", x, self.g.weight(np.asarray(self.t[name + ".weight"], np.float32), name + ".weight"),
                         self.g.weight(np.asarray(self.t[name + ".bias"], np.float32), name + ".bias"),
                         kernel_shape=[kernel] * 2, strides=[stride] * 2, pads=[pad] * 4)

    def mlp(self, x: str, name: str) -> str:
        return self.linear(self.g.gelu(self.linear(x, f"{name}.0")), f"{name}.2")

    def vit(self, pixels: str) -> str:
        g, c = self.g, self.c
        x, stem = pixels, c.get("stem_channels", ())
        for i in range(len(stem)):  # nn.Sequential of (Conv2d, GELU) pairs
            x = g.gelu(self.conv(x, f"stem.{2 * i}", kernel=3, stride=2, pad=1))
        kernel = c["patch_size"] >> len(stem)
        x = self.conv(x, "patch", kernel=kernel, stride=kernel, pad=0)
        x = g.transpose(g.reshape(x, [1, c["vit_width"], -1]), [0, 2, 1])
        x = g.op("Concat", g.weight(np.asarray(self.t["cls"], np.float32), "cls"), x, axis=1)
        x = g.op("Add", x, g.weight(np.asarray(self.t["pos"], np.float32), "pos"))
        for i in range(c["vit_layers"]):
            p = f"vit.{i}"
            x = g.op("Add", x, self.attention(h := self.norm(x, f"{p}.norm1"), h, f"{p}.attn", c["vit_width"], c["vit_heads"]))
            x = g.op("Add", x, self.mlp(self.norm(x, f"{p}.norm2"), f"{p}.mlp"))
        return self.norm(x, "vit_norm")

    def qformer(self, image: str) -> str:
        g, c = self.g, self.c
        q = self.norm(g.weight(np.asarray(self.t["queries"], np.float32), "queries"), "query_norm")
        w, heads = c["qformer_width"], c["qformer_heads"]
        for i in range(c["qformer_layers"]):
            p = f"qformer.{i}"
            q = self.norm(g.op("Add", q, self.attention(q, q, f"{p}.self_attn", w, heads)), f"{p}.self_norm")
            q = self.norm(g.op("Add", q, self.attention(q, image, f"{p}.cross_attn", w, heads)), f"{p}.cross_norm")
            q = self.norm(g.op("Add", q, self.mlp(q, f"{p}.mlp")), f"{p}.mlp_norm")
        return self.linear(q, "proj")


def vision_net(tensors: Tensors, config: dict) -> Graph:
    g = Graph("vision")
    size = config["image_size"]
    pixels = g.input("pixel_values", np.float32, [1, 3, size, size])
    w = _VisionWriter(g, tensors, config)
    g.output(w.qformer(w.vit(pixels)), "image_embeds", np.float32, [1, config["num_queries"], config["lm_hidden"]])
    return g


def export_vision(tensors: Tensors, config: dict, out_dir: Path) -> Path:
    return vision_net(tensors, config).save(Path(out_dir) / "vision.onnx")
