"""How well the default model sees: accuracy on easy-vqa's test split and on held-out scenes
(by question kind, counting of mixed shapes on its own; and in wordings training never
uses), follow-ups at turns 2-4, the
description written on upload; and how far its text chat stays from the float32 nets and
from SmolLM2 as published.

    python -m training.evaluate [--model smollm2-vision] [--weights int8] [--easy-vqa 1000] [--scenes 500]
                                [--reworded 200] [--follow-ups 200] [--describe 100]

Runs the product path end to end (image file -> preprocessing -> ONNX vision net -> splice
-> split-net language model -> greedy answer). An answer counts when the expected word is
in the reply (for yes/no questions: that word and not the other). A follow-up is asked after
the model answered the earlier turns itself. Prints accuracy per question kind and a sample
of question/answer pairs.
"""
from __future__ import annotations

import argparse
import collections
from collections import Counter
import os
import random
import re
import time

import numpy as np

from language.sampling import SamplingSettings
from language.families import Turn
from training.examples import COLOURS_SEEN, KINDS, Example, easy_vqa, generated, scene_labels
from training.scenes import COLOURS, NUMBERS, SHAPES, draw_scene, random_scene
from web.handlers import DESCRIBE_PROMPT
from vision.preprocess import load_image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HELD_OUT_SEED = 10_000  # training draws scenes from seed 1; this set never overlaps
GREEDY = SamplingSettings(max_new_tokens=24)
TEXT_GREEDY = SamplingSettings(max_new_tokens=48)
TEXT_PROMPTS = (  # general chat, nothing about pictures: what the vision training must not change
    "What is the capital of France?", "Write a short poem about the sea.", "List three fruits.",
    "Explain what a computer is in two sentences.", "How do I boil an egg?", "What is 12 plus 30?",
    "Translate 'good morning' into Spanish.", "Give me a name for a black cat.", "Why is the sky blue?",
    "What do bees make?", "Suggest a title for a story about a lost key.", "Who wrote Romeo and Juliet?",
    "What is the opposite of cold?", "Name a planet in our solar system.", "How many days are in a week?",
    "Tell me a fun fact about octopuses.", "What should I pack for a day at the beach?",
    "Describe a rainy day in one sentence.", "What is water made of?", "Say hello in a friendly way.")


def correct(reply: str, expected: str) -> bool:
    """Every expected word is in the reply (a plural counts); "yes" and "no" also exclude each other."""
    words = set(re.findall(r"[a-z]+", reply.lower()))
    if expected in ("yes", "no"):
        return expected in words and ({"yes", "no"} - {expected}).isdisjoint(words)
    return all(word in words or word + "s" in words for word in expected.split())


def named_groups(reply: str) -> Counter:
    """What a description names: {(colour, kind): how many}, from 'a red circle and two blue squares'."""
    numbers = {word: n for n, word in enumerate(NUMBERS)} | {"a": 1, "an": 1}
    pattern = rf"\b({'|'.join(numbers)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})s?\b"
    found: Counter = Counter()
    for number, colour, kind in re.findall(pattern, reply.lower()):
        found[(colour, kind)] += numbers[number]
    return found


def kind(example: Example) -> str:
    """The question's kind; counting over shapes of more than one kind or colour is its own."""
    kinds, colours = example.labels[KINDS], example.labels[COLOURS_SEEN]
    mixed = sum(k > 0 for k in kinds) > 1 or sum(c > 0 for c in colours) > 1
    return "count (mixed)" if example.kind == "count" and mixed else example.kind or "other"


def follow_up_examples(count: int, seed: int) -> list[Example]:
    """Questions about drawn scenes asked after one to three earlier turns."""
    return [e for e in generated(count * 3, seed, follow_ups=1.0) if e.history][:count]


