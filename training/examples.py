"""Training and evaluation examples: image question/answer pairs and text-only prompts.

Each example carries the label indices the vision tower's auxiliary heads learn from
(-1 where a label is unknown), and the word an evaluation looks for in the reply.
"""
from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from training.scenes import COLOURS, POSITIONS, draw_scene, questions, random_scene, reasoned

SHAPE_LABELS = ("circle", "rectangle", "square", "triangle", "star")
COLOUR_LABELS = tuple(COLOURS)
POSITION_LABELS = tuple(POSITIONS)
COUNT_LABELS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Example:
    image: Callable[[], Image.Image] | None  # None: a text-only example
    question: str
    answer: str
    expected: str  # the word an evaluation looks for in the reply
    labels: tuple[int, int, int, int] = (-1, -1, -1, -1)  # shape, colour, count, position


def _label(value, table) -> int:
    return table.index(value) if value in table else -1


def easy_vqa(split: str) -> list[Example]:
    """The easy-vqa package's questions, answered in the same short style as the scenes."""
    import easy_vqa

    get_questions = easy_vqa.get_train_questions if split == "train" else easy_vqa.get_test_questions
    get_paths = easy_vqa.get_train_image_paths if split == "train" else easy_vqa.get_test_image_paths
    texts, answers, image_ids = get_questions()
    paths = get_paths()
    truth: dict[int, dict] = collections.defaultdict(dict)  # what each image shows, from its what-questions
    for answer, image_id in zip(answers, image_ids):
        if answer in SHAPE_LABELS:
            truth[image_id]["shape"] = answer
        elif answer in COLOUR_LABELS:
            truth[image_id]["colour"] = answer
    examples = []
    for text, answer, image_id in zip(texts, answers, image_ids):
        known = truth[image_id]
        labels = (_label(known.get("shape"), SHAPE_LABELS), _label(known.get("colour"), COLOUR_LABELS), 0, -1)
        reply = f"{answer.capitalize()}."
        if answer in ("yes", "no"):
            asked = "shape" if any(shape in text for shape in SHAPE_LABELS) else "colour"
            if asked in known:
                reply = reasoned(answer, **{asked: known[asked]})
        examples.append(Example(_opener(paths[image_id]), text[0].upper() + text[1:], reply, answer, labels))
    return examples



def _opener(path: str) -> Callable[[], Image.Image]:
    return lambda: Image.open(path).convert("RGB")


def generated(count: int, seed: int) -> list[Example]:
    """`count` questions about freshly drawn scenes; different seeds give disjoint sets."""
    rng = random.Random(seed)
    examples: list[Example] = []
    while len(examples) < count:
        scene = random_scene(rng)
        scene_seed = rng.randrange(2**31)
        labels = (_label(scene.shape, SHAPE_LABELS), _label(scene.colour, COLOUR_LABELS),
                  _label(scene.count, COUNT_LABELS), _label(scene.position, POSITION_LABELS))
        draw = (lambda s=scene, k=scene_seed: draw_scene(s, random.Random(k)))
        for question, answer, word in questions(scene, rng):
            examples.append(Example(draw, question, answer, word, labels))
    return examples[:count]


TEXT_PROMPTS = [
    *(f"What is the capital of {country}?" for country in
      ("France", "Germany", "Italy", "Spain", "Japan", "China", "Canada", "Brazil", "Egypt", "India",
       "Russia", "Mexico", "Australia", "Kenya", "Norway")),
    *(f"Write a short poem about {topic}." for topic in ("the sea", "autumn", "a cat", "the moon", "coffee")),
    *(f"Explain {topic} in simple terms." for topic in
      ("photosynthesis", "gravity", "what a CPU does", "how rain forms", "what a computer network is",
       "why the sky is blue", "how vaccines work", "what an atom is")),
    *(f"Give me three tips for {goal}." for goal in
      ("sleeping better", "learning a language", "staying focused", "saving money", "cooking rice")),
    "Hello! How are you today?", "Who are you?", "Tell me a joke.", "What is 12 plus 7?",
    "Translate 'good morning' into French.", "What are the colors of the rainbow?",
    "Name three animals that live in the ocean.", "What is the boiling point of water?",
    "Summarize the story of Cinderella in two sentences.", "What day comes after Monday?",
]


def text_only(answers: dict[str, str]) -> list[Example]:
    """Text chat examples answered by the untouched language model, so adapting it to images
    does not change how it chats without one."""
    return [Example(None, prompt, answer, "") for prompt, answer in answers.items()]

