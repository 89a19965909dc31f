"""The vision tower in PyTorch, for training: VisualGLM's shape in miniature.

pixels [B,3,S,S] -> ViT (an optional stem of 3x3 stride-2 convolutions, the patch conv, class
token, pre-LN blocks) -> image tokens [B,1+P,W]
-> Q-Former (learned queries; each layer: self-attention, cross-attention to the image
tokens, MLP; post-LN as in BERT/BLIP-2) -> linear projection -> [B,Q,H] prefix embeddings
in the language model's embedding space.

export/vision.py writes the same computation as the ONNX `vision` net from this module's
state dict; tests hold the two to each other.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 16
    vit_width: int = 192
    vit_layers: int = 6
    vit_heads: int = 3
    num_queries: int = 32
    qformer_width: int = 192
    qformer_layers: int = 2
    qformer_heads: int = 4
    lm_hidden: int = 576
    eps: float = 1e-6
    # Channels of 3x3 stride-2 convolutions before the patch conv, which then covers
    # patch_size / 2**len(stem_channels) of their output: local edges and corners come from
    # convolutions, which a single linear map of a whole patch learns slowly.
    stem_channels: tuple[int, ...] = ()

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_kernel(self) -> int:
        return self.patch_size >> len(self.stem_channels)

    def to_dict(self) -> dict:
        """The config as JSON stores it (lists for tuples)."""
        return {**asdict(self), "stem_channels": list(self.stem_channels)}


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(kv_width or width, width)
        self.v = nn.Linear(kv_width or width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, w = x.shape
        split = lambda t: t.reshape(b, t.shape[1], self.heads, w // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(context)), split(self.v(context))
        attn = torch.softmax(q @ k.transpose(-1, -2) * (w // self.heads) ** -0.5, dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, w))


def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))


class ViTBlock(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c.vit_width, eps=c.eps), nn.LayerNorm(c.vit_width, eps=c.eps)
        self.attn, self.mlp = Attention(c.vit_width, c.vit_heads), mlp(c.vit_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class QFormerLayer(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        w = c.qformer_width
        self.self_attn, self.self_norm = Attention(w, c.qformer_heads), nn.LayerNorm(w, eps=c.eps)
        self.cross_attn = Attention(w, c.qformer_heads, kv_width=c.vit_width)
        self.cross_norm = nn.LayerNorm(w, eps=c.eps)
        self.mlp, self.mlp_norm = mlp(w), nn.LayerNorm(w, eps=c.eps)

    def forward(self, queries: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        queries = self.self_norm(queries + self.self_attn(queries))
        queries = self.cross_norm(queries + self.cross_attn(queries, image))
        return self.mlp_norm(queries + self.mlp(queries))


class VisionTower(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.config = c
        channels = (3, *c.stem_channels)
        self.stem = nn.Sequential(*(layer for n_in, n_out in zip(channels, channels[1:]) for layer in
                                    (nn.Conv2d(n_in, n_out, 3, stride=2, padding=1), nn.GELU())))
        self.patch = nn.Conv2d(channels[-1], c.vit_width, c.patch_kernel, stride=c.patch_kernel)
        self.cls = nn.Parameter(torch.zeros(1, 1, c.vit_width))
        self.pos = nn.Parameter(torch.randn(1, 1 + c.num_patches, c.vit_width) * 0.02)
        self.vit = nn.ModuleList(ViTBlock(c) for _ in range(c.vit_layers))
        self.vit_norm = nn.LayerNorm(c.vit_width, eps=c.eps)
        self.queries = nn.Parameter(torch.randn(1, c.num_queries, c.qformer_width) * 0.02)
        self.query_norm = nn.LayerNorm(c.qformer_width, eps=c.eps)
        self.qformer = nn.ModuleList(QFormerLayer(c) for _ in range(c.qformer_layers))
        self.proj = nn.Linear(c.qformer_width, c.lm_hidden)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch(self.stem(pixels)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.vit:
            x = block(x)
        return self.vit_norm(x)

    def query_outputs(self, image: torch.Tensor) -> torch.Tensor:
        queries = self.query_norm(self.queries.expand(image.shape[0], -1, -1))
        for layer in self.qformer:
            queries = layer(queries, image)
        return queries

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.query_outputs(self.image_tokens(pixels)))
