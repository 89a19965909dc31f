"""How well the default model sees: accuracy on easy-vqa's test split and on held-out scenes;
and how far its text chat stays from the float32 nets and from SmolLM2 as published.

    python -m training.evaluate [--model smollm2-vision] [--weights int8] [--easy-vqa 1000] [--scenes 500]

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

import numpy as np

from language.sampling import SamplingSettings
from training.examples import Example, easy_vqa, generated
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
    parser.add_argument("--show", type=int, default=8, help="question/answer pairs to print per set")
    parser.add_argument("--seed", type=int, default=0, help="which easy-vqa questions are sampled")
    args = parser.parse_args()

    model = load_chat_model(prepare_model(args.model, weights=args.weights))
    print(f"{model.name} on {model.runs_on}")
    test = easy_vqa("test")
    if args.easy_vqa:
        test = random.Random(args.seed).sample(test, args.easy_vqa)
    evaluate(model, test, "easy-vqa test", args.show)
    evaluate(model, generated(args.scenes, seed=HELD_OUT_SEED), "held-out scenes", args.show)
    if args.weights != "fp32":
        full = load_chat_model(prepare_model(args.model, weights="fp32"))
        text_agreement(model, full, f"{args.model} with fp32 weights", min(args.show, 3))
    if args.model != TEXT_MODEL:
        untouched = load_chat_model(prepare_model(TEXT_MODEL, weights="fp32"))
        text_agreement(model, untouched, f"{TEXT_MODEL} as published (fp32)", min(args.show, 3))


if __name__ == "__main__":
    main()
