"""VisualGLM-6B's path to the TPU, on a tiny random checkpoint with the real parameter names:
checkpoint -> converter -> ONNX nets -> bmodel (tpu-mlir) -> chip simulator through the sail
backend, giving the same tokens as the CPU path. Skips where tpu-mlir is not installed."""
import numpy as np
import pytest
from PIL import Image

import export.onnx_graph as onnx_graph
from compile.bmodel import compile_model
from language.embedding import read_table
from language.families.glm import GlmFamily
from language.generate import Generator, ImageRows
from language.sampling import Sampler, SamplingSettings
from tests.fixtures.tiny_glm import stand_in_tokenizer
from tests.fixtures.tiny_visualglm import write_tiny_visualglm
from models.visualglm_checkpoint import convert
from runtime import open_backend
from vision.encoder import VisionEncoder

pytestmark = pytest.mark.simulator

GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def converted(toolchain, tmp_path_factory):
    """The tiny checkpoint converted; lm_head and vision take the external-data path the real
    2-4 GB nets take (threshold lowered to 1 MiB)."""
    root = tmp_path_factory.mktemp("visualglm-tpu")
    write_tiny_visualglm(root / "checkpoint")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_graph, "EXTERNAL_DATA_ABOVE", 2 ** 20)
        convert(root / "checkpoint", root / "model", 64, progress=lambda *_: None)
    return root


def _answer(backend, table, picture: Image.Image) -> tuple[list[int], np.ndarray]:
    family = GlmFamily(stand_in_tokenizer())
    encoder = VisionEncoder(backend)
    embeds = encoder.encode(picture).embeds
    prompt = family.encode([], "What is in the picture?", image_tokens=encoder.rows)
    tokens = Generator(backend, family, table).generate(prompt.ids, Sampler(GREEDY), GREEDY.max_new_tokens,
                                                 ImageRows(embeds, prompt.image_start))
    return list(tokens), backend.read(embeds)


def test_tiny_visualglm_gives_the_cpu_tokens_on_the_simulator(converted):
    from runtime import simulated_sail  # noqa: F401  (the toolchain is there: the fixture checked)

    bmodel = compile_model(converted / "model", converted / "bmodel", quantize="F16", prefill_widths=[64],
                           progress=lambda *_: None)
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    on_cpu, rows_cpu = _answer(open_backend("onnx", converted / "model", threads=1), read_table(converted / "model"),
                               picture)
    on_sim, rows_sim = _answer(open_backend("sail-simulator", bmodel), read_table(bmodel.parent), picture)
    cosine = float((rows_cpu * rows_sim).sum() / np.linalg.norm(rows_cpu) / np.linalg.norm(rows_sim))
    assert cosine > 0.999  # the vision net's rows, spliced on the device
    assert len(on_cpu) == GREEDY.max_new_tokens and on_sim == on_cpu
