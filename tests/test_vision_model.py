"""The default model that sees (smollm2-vision), end to end on the ONNX runtime (slow)."""
import io
import random
import threading

import pytest
from PIL import Image, ImageDraw

from language.sampling import SamplingSettings
from models import catalog
from serving.scheduler import Scheduler
from training.evaluate import HELD_OUT_SEED, ask, correct, follow_up_examples, reworded_examples
from training.examples import easy_vqa, generated
from vision.preprocess import load_image

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not catalog.VISION_ADAPTER.is_file(), reason="the vision adapter is not shipped")]
GREEDY = SamplingSettings(max_new_tokens=24)
# Floors a little under what the shipped tower scores on these samples (easy-vqa 100 %, scenes 85 %,
# reworded 97.5 %, follow-ups 77 %; the README has the figures over larger sets). Descriptions have
# no floor here: training/evaluate.py reports them (75 % of scenes of 1-3 shapes named right).
FLOOR_EASY_VQA, FLOOR_SCENES, FLOOR_REWORDED, FLOOR_FOLLOW_UPS = 0.95, 0.8, 0.9, 0.7


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
    ("easy-vqa test", lambda: random.Random(1).sample(easy_vqa("test"), 60), FLOOR_EASY_VQA),
    ("held-out scenes", lambda: generated(60, HELD_OUT_SEED + 3), FLOOR_SCENES),
    ("held-out follow-ups", lambda: follow_up_examples(30, HELD_OUT_SEED + 4), FLOOR_FOLLOW_UPS),
    ("held-out reworded questions", lambda: reworded_examples(40, HELD_OUT_SEED + 7), FLOOR_REWORDED),
])
def test_accuracy_on_a_small_sample(seeing_model, name, examples, floor):
    hits = [correct(ask(seeing_model, e)[0], e.expected) for e in examples()]
    assert sum(hits) / len(hits) >= floor, name


def test_eight_users_at_once_each_get_the_colour_of_their_own_picture(seeing_model):
    """No cross-talk between KV slots: eight pictures, eight answers at once, each about its own
    and each the answer the picture gets alone."""
    colours = {"red": (230, 20, 30), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
               "black": (20, 20, 20), "orange": (250, 140, 20), "purple": (140, 50, 170), "brown": (130, 80, 40)}
    scheduler, answers = Scheduler(seeing_model, slots=8), {}

    def picture(rgb: tuple[int, int, int]) -> Image.Image:
        image = Image.new("RGB", (224, 224), (245, 245, 240))
        ImageDraw.Draw(image).ellipse([50, 50, 174, 174], fill=rgb)
        return image

    def ask(name: str, rgb: tuple[int, int, int]) -> None:
        answers[name] = list(scheduler.stream([], "What colour is the shape?", GREEDY, image=picture(rgb)))[-1].answer

    users = [threading.Thread(target=ask, args=item) for item in colours.items()]
    for user in users:
        user.start()
    for user in users:
        user.join(120)
    alone = {name: seeing_model.reply([], "What colour is the shape?", GREEDY, image=picture(rgb)).answer
             for name, rgb in colours.items()}
    assert answers == alone
    assert {name: correct(answers[name], name) for name in colours} == dict.fromkeys(colours, True), answers
