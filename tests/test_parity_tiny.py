"""The split-net runtime against transformers on a tiny random llama with the same weights.

Token identity only means something if each greedy choice wins by far more than the two
runtimes differ: the tests measure both and check the margin dwarfs the difference.
"""
import numpy as np

from language.families import Turn
from language.sampling import Sampler, SamplingSettings
from tests.fixtures.tiny_llama import TINY_LLAMA
from tests.conftest import TINY_SEQ
from tests.fixtures.hf_reference import greedy_reference, teacher_forced_logits
from training.torch_llama import transformers_llama

GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=20)


def split_net_logits(model, ids: list[int], prompt_length: int) -> np.ndarray:
    """Prefill on ids[:prompt_length], then decode the rest token by token (teacher forcing).

    Row r holds the logits that predict ids[prompt_length + r].
    """
    gen = model.generator
    rows = [gen.prefill(ids[:prompt_length])]
    for token in ids[prompt_length:-1]:
        rows.append(gen.decode(token))
    return np.stack(rows)


def top_margin(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def test_logits_match_under_teacher_forcing(tiny_dir, tiny_model):
    reference = transformers_llama(TINY_LLAMA, tiny_dir[1])
    ids = tiny_model.family.encode([Turn("Hi", "Hello!")], "Count to five.").ids[: TINY_SEQ - 1]
    cut = len(ids) // 2
    ours = split_net_logits(tiny_model, ids, cut)
    theirs = teacher_forced_logits(reference, ids)[cut - 1:-1]
    assert ours.shape == theirs.shape == (len(ids) - cut, TINY_LLAMA.vocab_size)
    cos = np.sum(ours * theirs, -1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1))
    assert cos.min() > 0.99999
    assert np.abs(ours - theirs).max() < 1e-3


def test_greedy_tokens_match_transformers_generate(tiny_dir, tiny_model):
    reference = transformers_llama(TINY_LLAMA, tiny_dir[1])
    for question in ["What is the capital of France?", "Tell me a story.", "你好，介绍一下你自己"]:
        prompt = tiny_model.family.encode([], question).ids
        ours = list(tiny_model.generator.generate(prompt, Sampler(GREEDY), GREEDY.max_new_tokens))
        theirs = greedy_reference(reference, prompt, GREEDY.max_new_tokens, tiny_model.family.stop_ids)
        assert len(ours) > 0
        assert ours == theirs

        # Each choice on that path won by far more than the runtimes differ.
        path = prompt + ours
        ref_logits = teacher_forced_logits(reference, path)[len(prompt) - 1:-1]
        our_logits = split_net_logits(tiny_model, path, len(prompt))
        difference = np.abs(ref_logits - our_logits).max()
        assert top_margin(ref_logits).min() > 100 * difference
