"""Training and evaluation examples: image question/answer pairs and text-only prompts.

Each example carries the labels the vision tower's auxiliary heads learn from (-1 where a
label is unknown), the words an evaluation looks for in the reply, and the earlier turns of
its conversation, if any (the picture belongs to the first of them).
"""
from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from training.scenes import (COLOURS, COUNTS, POSITIONS, SHAPES, SIDES, Scene, draw_scene, extreme, questions, random_scene,
                             reasoned)
from web.handlers import DESCRIBE_PROMPT

SHAPE_LABELS = ("circle", "rectangle", "square", "triangle", "star")
COLOUR_LABELS = tuple(COLOURS)
POSITION_LABELS = POSITIONS
COUNT_LABELS = COUNTS
GRID = 7  # the tower's patch grid: 224 px pictures in 32 px patches
# Where each label sits in Example.labels:
COUNT, POSITION = 0, 1
KINDS = slice(2, 2 + len(SHAPE_LABELS))  # how many of each kind
COLOURS_SEEN = slice(KINDS.stop, KINDS.stop + len(COLOUR_LABELS))  # 0/1: is the colour there
CELL_KINDS = slice(COLOURS_SEEN.stop, COLOURS_SEEN.stop + GRID * GRID)  # per patch: 0, or 1 + the kind centred there
CELL_COLOURS = slice(CELL_KINDS.stop, CELL_KINDS.stop + GRID * GRID)  # per patch: the colour of the shape centred there
# Which colour goes with which kind, and where: (colour, kind) pairs of drawn scenes, numbered
PAIRS = len(COLOUR_LABELS) * len(SHAPES)
PAIR_COUNTS = slice(CELL_COLOURS.stop, CELL_COLOURS.stop + PAIRS)  # how many of each pair (0-4)
MOST_SHAPES = max(COUNT_LABELS)
ORDER = slice(PAIR_COUNTS.stop, PAIR_COUNTS.stop + MOST_SHAPES)  # the pair of each shape from the left; PAIRS: none
EXTREMES = slice(ORDER.stop, ORDER.stop + len(SIDES))  # the pair clearly furthest left/right/up/down, or -1
LABELS = EXTREMES.stop


def pair(colour: str, kind: str) -> int:
    return COLOUR_LABELS.index(colour) * len(SHAPES) + SHAPES.index(kind)


@dataclass(frozen=True)
class Example:
    image: Callable[[], Image.Image] | None  # None: a text-only example
    question: str
    answer: str
    expected: str  # the words a correct reply holds (space-separated; "yes"/"no" exclude each other)
    labels: tuple[int, ...] = (-1,) * LABELS  # what the tower's auxiliary heads learn; -1 where unknown
    history: tuple[tuple[str, str], ...] = ()  # earlier turns about the same picture, first one first
    kind: str = ""  # what is asked: count, colour, shape, yes/no, position, describe


def _label(value, table) -> int:
    return table.index(value) if value in table else -1


def scene_labels(scene: Scene) -> tuple[int, ...]:
    """Total count (index into COUNT_LABELS), the single shape's region, how many of each kind,
    whether each colour is there (0/1), and for each patch of the tower's grid the kind and
    colour of the shape centred in it: a target per object, which a count over the whole
    picture alone does not teach a tower trained from scratch (measured: chance level).
    Then what binds colours to kinds and places: how many of each (colour, kind) pair, the
    pairs from left to right (the order of a description), and the pair at each extreme."""
    region = scene.shapes[0].region if scene.count == 1 else None
    kinds, colours = scene.kinds(), scene.colours()
    cell_kinds, cell_colours = [0] * GRID * GRID, [-1] * GRID * GRID
    for shape in scene.shapes:  # pictures are stretched to a square, so fractions keep their cell
        cell = min(int(shape.y * GRID), GRID - 1) * GRID + min(int(shape.x * GRID), GRID - 1)
        cell_kinds[cell] = 1 + SHAPE_LABELS.index(shape.kind)
        cell_colours[cell] = COLOUR_LABELS.index(shape.colour)
    pairs = collections.Counter(pair(s.colour, s.kind) for s in scene.shapes)
    order = [pair(s.colour, s.kind) for s in sorted(scene.shapes, key=lambda s: s.x)]
    extremes = [extreme(scene, side) for side in SIDES]
    return (_label(scene.count, COUNT_LABELS), _label(region, POSITION_LABELS),
            *(kinds.get(k, 0) if k != "rectangle" else -1 for k in SHAPE_LABELS),
            *(int(c in colours) for c in COLOUR_LABELS), *cell_kinds, *cell_colours,
            *(pairs.get(i, 0) for i in range(PAIRS)), *(order + [PAIRS] * (MOST_SHAPES - len(order))),
            *(-1 if s is None else pair(s.colour, s.kind) for s in extremes))


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
        shape, colour = known.get("shape"), known.get("colour")
        labels = (0, -1, *((int(k == shape) if shape else -1) for k in SHAPE_LABELS),
                  *((int(c == colour) if colour else -1) for c in COLOUR_LABELS),
                  *(-1,) * (LABELS - CELL_KINDS.start))
        reply = f"{answer.capitalize()}."
        if answer in ("yes", "no"):
            asked = "shape" if any(shape in text for shape in SHAPE_LABELS) else "colour"
            if asked in known:
                reply = reasoned(answer, **{asked: known[asked]})
        kind = "yes/no" if answer in ("yes", "no") else "shape" if answer in SHAPE_LABELS else "colour"
        examples.append(Example(_opener(paths[image_id]), text[0].upper() + text[1:], reply, answer, labels, kind=kind))
    return examples



def _opener(path: str) -> Callable[[], Image.Image]:
    return lambda: Image.open(path).convert("RGB")


