"""Pictures the project draws itself, with conversations about them.

A scene is one to four flat shapes, each of its own kind, colour and size, anywhere in the
frame (some touching its border), on a plain, shaded or speckled background; the picture is
then resized to another size and aspect, and often saved as a JPEG, as uploads are. Its
labels give questions about counting (of all shapes and of one kind), the colour of one
shape among several, the kind of a colour, presence, position (where one shape is, which
shape is furthest left/right/up/down) and descriptions that name every shape with its
colour. Each kind of question has many phrasings, so that the model learns the picture
rather than the template. Seeds make every set reproducible; training and held-out sets use
disjoint seed ranges.
"""
from __future__ import annotations

import io
import math
import random
from collections import Counter
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
           "black": (20, 20, 20), "gray": (128, 128, 128), "brown": (130, 80, 40), "teal": (0, 128, 128),
           "orange": (250, 140, 20), "purple": (140, 50, 170)}
# The same names as HTML/CSS (and PIL's ImageColor) define them: pictures people draw often
# use these, so a shape's colour is drawn anywhere between the two.
NAMED_COLOURS = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
                 "black": (0, 0, 0), "gray": (128, 128, 128), "brown": (165, 42, 42), "teal": (0, 128, 128),
                 "orange": (255, 165, 0), "purple": (128, 0, 128)}
SHAPES = ("circle", "square", "triangle", "star")
POSITIONS = ("left", "right", "top", "bottom", "center")
WHERE = {"left": "On the left.", "right": "On the right.", "top": "At the top.", "bottom": "At the bottom.",
         "center": "In the center."}
COUNTS = (1, 2, 3, 4)  # how many shapes a scene holds
NUMBERS = ("none", "one", "two", "three", "four")
SIZE = 224


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    x: float  # centre, as a fraction of the width (0 = left edge)
    y: float  # centre, as a fraction of the height (0 = top edge)
    radius: float  # as a fraction of the picture's side

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def region(self) -> str | None:
        """Where the shape is in the frame, or None where no one word says it (a corner)."""
        dx, dy = self.x - 0.5, self.y - 0.5
        if max(abs(dx), abs(dy)) < 0.12:
            return "center"
        if abs(dx) > 1.6 * abs(dy):
            return "left" if dx < 0 else "right"
        if abs(dy) > 1.6 * abs(dx):
            return "top" if dy < 0 else "bottom"
        return None


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]

    @property
    def count(self) -> int:
        return len(self.shapes)

    def kinds(self) -> Counter:
        return Counter(s.kind for s in self.shapes)

    def colours(self) -> Counter:
        return Counter(s.colour for s in self.shapes)

    def alone(self, attribute: str) -> list[Shape]:
        """The shapes that no other shape shares their `attribute` ("kind" or "colour") with."""
        seen = Counter(getattr(s, attribute) for s in self.shapes)
        return [s for s in self.shapes if seen[getattr(s, attribute)] == 1]

    def groups(self) -> list[tuple[int, str, str]]:
        """(how many, colour, kind) for each kind of shape seen, from left to right."""
        seen = Counter((s.colour, s.kind) for s in self.shapes)
        order = dict.fromkeys((s.colour, s.kind) for s in sorted(self.shapes, key=lambda s: s.x))
        return [(seen[key], *key) for key in order]

    def listing(self) -> str:
        """'a red circle and two blue squares'"""
        parts = [f"{article(colour) if n == 1 else NUMBERS[n]} {colour} {kind}{'s' if n > 1 else ''}"
                 for n, colour, kind in self.groups()]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    def describe(self) -> str:
        text = self.listing()
        if self.count == 1 and self.shapes[0].region is not None:
            where = WHERE[self.shapes[0].region]
            text += " " + where[0].lower() + where[1:-1]
        return text[0].upper() + text[1:] + "."


def random_scene(rng: random.Random) -> Scene:
    count = rng.choice(COUNTS)
    style = rng.random()
    kinds = [rng.choice(SHAPES)] * count if style < 0.35 else [rng.choice(SHAPES) for _ in range(count)]
    colours = ([rng.choice(list(COLOURS))] * count if style < 0.2 or 0.35 <= style < 0.5
               else [rng.choice(list(COLOURS)) for _ in range(count)])
    radius = rng.uniform(0.07, 0.2) if count == 1 else rng.uniform(0.055, 0.15 if count == 2 else 0.12)
    shapes: list[Shape] = []
    while len(shapes) < count:
        r = radius * rng.uniform(0.75, 1.25)
        x, y = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)  # touching the border at the extremes
        if all(math.hypot(x - s.x, y - s.y) > 1.15 * (r + s.radius) for s in shapes):
            shapes.append(Shape(kinds[len(shapes)], colours[len(shapes)], x, y, r))
    return Scene(tuple(shapes))


