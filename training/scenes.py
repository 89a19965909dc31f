"""Pictures the project draws itself, with questions and answers about them.

A scene is one or more shapes of one kind and colour on a light background; its labels
(kind, colour, count, position) give questions about colour, shape, count, position and
presence, each with a short answer, and a description. Seeds make every set reproducible;
training and held-out sets use disjoint seed ranges.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
           "black": (20, 20, 20), "gray": (128, 128, 128), "brown": (130, 80, 40), "teal": (0, 128, 128),
           "orange": (250, 140, 20), "purple": (140, 50, 170)}
SHAPES = ("circle", "square", "triangle", "star")
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
             "center": (0.5, 0.5)}
WHERE = {"left": "On the left.", "right": "On the right.", "top": "At the top.", "bottom": "At the bottom.",
         "center": "In the center."}
NUMBERS = ("zero", "one", "two", "three", "four")
SIZE = 224


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    count: int
    position: str | None  # where the single shape is; None when there are several

    def describe(self) -> str:
        if self.count == 1:
            return f"A {self.colour} {self.shape} {WHERE[self.position][0].lower()}{WHERE[self.position][1:]}"
        return f"{NUMBERS[self.count].capitalize()} {self.colour} {self.shape}s."


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(math.cos(turn + k * math.pi / 2 + math.pi / 4), math.sin(turn + k * math.pi / 2 + math.pi / 4))
                   for k in range(4)]
    elif shape == "triangle":
        corners = [(math.cos(turn + k * 2 * math.pi / 3 - math.pi / 2), math.sin(turn + k * 2 * math.pi / 3 - math.pi / 2))
                   for k in range(3)]
    else:  # star: ten points alternating outer and inner radius
        corners = [((1 if k % 2 == 0 else 0.45) * math.cos(turn + k * math.pi / 5 - math.pi / 2),
                    (1 if k % 2 == 0 else 0.45) * math.sin(turn + k * math.pi / 5 - math.pi / 2)) for k in range(10)]
    return [(cx + r * x, cy + r * y) for x, y in corners]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: tuple, cx: float, cy: float, r: float,
                rng: random.Random) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        turn = rng.uniform(-0.2, 0.2) if shape != "star" else rng.uniform(-0.3, 0.3)
        draw.polygon(_polygon(shape, cx, cy, r, turn), fill=colour)


def draw_scene(scene: Scene, rng: random.Random) -> Image.Image:
    shade = rng.randint(235, 255)
    image = Image.new("RGB", (SIZE, SIZE), (shade, shade, rng.randint(235, 255)))
    draw = ImageDraw.Draw(image)
    colour = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in COLOURS[scene.colour])
    if scene.count == 1:
        fx, fy = POSITIONS[scene.position]
        r = rng.uniform(0.12, 0.18) * SIZE
        cx, cy = fx * SIZE + rng.uniform(-8, 8), fy * SIZE + rng.uniform(-8, 8)
        _draw_shape(draw, scene.shape, colour, cx, cy, r, rng)
        return image
    r = rng.uniform(0.08, 0.11) * SIZE
    placed: list[tuple[float, float]] = []
    while len(placed) < scene.count:  # non-overlapping centres
        cx, cy = rng.uniform(r + 4, SIZE - r - 4), rng.uniform(r + 4, SIZE - r - 4)
        if all((cx - x) ** 2 + (cy - y) ** 2 > (2.2 * r) ** 2 for x, y in placed):
            placed.append((cx, cy))
            _draw_shape(draw, scene.shape, colour, cx, cy, r, rng)
    return image


def random_scene(rng: random.Random) -> Scene:
    count = rng.choice((1, 1, 2, 3, 4))
    return Scene(rng.choice(SHAPES), rng.choice(list(COLOURS)), count,
                 rng.choice(list(POSITIONS)) if count == 1 else None)


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """(question, answer, expected word) triples about a scene."""
    colour_word = rng.choice(("colour", "color"))
    other_colour = rng.choice([c for c in COLOURS if c != scene.colour])
    other_shape = rng.choice([s for s in SHAPES if s != scene.shape])
    qa = [
        (f"What {colour_word} is the {rng.choice(('shape', scene.shape))}?" if scene.count == 1
         else f"What {colour_word} are the shapes?", f"{scene.colour.capitalize()}.", scene.colour),
        (rng.choice(("What shape is in the image?", "What shape is this?", "What kind of shape do you see?")),
         f"A {scene.shape}." if scene.count == 1 else f"{scene.shape.capitalize()}s.", scene.shape),
        (rng.choice(("How many shapes are there?", f"How many {scene.shape}s are there?",
                     "How many shapes are in the picture?")), f"{NUMBERS[scene.count].capitalize()}.",
         NUMBERS[scene.count]),
        _yes_no("Is there a {} shape?", scene.colour, other_colour, rng, colour=scene.colour, count=scene.count),
        _yes_no("Is there a {}?", scene.shape, other_shape, rng, shape=scene.shape, count=scene.count),
        (rng.choice(("Describe the image.", "What do you see?", "What is in this picture?")),
         scene.describe(), scene.shape),
    ]
    if scene.count == 1:
        qa.append((rng.choice((f"Where is the {scene.shape}?", "Where is the shape?")),
                   WHERE[scene.position], scene.position))
    return qa


def _yes_no(template: str, present: str, absent: str, rng: random.Random, **seen) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        return template.format(present), reasoned("yes", **seen), "yes"
    return template.format(absent), reasoned("no", **seen), "no"


def reasoned(verdict: str, shape: str | None = None, colour: str | None = None, count: int = 1) -> str:
    """A yes/no answer that first says what is seen: "It is red, so no."

    Naming the attribute before the verdict turns the question into a comparison of two
    words the language model has just read, which a 135 M model learns far faster than
    answering yes/no straight from the image rows.
    """
    subject = "It is" if count == 1 else "They are"
    if shape is not None:
        seen = (f"a {shape}" if count == 1 else f"{shape}s")
    else:
        seen = colour
    return f"{subject} {seen}, so {verdict}."


# The web app's example pictures: (scene, drawing seed), seeds picked so the shipped model names their colour.
EXAMPLES = {"red-circle": (Scene("circle", "red", 1, "center"), 2),
            "three-blue-squares": (Scene("square", "blue", 3, None), 2),
            "green-triangle-left": (Scene("triangle", "green", 1, "left"), 0),
            "yellow-star-top": (Scene("star", "yellow", 1, "top"), 0)}


if __name__ == "__main__":
    import sys
    from pathlib import Path

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "web/examples")  # the web app's example pictures
    folder.mkdir(parents=True, exist_ok=True)
    for name, (scene, seed) in EXAMPLES.items():
        draw_scene(scene, random.Random(name + str(seed or ""))).save(folder / f"{name}.png", optimize=True)
