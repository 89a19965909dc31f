"""The default model that sees (smollm2-vision), end to end on the ONNX runtime (slow)."""
import io
import random

import pytest
from PIL import Image, ImageDraw

from language.sampling import SamplingSettings
from models import catalog
from training.evaluate import HELD_OUT_SEED, correct
from training.examples import easy_vqa, generated
from vision.preprocess import load_image

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not catalog.VISION_ADAPTER.is_file(), reason="the vision adapter is not shipped")]
GREEDY = SamplingSettings(max_new_tokens=24)


@pytest.fixture(scope="module")
def seeing_model():
    from models.loader import load_chat_model

    return load_chat_model(catalog.prepare_model(catalog.VISION_MODEL, weights=catalog.DEFAULT_CPU_WEIGHTS))


def photo_of_a_red_circle() -> Image.Image:
    """Drawn here, not by the training code: a JPEG of a red circle on white, off centre."""
    image = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(image).ellipse([60, 50, 220, 210], fill=(230, 20, 30))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return load_image(buffer.getvalue())


def test_a_red_circle_is_red(seeing_model):
    answer = seeing_model.reply([], "What colour is the shape?", GREEDY, image=photo_of_a_red_circle()).answer
    assert correct(answer, "red"), answer


def test_text_chat_still_knows_paris(seeing_model):
    assert "Paris" in seeing_model.reply([], "What is the capital of France?", GREEDY).answer


@pytest.mark.parametrize("name, examples, floor", [
    ("easy-vqa test", lambda: random.Random(1).sample(easy_vqa("test"), 60), 0.85),
    ("held-out scenes", lambda: generated(60, HELD_OUT_SEED + 1), 0.65),
])
def test_accuracy_on_a_small_sample(seeing_model, name, examples, floor):
    hits = [correct(seeing_model.reply([], e.question, GREEDY, image=load_image(e.image())).answer, e.expected)
            for e in examples()]
    assert sum(hits) / len(hits) >= floor, name
