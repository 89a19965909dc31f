"""Image rows enter the prompt at the family's placeholders and really drive the answer."""
import numpy as np
import pytest
import torch
from PIL import Image

from language.chat import Done
from language.families import Turn
from language.families.llama import IMAGE_PLACEHOLDER_ID
from language.sampling import Sampler, SamplingSettings
from training.torch_llama import transformers_llama
from tests.fixtures.tiny_llama import TINY_LLAMA
from vision.preprocess import to_pixels

GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
RED = Image.new("RGB", (40, 40), (220, 30, 30))
BLUE = Image.new("RGB", (40, 40), (30, 30, 220))


def noise_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8))


def reference_tokens(tensors, tower, prompt, image: Image.Image) -> list[int]:
    """transformers on inputs_embeds with the torch tower's output over the placeholder rows."""
    lm = transformers_llama(TINY_LLAMA, tensors)
    embeds = lm.model.embed_tokens(torch.tensor([prompt.ids])).detach()
    with torch.no_grad():
        prefix = tower(torch.from_numpy(to_pixels(image, tower.config.image_size)))
    rows = prefix.shape[1]
    embeds[0, prompt.image_start:prompt.image_start + rows] = prefix[0]
    with torch.no_grad():
        out = lm.generate(inputs_embeds=embeds, attention_mask=torch.ones(1, len(prompt.ids), dtype=torch.long),
                          max_new_tokens=GREEDY.max_new_tokens, do_sample=False, eos_token_id=[], pad_token_id=0)
    return out[0].tolist()


def test_the_prompt_reserves_placeholder_rows_in_the_first_user_message(tiny_seeing):
    model = tiny_seeing[0]
    prompt = model.family.encode([Turn("What is it?", "A square.")], "And its colour?", image_tokens=4)
    ids, start = prompt.ids, prompt.image_start
    assert ids[start:start + 4] == [IMAGE_PLACEHOLDER_ID] * 4
    text = model.tokenizer.decode(ids)
    before = model.tokenizer.decode(ids[:start])
    assert before.endswith("<|im_start|>user\n") and before.count("<|im_start|>user") == 1
    assert model.tokenizer.decode(ids[start + 4:]).startswith("\nWhat is it?<|im_end|>")  # the picture came first
    assert text.endswith("<|im_start|>assistant\n")
    assert model.family.encode([], "Hi").image_start is None


def test_answers_equal_a_reference_fed_the_same_image_rows(tiny_seeing, monkeypatch):
    model, tensors, tower = tiny_seeing
    monkeypatch.setattr(model.family, "stop_ids", frozenset())
    for image in (RED, noise_image(1)):
        prompt = model.family.encode([], "What is in the picture?", image_tokens=model.vision.rows)
        embeds = model.vision.encode(image).embeds
        from language.generate import ImageRows

        ours = list(model.generator.generate(prompt.ids, Sampler(GREEDY), GREEDY.max_new_tokens,
                                             ImageRows(embeds, prompt.image_start)))
        assert ours == reference_tokens(tensors, tower, prompt, image)


def test_different_images_give_different_answers(tiny_seeing, monkeypatch):
    model = tiny_seeing[0]
    monkeypatch.setattr(model.family, "stop_ids", frozenset())
    answers = {model.reply([], "Describe it.", GREEDY, image=noise_image(seed)).answer for seed in range(4)}
    assert len(answers) == 4


def test_a_follow_up_on_the_same_image_does_not_run_vision_again(tiny_seeing, monkeypatch):
    model = tiny_seeing[0]
    runs = []
    original = model.vision.backend.run
    monkeypatch.setattr(model.vision.backend, "run",
                        lambda net, i, o: (runs.append(net), original(net, i, o))[1])
    image = noise_image(42)
    first = model.reply([], "What is it?", GREEDY, image=image)
    second = model.reply([Turn("What is it?", first.answer)], "Are you sure?", GREEDY, image=image.copy())
    assert runs.count("vision") == 1
    assert not first.image_cached and first.vision_s > 0
    assert second.image_cached and second.vision_s == 0
    model.reply([], "And this one?", GREEDY, image=noise_image(43))
    assert runs.count("vision") == 2


def test_a_model_without_vision_refuses_images_clearly(tiny_model):
    with pytest.raises(ValueError, match="cannot look at images"):
        list(tiny_model.stream([], "What is it?", GREEDY, image=RED))


def test_the_image_survives_when_old_turns_are_dropped(tiny_seeing):
    model = tiny_seeing[0]
    history = [Turn(f"question number {i}", f"answer number {i}") for i in range(12)]
    prompt, dropped = model.fit(history, "And now?", 8, image_tokens=model.vision.rows)
    assert dropped > 0 and prompt.image_start is not None
    assert isinstance(model.reply(history, "And now?", SamplingSettings(max_new_tokens=4), image=BLUE), Done)
