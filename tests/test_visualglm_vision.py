"""VisualGLM-6B's vision net (export/visualglm_vision.py) on a tiny random checkpoint with the real
parameter names, against a PyTorch forward written here from the published math (SAT's
BaseTransformer as THUDM/VisualGLM-6B's model/blip2.py configures it)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from export.visualglm_vision import (VisionCheckpointError, VisualGlmVisionConfig, check_vision_checkpoint,
                                     export_visualglm_vision, vision_parameter_names)
from tests.fixtures.tiny_visualglm_vision import TINY_VISUALGLM_VISION as TINY
from tests.fixtures.tiny_visualglm_vision import tiny_visualglm_vision
from runtime import open_backend
from vision.encoder import VisionEncoder
from vision.preprocess import to_pixels

HF = "image_encoder."


def reference(tensors: dict, c: VisualGlmVisionConfig, pixels: np.ndarray) -> np.ndarray:
    """BLIP2.forward: glm_proj(QFormer(EVAViT(image))), in float32."""
    t = {name.removeprefix(HF): torch.from_numpy(np.asarray(v, np.float32)) for name, v in tensors.items()}

    def norm(x, name, eps):
        return F.layer_norm(x, x.shape[-1:], t[name + ".weight"], t[name + ".bias"], eps)

    def linear(x, name):
        return F.linear(x, t[name + ".weight"], t[name + ".bias"])

    def attention(q, k, v, heads):  # [1,N,W] each; heads are contiguous slices of W
        split = lambda z: z.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)

    def self_attention(x, p, heads):
        q, k, v = linear(x, p + "attention.query_key_value").chunk(3, dim=-1)
        return linear(attention(q, k, v, heads), p + "attention.dense")

    def mlp(x, p):
        return linear(F.gelu(linear(x, p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")

    with torch.no_grad():
        # EVA ViT, pre-LN, no final norm; then ln_vision.
        x = F.conv2d(torch.from_numpy(pixels), t["vit.mixins.patch_embedding.proj.weight"],
                     t["vit.mixins.patch_embedding.proj.bias"], stride=c.patch_size).flatten(2).transpose(1, 2)
        x = torch.cat([t["vit.transformer.word_embeddings.weight"][None], x], dim=1)
        x = x + t["vit.transformer.position_embeddings.weight"]
        for i in range(c.vit_layers):
            p = f"vit.transformer.layers.{i}."
            x = x + self_attention(norm(x, p + "input_layernorm", c.vit_eps), p, c.vit_heads)
            x = x + mlp(norm(x, p + "post_attention_layernorm", c.vit_eps), p)
        image = norm(x, "vit.mixins.cls.ln_vision", c.ln_vision_eps)
        # Q-Former, SAT "post" LayerNorm order; even layers cross-attend to the image.
        h = t["qformer.transformer.word_embeddings.weight"][None]
        for i in range(c.qformer_layers):
            p = f"qformer.transformer.layers.{i}."
            a = norm(h, p + "input_layernorm", c.qformer_eps)
            m = norm(a + self_attention(a, p, c.qformer_heads), p + "post_attention_layernorm", c.qformer_eps)
            if i % c.cross_attention_freq == 0:
                k, v = linear(image, p + "cross_attention.key_value").chunk(2, dim=-1)
                cross = attention(linear(m, p + "cross_attention.query"), k, v, c.qformer_heads)
                m = norm(m + linear(cross, p + "cross_attention.dense"), p + "post_cross_attention_layernorm",
                         c.qformer_eps)
            h = m + mlp(m, p)
        return linear(norm(h, "qformer.transformer.final_layernorm", c.qformer_eps), "glm_proj").numpy()


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, TINY.image_size, TINY.image_size)).astype(np.float32)


def shapes_of(tensors: dict) -> dict:
    return {name: value.shape for name, value in tensors.items()}


@pytest.fixture(scope="module")
def tensors():
    return tiny_visualglm_vision()


@pytest.fixture(scope="module")
def exported(tensors, tmp_path_factory):
    out = tmp_path_factory.mktemp("visualglm-vision")
    export_visualglm_vision(tensors, TINY, out)
    return out


@pytest.fixture(scope="module")
def backend(exported):
    """The project's runtime on the exported directory (it also sets the process-wide thread pool)."""
    return open_backend("onnx", exported)


def session(path):
    options = ort.SessionOptions()
    options.use_per_session_threads = False  # the runtime's process-wide pool (runtime/onnx_backend.py)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(directory, x: np.ndarray) -> np.ndarray:
    return session(directory / "vision.onnx").run(["image_embeds"], {"pixel_values": x})[0]


def test_onnx_net_matches_the_reference(tensors, exported, backend):
    outputs = []
    for seed in (0, 1):
        x = pixels(seed)
        ours, theirs = run(exported, x), reference(tensors, TINY, x)
        assert ours.shape == (1, TINY.num_queries, TINY.lm_hidden)
        assert np.abs(ours - theirs).max() < 1e-4
        outputs.append(ours)
    # A meaningful comparison: rows differ across queries and the output follows the picture.
    assert outputs[0].std(axis=1).mean() > 0.1
    assert np.abs(outputs[0] - outputs[1]).mean() > 0.1