def _background(fills: list[tuple[int, int, int]], rng: random.Random) -> Image.Image:
    """A plain, shaded or speckled background that none of the shapes' `fills` blends into."""
    while True:  # light most often, sometimes a greyish tone from dark to light
        grey = rng.randint(215, 255) if rng.random() < 0.7 else rng.randint(60, 235)
        base = [max(0, min(255, grey + rng.randint(-25, 25))) for _ in range(3)]
        if all(math.dist(base, fill) > 140 for fill in fills):
            break
    image = Image.new("RGB", (SIZE, SIZE), tuple(base))
    style = rng.random()
    if style < 0.25:  # a vertical shade
        other = [max(0, min(255, c + rng.randint(-40, 40))) for c in base]
        draw = ImageDraw.Draw(image)
        for row in range(SIZE):
            t = row / (SIZE - 1)
            draw.line([(0, row), (SIZE, row)], fill=tuple(round(a + (b - a) * t) for a, b in zip(base, other)))
    elif style < 0.4:  # speckles
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(100, 600)):
            x, y = rng.randrange(SIZE), rng.randrange(SIZE)
            draw.point((x, y), fill=tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in base))
    return image


def _polygon(kind: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = [(math.cos(turn + k * math.pi / 2 + math.pi / 4), math.sin(turn + k * math.pi / 2 + math.pi / 4))
                   for k in range(4)]
    elif kind == "triangle":
        corners = [(math.cos(turn + k * 2 * math.pi / 3 - math.pi / 2), math.sin(turn + k * 2 * math.pi / 3 - math.pi / 2))
                   for k in range(3)]
    else:  # star: ten points alternating outer and inner radius
        corners = [((1 if k % 2 == 0 else 0.45) * math.cos(turn + k * math.pi / 5 - math.pi / 2),
                    (1 if k % 2 == 0 else 0.45) * math.sin(turn + k * math.pi / 5 - math.pi / 2)) for k in range(10)]
    return [(cx + r * x, cy + r * y) for x, y in corners]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, colour: tuple[int, int, int], turn: float) -> None:
    cx, cy, r = shape.x * SIZE, shape.y * SIZE, shape.radius * SIZE
    if shape.kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon(_polygon(shape.kind, cx, cy, r, turn), fill=colour)


def _fill(colour: str, rng: random.Random) -> tuple[int, int, int]:
    """An RGB that people call `colour`: between the palette's tone and the named one, give or take."""
    t = rng.random()
    return tuple(max(0, min(255, round(a + (b - a) * t) + rng.randint(-12, 12)))
                 for a, b in zip(COLOURS[colour], NAMED_COLOURS[colour]))


def draw_scene(scene: Scene, rng: random.Random) -> Image.Image:
    fills = [_fill(shape.colour, rng) for shape in scene.shapes]
    image = _background(fills, rng)
    draw = ImageDraw.Draw(image)
    for shape, fill in zip(scene.shapes, fills):
        _draw_shape(draw, shape, fill, rng.uniform(-0.25, 0.25) if shape.kind != "circle" else 0.0)
    return _as_uploaded(image, rng)


def _as_uploaded(image: Image.Image, rng: random.Random) -> Image.Image:
    """Another size and aspect, and often a JPEG's artefacts, as people's pictures come."""
    if rng.random() < 0.6:
        width = rng.randint(120, 520)
        image = image.resize((width, max(96, round(width * rng.uniform(0.7, 1.4)))), Image.BICUBIC)
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=rng.randint(30, 90))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    expected: str  # the words a correct reply holds, space-separated ("yes"/"no" exclude each other)
    kind: str  # what is asked: count, colour, shape, yes/no, position, describe


def _phrase(rng: random.Random, *forms: str) -> str:
    text = rng.choice(forms)
    lead = rng.random()
    if lead < 0.12:
        text = "Please tell me: " + text[0].lower() + text[1:]
    elif lead < 0.2:
        text = rng.choice(("Quick question. ", "Look at the picture. ", "OK. ", "Now: ")) + text
    if rng.random() < 0.08:
        text = text.lower()
    if rng.random() < 0.08:
        text = text.rstrip("?.")
    return text


def _things(rng: random.Random) -> str:
    return rng.choice(("shapes", "objects", "things", "figures", "items"))