def reworded_examples(count: int, seed: int) -> list[Example]:
    """Questions about held-out scenes in wordings that training/scenes.py never uses: how far
    the model understands the question rather than recognising a template."""
    rng, examples = random.Random(seed), []
    while len(examples) < count:
        scene = random_scene(rng)
        draw = (lambda s=scene, k=rng.randrange(2**31): draw_scene(s, random.Random(k)))
        kinds, colours = scene.kinds(), scene.colours()
        kind, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        asked = [("count", rng.choice(("Can you tell me how many shapes appear here?", "What's the total number of objects?",
                                       "How many separate figures does this image contain?", "Number of shapes?")),
                  NUMBERS[scene.count]),
                 ("count", rng.choice((f"How many {kind}s appear in it?", f"What's the number of {kind}s here?")),
                  NUMBERS[kinds[kind]]),
                 ("yes/no", rng.choice((f"Does the image contain a {kind}?", f"Would you say there's a {kind} here?")),
                  "yes" if kind in kinds else "no"),
                 ("yes/no", rng.choice((f"Are any of the objects {colour}?", f"Is anything here coloured {colour}?")),
                  "yes" if colour in colours else "no")]
        if scene.alone("kind"):
            shape = rng.choice(scene.alone("kind"))
            asked.append(("colour", rng.choice((f"What's the {shape.kind}'s colour?", f"Tell me which colour the {shape.kind} has.",
                                                f"The {shape.kind}: what colour?")), shape.colour))
        if scene.alone("colour"):
            shape = rng.choice(scene.alone("colour"))
            asked.append(("shape", rng.choice((f"Name the shape that is {shape.colour}.",
                                               f"The {shape.colour} object, what shape is it?")), shape.kind))
        question_kind, question, expected = rng.choice(asked)
        examples.append(Example(draw, question, "", expected, scene_labels(scene), kind=question_kind))
    return examples


def ask(model, example: Example) -> tuple[str, int]:
    """The model's reply to the example's question, after it answered the earlier turns itself
    (as in the app, the picture comes with the first of them); and the turn's number."""
    image, history = load_image(example.image()), []
    for question, _ in example.history:
        history.append(Turn(question, model.reply(history, question, GREEDY, image=image).answer))
    return model.reply(history, example.question, GREEDY, image=image).answer, len(history) + 1


def evaluate(model, examples: list[Example], label: str, show: int) -> float:
    """Accuracy by question kind, and for follow-ups by turn (single questions are turn 1)."""
    hits, totals, samples = collections.Counter(), collections.Counter(), []
    start = time.perf_counter()
    for example in examples:
        answer, turn = ask(model, example)
        ok = correct(answer, example.expected)
        for key in (kind(example), f"turn {turn}"):
            hits[key] += ok
            totals[key] += 1
        if len(samples) < show:
            samples.append((example.question, answer, example.expected, ok))
    accuracy = sum(hits[k] for k in totals if k.startswith("turn")) / len(examples)
    by = lambda keys: ", ".join(f"{k} {hits[k] / totals[k]:.1%} ({totals[k]})" for k in sorted(keys))  # noqa: E731
    print(f"\n{label}: {accuracy:.1%} of {len(examples)} questions ({time.perf_counter() - start:.0f} s)"
          f"\n  by kind: {by(k for k in totals if not k.startswith('turn'))}")
    if len([k for k in totals if k.startswith("turn")]) > 1:
        print(f"  by turn: {by(k for k in totals if k.startswith('turn'))}")
    for question, answer, expected, ok in samples:
        print(f"  {'ok ' if ok else 'BAD'} Q: {question}  A: {answer}  (expected: {expected})")
    return accuracy


def describe_on_upload(model, count: int, seed: int, show: int) -> float:
    """The description the app writes on upload: right when it names every shape's colour and
    kind, with the right counts, and nothing else (scenes of one to three shapes)."""
    rng, right, samples = random.Random(seed), 0, []
    scenes = [s for s in (random_scene(rng) for _ in range(count * 2)) if s.count <= 3][:count]
    for scene in scenes:
        image = load_image(draw_scene(scene, random.Random(rng.randrange(2**31))))
        answer = model.reply([], DESCRIBE_PROMPT, GREEDY, image=image).answer
        expected = Counter({(colour, kind): n for n, colour, kind in scene.groups()})
        ok = named_groups(answer) == expected
        right += ok
        if len(samples) < show:
            samples.append((answer, scene.describe(), ok))
    print(f"\ndescribe on upload: {right / len(scenes):.1%} of {len(scenes)} scenes of 1-3 shapes name every "
          "shape's count, colour and kind")
    for answer, truth, ok in samples:
        print(f"  {'ok ' if ok else 'BAD'} {answer}  (drawn: {truth})")
    return right / len(scenes)


