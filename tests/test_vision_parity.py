"""The exported `vision` net, run by the ONNX Runtime backend, computes what the PyTorch tower computes."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from export.vision import export_vision
from runtime.onnx_backend import OnnxBackend
from training.vision_tower import VisionConfig, VisionTower

SMALL = VisionConfig(image_size=32, patch_size=8, vit_width=32, vit_layers=2, vit_heads=2, num_queries=4,
                     qformer_width=24, qformer_layers=2, qformer_heads=2, lm_hidden=40)


@pytest.mark.parametrize("config", [SMALL, replace(SMALL, stem_channels=(4, 8))], ids=["patch conv", "conv stem"])
def test_onnx_vision_net_matches_the_torch_tower(tmp_path, config):
    torch.manual_seed(0)
    tower = VisionTower(config).eval()
    with torch.no_grad():  # non-trivial values everywhere, LayerNorms included
        for p in tower.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    export_vision({k: v.numpy() for k, v in tower.state_dict().items()}, config.to_dict(), tmp_path)
    backend = OnnxBackend(tmp_path)
    pixels = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    pixels_t, out = backend.alloc((1, 3, 32, 32), np.float32), backend.alloc((1, 4, 40), np.float32)
    backend.write(pixels_t, pixels)
    backend.run("vision", [pixels_t], [out])
    with torch.no_grad():
        theirs = tower(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(backend.read(out), theirs, atol=2e-5, rtol=1e-4)