def _picture(rng: random.Random) -> str:
    return rng.choice(("picture", "image", "photo", "drawing", "scene"))


def _colour_word(rng: random.Random) -> str:
    return rng.choice(("colour", "color"))


def _number(n: int) -> str:
    return f"{NUMBERS[n].capitalize()}."


def questions(scene: Scene, rng: random.Random) -> list[QA]:
    """Questions of every kind that the scene can answer, each with its answer."""
    things, picture, colour_word = _things(rng), _picture(rng), _colour_word(rng)
    kinds, colours = scene.kinds(), scene.colours()
    qa = [
        QA(_phrase(rng, f"How many {things} are there?", f"How many {things} are in the {picture}?",
                   f"Count the {things}.", f"How many {things} can you see?", f"What is the number of {things}?",
                   f"How many {things} do you see in this {picture}?", f"Count the {things} in the {picture}."),
           _number(scene.count), NUMBERS[scene.count], "count"),
        QA(_phrase(rng, "Describe the image.", "What do you see?", f"What is in this {picture}?",
                   f"Describe the {picture}.", f"What does the {picture} show?", f"Tell me what is in the {picture}.",
                   f"What {things} are in the {picture}?", f"List the {things} you see."),
           scene.describe(), " ".join(sorted({w for _, c, k in scene.groups() for w in (c, k)})), "describe"),
    ]
    asked = rng.choice([k for k in SHAPES if k in kinds] + [rng.choice(SHAPES)])
    n = kinds[asked]
    qa.append(QA(_phrase(rng, f"How many {asked}s are there?", f"How many {asked}s do you see?",
                         f"Count the {asked}s.", f"How many {asked}s are in the {picture}?"),
                 _number(n), NUMBERS[n], "count"))
    if scene.count == 1:
        shape = scene.shapes[0]
        qa.append(QA(_phrase(rng, f"What {colour_word} is the {rng.choice(('shape', shape.kind, 'object'))}?",
                             f"What {colour_word} is it?", f"Which {colour_word} does the {shape.kind} have?",
                             f"Tell me the {colour_word} of the shape."),
                     f"{shape.colour.capitalize()}.", shape.colour, "colour"))
        qa.append(QA(_phrase(rng, f"What shape is in the {picture}?", "What shape is this?", "What kind of shape is it?",
                             "Which shape do you see?", f"What is the {shape.colour} thing?"),
                     f"A {shape.kind}.", shape.kind, "shape"))
        if shape.region is not None:
            qa.append(QA(_phrase(rng, f"Where is the {rng.choice((shape.kind, 'shape', shape.name))}?",
                                 f"Where in the {picture} is the {shape.kind}?", "In which part of the picture is it?"),
                         WHERE[shape.region], shape.region, "position"))
    else:
        if scene.alone("kind"):
            shape = rng.choice(scene.alone("kind"))
            qa.append(QA(_phrase(rng, f"What {colour_word} is the {shape.kind}?", f"Which {colour_word} is the {shape.kind}?",
                                 f"What is the {colour_word} of the {shape.kind}?", f"The {shape.kind} is what {colour_word}?"),
                         f"{shape.colour.capitalize()}.", shape.colour, "colour"))
        if scene.alone("colour"):
            shape = rng.choice(scene.alone("colour"))
            qa.append(QA(_phrase(rng, f"What shape is the {shape.colour} one?", f"What is the {shape.colour} shape?",
                                 f"Which shape is {shape.colour}?", f"What kind of shape is {shape.colour}?"),
                         f"A {shape.kind}.", shape.kind, "shape"))
        distinct = sorted(colours, key=lambda c: min(s.x for s in scene.shapes if s.colour == c))
        qa.append(QA(_phrase(rng, f"What {colour_word}s are the {things}?", f"Which {colour_word}s do you see?",
                             f"What {colour_word}s are in the {picture}?"),
                     _and(distinct) + ".", " ".join(distinct), "colour"))
        qa += _extremes(scene, rng)
    qa.append(_presence(scene, rng))
    return qa


def _and(words: list[str]) -> str:
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return text[0].upper() + text[1:]


SIDES = {"left": ("x", 1), "right": ("x", -1), "top": ("y", 1), "bottom": ("y", -1)}


def extreme(scene: Scene, side: str) -> Shape | None:
    """The shape clearly further to `side` ("left", "right", "top", "bottom") than all others, if one is."""
    key, sign = SIDES[side]
    ranked = sorted(scene.shapes, key=lambda s: sign * getattr(s, key))
    if len(ranked) > 1 and sign * (getattr(ranked[1], key) - getattr(ranked[0], key)) > 0.2:
        return ranked[0]
    return None


