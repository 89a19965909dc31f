"""The file training writes is the file the exporter reads: tower weights and LoRA deltas."""
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from models.vision_adapter import merge_lora, read_vision_adapter
from training.train_vision import LoRALinear, init_from, save_adapter, teacher_answers
from training.vision_tower import VisionTower
from tests.test_vision_parity import SMALL


def test_saved_adapter_reads_back_and_merges_into_the_weights(tmp_path):
    torch.manual_seed(0)
    tower = VisionTower(SMALL)
    base = nn.Linear(6, 5, bias=False)
    adapter = LoRALinear(base, rank=2, alpha=4)
    with torch.no_grad():
        adapter.lora_b.normal_()
    name = "model.layers.0.self_attn.q_proj.weight"
    save_adapter(tmp_path / "a.npz", tower, {name: adapter})

    read = read_vision_adapter(tmp_path / "a.npz")
    assert read.vision_config == SMALL.to_dict()
    for key, value in tower.state_dict().items():
        np.testing.assert_allclose(read.vision_tensors[key], value.numpy(), atol=1e-3, rtol=1e-3)  # stored as fp16

    weights = {name: base.weight.detach().numpy().copy(), "model.norm.weight": np.ones(5, np.float32)}
    merged = merge_lora(weights, read.lora)
    x = torch.randn(3, 6)
    with torch.no_grad():
        expected = adapter(x).numpy()
    np.testing.assert_allclose(x.numpy() @ merged[name].T, expected, atol=1e-2)
    assert merged["model.norm.weight"] is weights["model.norm.weight"]


def test_an_adapter_for_another_model_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        merge_lora({"a.weight": np.zeros((2, 2))}, {"b.weight": (np.zeros((1, 2)), np.zeros((2, 1)))})


def test_training_resumes_from_a_shipped_file_and_keeps_its_adapters_and_the_tower_tensors_that_fit(tmp_path):
    torch.manual_seed(0)
    name = "model.layers.0.self_attn.q_proj.weight"
    shipped = LoRALinear(nn.Linear(6, 5, bias=False), rank=2, alpha=4)
    with torch.no_grad():
        shipped.lora_b.normal_()
    tower = VisionTower(SMALL)
    save_adapter(tmp_path / "a.npz", tower, {name: shipped})

    with_stem = replace(SMALL, stem_channels=(4,))  # the patch conv then reads 4 channels, not 3
    for config, afresh in ((SMALL, []), (with_stem, ["patch.weight", "stem.0.bias", "stem.0.weight"])):
        fresh, adapter = VisionTower(config), LoRALinear(nn.Linear(6, 5, bias=False), rank=2, alpha=4)
        assert init_from(tmp_path / "a.npz", fresh, {name: adapter}) == afresh
        np.testing.assert_allclose(adapter.lora_b.detach().numpy(), shipped.lora_b.detach().numpy(), atol=1e-2)
        assert torch.equal(fresh.vit[0].attn.q.weight.half(), tower.vit[0].attn.q.weight.half())
        assert torch.equal(fresh.patch.weight.half(), tower.patch.weight.half()) is (config == SMALL)


def test_a_file_without_adapters_for_this_language_model_is_refused_by_name(tmp_path):
    other = "model.layers.0.mlp.up_proj.weight"
    save_adapter(tmp_path / "a.npz", VisionTower(SMALL), {other: LoRALinear(nn.Linear(6, 5, bias=False), rank=2, alpha=4)})
    wanted = {"model.layers.0.self_attn.q_proj.weight": LoRALinear(nn.Linear(6, 5, bias=False), rank=2, alpha=4)}
    with pytest.raises(SystemExit, match="no LoRA factors for model.layers.0.self_attn.q_proj.weight"):
        init_from(tmp_path / "a.npz", VisionTower(SMALL), wanted)


def test_teacher_answers_ask_only_the_prompts_not_asked_before(tmp_path, monkeypatch):
    asked = []

    class Model:
        def reply(self, history, prompt, settings):
            asked.append(prompt)
            return SimpleNamespace(answer=f"about {prompt}", finish_reason="length" if "long" in prompt else "stop")

    monkeypatch.setattr("models.catalog.prepare_model", lambda *args, **kwargs: tmp_path)
    monkeypatch.setattr("models.loader.load_chat_model", lambda path: Model())
    cache = tmp_path / "teacher.json"
    assert teacher_answers(["a", "a long one"], cache) == {"a": "about a"}  # unfinished answers are left out
    assert teacher_answers(["a", "a long one", "b"], cache) == {"a": "about a", "b": "about b"}
    assert asked == ["a", "a long one", "b"]