def test_weights_are_written_as_external_data(exported):
    model = onnx.load(str(exported / "vision.onnx"), load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) > 20
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"vision.onnx.data"}
    assert (exported / "vision.onnx.data").stat().st_size > 4 * sum(np.prod(t.dims) for t in external) // 2
    assert sorted(p.name for p in exported.iterdir()) == ["vision.onnx", "vision.onnx.data"]
    assert model.ir_version == 8 and model.opset_import[0].version == 17


def test_the_runtime_runs_it_as_the_vision_net(tensors, backend):
    spec = backend.nets()["vision"]
    assert [(a.name, a.shape) for a in spec.inputs] == [("pixel_values", (1, 3, 28, 28))]
    assert [(a.name, a.shape) for a in spec.outputs] == [("image_embeds", (1, 4, 64))]
    encoder = VisionEncoder(backend)
    picture = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    encoded = encoder.encode(picture)
    assert not encoded.cached and encoder.rows == TINY.num_queries
    expected = reference(tensors, TINY, to_pixels(picture, TINY.image_size))
    assert np.abs(backend.read(encoded.embeds) - expected).max() < 1e-4


@pytest.mark.parametrize("prefix", ["", "transformer.image_encoder.", "mixins.eva.model."])
def test_other_name_prefixes_give_the_same_net(tensors, exported, backend, tmp_path, prefix):
    renamed = {prefix + name.removeprefix(HF): value for name, value in tensors.items()}
    renamed["transformer.layers.0.attention.dense.weight"] = np.zeros((64, 64), np.float16)  # a GLM weight: skipped
    export_visualglm_vision(renamed, TINY, tmp_path)
    x = pixels(3)
    np.testing.assert_array_equal(run(tmp_path, x), run(exported, x))


def test_checkpoint_check_names_missing_and_misshaped_parameters(tensors, tmp_path):
    shapes = shapes_of(tensors)
    del shapes[HF + "qformer.transformer.layers.2.cross_attention.key_value.weight"]
    shapes[HF + "vit.transformer.layers.1.mlp.dense_4h_to_h.weight"] = (32, 81)
    for config in (TINY, VisualGlmVisionConfig.from_shapes(shapes, vit_heads=2, qformer_heads=2)):
        with pytest.raises(VisionCheckpointError) as error:
            check_vision_checkpoint(shapes, config)
        message = str(error.value)
        assert "missing (1)" in message
        assert HF + "qformer.transformer.layers.2.cross_attention.key_value.weight" in message
        assert "wrong shape (1)" in message
        assert HF + "vit.transformer.layers.1.mlp.dense_4h_to_h.weight: [32, 81], expected [32, 80]" in message
    broken = dict(tensors)
    broken[HF + "glm_proj.weight"] = np.zeros((64, 31), np.float16)
    wrong = r"image_encoder\.glm_proj\.weight: \[64, 31\], expected \[64, 32\]"
    with pytest.raises(VisionCheckpointError, match=wrong):
        export_visualglm_vision(broken, TINY, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written
    with pytest.raises(VisionCheckpointError, match="no VisualGLM image-encoder parameter"):
        check_vision_checkpoint({"transformer.word_embeddings.weight": (130528, 4096)})


def test_unused_vision_parameters_are_reported(tensors):
    shapes = shapes_of(tensors) | {HF + "vit.transformer.final_layernorm.weight": (32,)}
    config, unused = check_vision_checkpoint(shapes, TINY)
    assert config == TINY and unused == [HF + "vit.transformer.final_layernorm.weight"]
    whole = ["transformer.word_embeddings.weight", "lm_head.weight", *tensors]
    assert vision_parameter_names(whole) == list(tensors)


def test_sizes_are_inferred_from_the_shapes(tensors):
    assert VisualGlmVisionConfig.from_shapes(tensors, vit_heads=2, qformer_heads=2) == TINY
    real = VisualGlmVisionConfig()
    shapes = real.expected_shapes()
    assert VisualGlmVisionConfig.from_shapes(shapes) == real
    assert real.cross_layers == (0, 2, 4, 6, 8, 10) and real.num_patches == 256
    # The built SAT VisualGLM-6B reports 7,802,193,408 parameters (bokunopica/VisualGLM-6B,
    # visualglm_structure.ipynb); ChatGLM-6B's part (embeddings, lm_head, 28 layers, final norm) is
    # 6,707,929,088, which leaves exactly this for the image encoder.
    assert sum(int(np.prod(s)) for s in shapes.values()) == 7_802_193_408 - 6_707_929_088
    assert check_vision_checkpoint({"transformer.image_encoder." + k: v for k, v in shapes.items()})[0] == real