def _extremes(scene: Scene, rng: random.Random) -> list[QA]:
    """'What is on the left?' where one shape is clearly further that way than the others."""
    out = []
    for side in SIDES:
        shape = extreme(scene, side)
        if shape is not None:
            word = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}[side]
            out.append(QA(_phrase(rng, f"What is {word}?", f"Which shape is {word}?", f"What do you see {word}?",
                                  f"Which {rng.choice(('shape', 'object'))} is furthest {'up' if side == 'top' else 'down' if side == 'bottom' else side}?"),
                          f"{article(shape.name).capitalize()} {shape.name}.", shape.name, "position"))
    return rng.sample(out, min(len(out), 1))


def _presence(scene: Scene, rng: random.Random) -> QA:
    """A yes/no question, answered by first naming what is there: 'I see a red circle, so no.'

    Naming what is seen before the verdict turns the question into a comparison of words the
    language model has just written, which a 135 M model learns far faster than answering
    yes/no straight from the picture's rows."""
    kinds, colours = scene.kinds(), scene.colours()
    pairs = {(s.colour, s.kind) for s in scene.shapes}
    ask_present = rng.random() < 0.5
    style = rng.choice(("kind", "colour", "both"))
    if style == "kind":
        kind = rng.choice(list(kinds)) if ask_present else rng.choice([k for k in SHAPES if k not in kinds] or SHAPES)
        question, present = rng.choice((f"Is there a {kind}?", f"Do you see a {kind}?", f"Is there a {kind} in the picture?",
                                         f"Can you see any {kind}s?")), kind in kinds
    elif style == "colour":
        colour = rng.choice(list(colours)) if ask_present else rng.choice([c for c in COLOURS if c not in colours])
        question, present = rng.choice((f"Is there a {colour} shape?", f"Is anything {colour}?",
                                         f"Do you see something {colour}?", f"Is there any {colour} in the picture?")), colour in colours
    else:
        shape = rng.choice(scene.shapes)
        colour, kind = shape.colour, shape.kind
        if not ask_present:
            if rng.random() < 0.5:
                colour = rng.choice([c for c in COLOURS if (c, kind) not in pairs])
            else:
                kind = rng.choice([k for k in SHAPES if (colour, k) not in pairs] or SHAPES)
        question, present = rng.choice((f"Is there a {colour} {kind}?", f"Do you see a {colour} {kind}?",
                                         f"Is the {kind} {colour}?" if scene.count == 1 else f"Is there a {colour} {kind} here?")), \
            (colour, kind) in pairs
    verdict = "yes" if present else "no"
    return QA(_phrase(rng, question), f"I see {scene.listing()}, so {verdict}.", verdict, "yes/no")


def reasoned(verdict: str, shape: str | None = None, colour: str | None = None, count: int = 1) -> str:
    """easy-vqa's yes/no answers in the same reasoning style: 'It is red, so no.'"""
    subject = "It is" if count == 1 else "They are"
    seen = (f"a {shape}" if count == 1 else f"{shape}s") if shape is not None else colour
    return f"{subject} {seen}, so {verdict}."


# The web app's example pictures: what the shipped tower answers well (one kind and colour).
EXAMPLES = {"red-circle": Scene((Shape("circle", "red", 0.5, 0.5, 0.16),)),
            "three-blue-squares": Scene((Shape("square", "blue", 0.25, 0.3, 0.1), Shape("square", "blue", 0.7, 0.35, 0.1),
                                         Shape("square", "blue", 0.45, 0.75, 0.1))),
            "green-triangle-left": Scene((Shape("triangle", "green", 0.24, 0.5, 0.15),)),
            "yellow-star-top": Scene((Shape("star", "yellow", 0.5, 0.23, 0.15),))}


def draw_example(scene: Scene) -> Image.Image:
    """An example picture: the scene on a plain light background, at the model's input size."""
    image = Image.new("RGB", (SIZE, SIZE), (246, 246, 250))
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        _draw_shape(draw, shape, COLOURS[shape.colour], 0.0)
    return image


if __name__ == "__main__":
    import sys
    from pathlib import Path

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "web/examples")  # the web app's example pictures
    folder.mkdir(parents=True, exist_ok=True)
    for name, scene in EXAMPLES.items():
        draw_example(scene).save(folder / f"{name}.png", optimize=True)
