"""How well the default model sees: accuracy on easy-vqa's test split and on held-out scenes.

    python -m training.evaluate [--model smollm2-vision] [--easy-vqa 1000] [--scenes 500]

Runs the product path end to end (image file -> preprocessing -> ONNX vision net -> splice
-> split-net language model -> greedy answer). An answer counts when the expected word is
in the reply (for yes/no questions: that word and not the other). Prints accuracy per
question kind and a sample of question/answer pairs.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import re
import time

from language.sampling import SamplingSettings
from training.examples import Example, easy_vqa, generated
from vision.preprocess import load_image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HELD_OUT_SEED = 10_000  # training draws scenes from seed 1; this set never overlaps
GREEDY = SamplingSettings(max_new_tokens=24)


def correct(reply: str, expected: str) -> bool:
    words = set(re.findall(r"[a-z]+", reply.lower()))
    if expected in ("yes", "no"):
        return expected in words and ({"yes", "no"} - {expected}).isdisjoint(words)
    return expected in words or expected + "s" in words


def kind(example: Example) -> str:
    if example.expected in ("yes", "no"):
        return "yes/no"
    q = example.question.lower()
    for word in ("colo", "shape", "how many", "where", "describe", "see", "picture"):
        if word in q:
            return {"colo": "colour", "how many": "count", "see": "describe", "picture": "describe"}.get(word, word)
    return "other"


def evaluate(model, examples: list[Example], label: str, show: int) -> float:
    hits, totals, samples = collections.Counter(), collections.Counter(), []
    start = time.perf_counter()
    for example in examples:
        answer = model.reply([], example.question, GREEDY, image=load_image(example.image())).answer
        ok = correct(answer, example.expected)
        hits[kind(example)] += ok
        totals[kind(example)] += 1
        if len(samples) < show:
            samples.append((example.question, answer, example.expected, ok))
    accuracy = sum(hits.values()) / len(examples)
    per_kind = ", ".join(f"{k} {hits[k] / totals[k]:.1%} ({totals[k]})" for k in sorted(totals))
    print(f"\n{label}: {accuracy:.1%} of {len(examples)} questions "
          f"({time.perf_counter() - start:.0f} s)\n  by kind: {per_kind}")
    for question, answer, expected, ok in samples:
        print(f"  {'ok ' if ok else 'BAD'} Q: {question}  A: {answer}  (expected: {expected})")
    return accuracy


def main() -> None:
    from models.loader import load_chat_model
    from models.catalog import DEFAULT_MODEL, prepare_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--easy-vqa", type=int, default=1000, help="test questions to ask (0 = all 9,673)")
    parser.add_argument("--scenes", type=int, default=500, help="held-out scene questions to ask")
    parser.add_argument("--show", type=int, default=8, help="question/answer pairs to print per set")
    parser.add_argument("--seed", type=int, default=0, help="which easy-vqa questions are sampled")
    args = parser.parse_args()

    model = load_chat_model(prepare_model(args.model))
    test = easy_vqa("test")
    if args.easy_vqa:
        test = random.Random(args.seed).sample(test, args.easy_vqa)
    evaluate(model, test, "easy-vqa test", args.show)
    evaluate(model, generated(args.scenes, seed=HELD_OUT_SEED), "held-out scenes", args.show)


if __name__ == "__main__":
    main()