def generated(count: int, seed: int, follow_ups: float = 0.0) -> list[Example]:
    """`count` questions about freshly drawn scenes; different seeds give disjoint sets.

    A share `follow_ups` of them come after one to three earlier turns about the same picture
    (the first often the description the app asks for on upload), answered correctly."""
    rng = random.Random(seed)
    examples: list[Example] = []
    while len(examples) < count:
        scene = random_scene(rng)
        scene_seed = rng.randrange(2**31)
        labels = scene_labels(scene)
        draw = (lambda s=scene, k=scene_seed: draw_scene(s, random.Random(k)))
        asked = questions(scene, rng)
        for i, qa in enumerate(asked):
            history: tuple[tuple[str, str], ...] = ()
            if rng.random() < follow_ups:
                earlier = [(q.question, q.answer) for q in rng.sample(asked[:i] + asked[i + 1:], rng.randint(1, 3))]
                described = next(q for q in asked if q.kind == "describe")
                if qa is not described and rng.random() < 0.4:  # the app describes a picture on upload
                    earlier = [(DESCRIBE_PROMPT, described.answer)] + [t for t in earlier if t[1] != described.answer][:2]
                history = tuple(earlier)
            examples.append(Example(draw, qa.question, qa.answer, qa.expected, labels, history, qa.kind))
    return examples[:count]


TEXT_PROMPTS = [
    *(f"What is the capital of {country}?" for country in
      ("Portugal", "Germany", "Italy", "Spain", "Japan", "China", "Canada", "Brazil", "Egypt", "India",
       "Russia", "Mexico", "Australia", "Kenya", "Norway")),
    *(f"Write a short poem about {topic}." for topic in ("a river", "autumn", "a cat", "the moon", "coffee")),
    *(f"Explain {topic} in simple terms." for topic in
      ("photosynthesis", "gravity", "what a CPU does", "how rain forms", "what a computer network is",
       "why the sky is blue", "how vaccines work", "what an atom is")),
    *(f"Give me three tips for {goal}." for goal in
      ("sleeping better", "learning a language", "staying focused", "saving money", "cooking rice")),
    "Hello! How are you today?", "Who are you?", "Tell me a joke.", "What is 12 plus 7?",
    "Translate 'good morning' into French.", "What are the colors of the rainbow?",
    "Name three animals that live in the ocean.", "What is the boiling point of water?",
    "Summarize the story of Cinderella in two sentences.", "What day comes after Monday?",
    *(f"What is {a} times {b}?" for a, b in ((3, 4), (6, 7), (9, 5), (8, 8))),
    *(f"Write two sentences about {topic}." for topic in
      ("a busy market", "a mountain hike", "a library", "the first day of school", "a thunderstorm")),
    *(f"What does {word} mean?" for word in ("generous", "ancient", "curious", "fragile", "brief")),
    *(f"How do I {task}?" for task in
      ("make a cup of tea", "plant a tree", "write a thank-you note", "tie a shoelace", "wash my hands properly")),
    *(f"Who was {person}?" for person in ("Albert Einstein", "Marie Curie", "William Shakespeare", "Cleopatra")),
    *(f"Describe {thing} in one sentence." for thing in ("a forest", "the desert", "a snowy morning", "a city at night")),
    "Recommend a good book for a teenager.", "What is the largest animal on Earth?",
    "Can you help me plan a birthday party?", "What is the difference between weather and climate?",
    "Write a haiku about spring.", "What are some healthy breakfast ideas?", "Thank you!",
    "What is your favourite colour?", "Count from one to ten.", "Spell the word 'elephant'.",
    # Requests for lists and names: with too few of them, a picture's listing leaked into the answers.
    *(f"List {n} {things}." for n, things in
      (("four", "musical instruments"), ("three", "kinds of trees"), ("five", "sports played with a ball"),
       ("three", "jobs in a hospital"), ("four", "things found in a kitchen"), ("three", "famous rivers"),
       ("two", "programming languages"), ("three", "board games"), ("five", "words that rhyme with cat"))),
    *(f"Name {things}." for things in
      ("three birds", "a famous painter", "two oceans", "four seasons of the year", "a mammal that can fly",
       "three countries in South America", "a vegetable that is orange", "three kinds of weather")),
    *(f"Give me {what}." for what in
      ("a name for a new coffee shop", "three words that mean happy", "an idea for a weekend trip",
       "a simple recipe for pancakes", "two reasons to learn to swim", "a nickname for a tall friend")),
    *(f"Suggest {what}." for what in ("a hobby for a rainy day", "a gift for my grandmother", "a name for a puppy")),
    *(f"What is {what}?" for what in
      ("the tallest mountain in the world", "the chemical symbol for gold", "the square root of 81", "20 minus 8",
       "a noun", "the main language of Brazil", "the freezing point of water", "the longest river in Africa")),
    *(f"Why do {what}?" for what in ("leaves change colour in autumn", "we need sleep", "cats purr")),
    "Write a limerick about a frog.", "Finish this sentence: The best part of the morning is",
    "Is a tomato a fruit or a vegetable?", "Which is heavier, a kilo of feathers or a kilo of iron?",
    "Tell me something interesting about elephants.", "What rhymes with 'light'?", "Good night!",
    "Can you write a short email asking for a day off?", "What are the three states of matter?",
    "Put these words in alphabetical order: pear, apple, mango.", "What time of day is breakfast eaten?",
]


def text_only(answers: dict[str, str]) -> list[Example]:
    """Text chat examples answered by the untouched language model, so adapting it to images
    does not change how it chats without one."""
    return [Example(None, prompt, answer, "") for prompt, answer in answers.items()]