def answer_logprob(model, prompt: str, answer: str) -> float:
    """The model's mean log-probability per token of `answer` to `prompt` (teacher-forced)."""
    ids = model.tokenizer.encode(answer, add_special_tokens=False)
    logits, total = model.generator.prefill(model.family.encode([], prompt).ids), 0.0
    for token in ids:
        shifted = logits - logits.max()
        total += float(shifted[token] - np.log(np.exp(shifted).sum()))
        logits = model.generator.decode(token)
    return total / max(len(ids), 1)


def text_agreement(model, reference, label: str, show: int) -> float:
    """How closely the model's greedy text answers follow the reference's: identical answers, the
    share of answer tokens before the two part, and how likely the reference finds the model's
    answers against its own (mean log-probability per token; averaged over TEXT_PROMPTS)."""
    same, agreeing, theirs_lp, ours_lp, differ = 0, [], [], [], []
    for prompt in TEXT_PROMPTS:
        ours, theirs = (m.reply([], prompt, TEXT_GREEDY).answer for m in (model, reference))
        a, b = (model.tokenizer.encode(text, add_special_tokens=False) for text in (ours, theirs))
        shared = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        agreeing.append(shared / max(len(a), len(b), 1))
        ours_lp.append(answer_logprob(reference, prompt, ours))
        theirs_lp.append(answer_logprob(reference, prompt, theirs))
        same += ours == theirs
        if ours != theirs and len(differ) < show:
            differ.append((prompt, ours, theirs))
    print(f"\ntext chat against {label}: {same} of {len(TEXT_PROMPTS)} greedy answers identical, "
          f"{np.mean(agreeing):.0%} of tokens agree before the answers part; the reference's mean "
          f"log-probability per token of these answers {np.mean(ours_lp):.3f}, of its own {np.mean(theirs_lp):.3f}")
    for prompt, ours, theirs in differ:
        print(f"  Q: {prompt}\n    this:      {ours!r}\n    reference: {theirs!r}")
    return same / len(TEXT_PROMPTS)


def main() -> None:
    from models.loader import load_chat_model
    from models.cpu_weights import WEIGHTS
    from models.catalog import DEFAULT_CPU_WEIGHTS, DEFAULT_MODEL, TEXT_MODEL, prepare_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--weights", choices=list(WEIGHTS), default=DEFAULT_CPU_WEIGHTS,
                        help="a named model's CPU weights (default: what the app runs)")
    parser.add_argument("--easy-vqa", type=int, default=1000, help="test questions to ask (0 = all 9,673)")
    parser.add_argument("--scenes", type=int, default=500, help="held-out scene questions to ask")
    parser.add_argument("--reworded", type=int, default=200,
                        help="held-out scene questions in wordings training never uses")
    parser.add_argument("--follow-ups", type=int, default=200, help="held-out follow-up questions to ask")
    parser.add_argument("--describe", type=int, default=100, help="held-out pictures to describe as on upload")
    parser.add_argument("--show", type=int, default=8, help="question/answer pairs to print per set")
    parser.add_argument("--seed", type=int, default=0, help="which easy-vqa questions are sampled")
    args = parser.parse_args()

    model = load_chat_model(prepare_model(args.model, weights=args.weights))
    print(f"{model.name} on {model.runs_on}")
    test = easy_vqa("test")
    if args.easy_vqa:
        test = random.Random(args.seed).sample(test, args.easy_vqa)
    evaluate(model, test, "easy-vqa test", args.show)
    evaluate(model, generated(args.scenes, seed=HELD_OUT_SEED), "held-out scenes, single questions", args.show)
    if args.reworded:
        evaluate(model, reworded_examples(args.reworded, HELD_OUT_SEED + 6), "held-out scenes, reworded questions",
                 args.show)
    if args.follow_ups:
        evaluate(model, follow_up_examples(args.follow_ups, HELD_OUT_SEED + 1), "held-out scenes, follow-ups at turns 2-4",
                 args.show)
    if args.describe:
        describe_on_upload(model, args.describe, HELD_OUT_SEED + 2, args.show)
    if args.weights != "fp32":
        full = load_chat_model(prepare_model(args.model, weights="fp32"))
        text_agreement(model, full, f"{args.model} with fp32 weights", min(args.show, 3))
    if args.model != TEXT_MODEL:
        untouched = load_chat_model(prepare_model(TEXT_MODEL, weights="fp32"))
        text_agreement(model, untouched, f"{TEXT_MODEL} as published (fp32)", min(args.show, 3))


if __name__ == "__main__":
    main()
