import numpy as np
import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from language.generate import sample_tokens
from language.sampling import PENALTY_WINDOW, Sampler, SamplingSettings, apply_repetition_penalty

RNG = np.random.default_rng(1)
LOGITS = RNG.standard_normal(1000).astype(np.float32) * 3
NOTHING_SEEN = np.array([], dtype=np.int64)


def test_temperature_zero_is_argmax_and_ignores_the_seed():
    picks = {Sampler(SamplingSettings(temperature=0, seed=s))(LOGITS, NOTHING_SEEN) for s in range(5)}
    assert picks == {int(np.argmax(LOGITS))}


def test_the_same_seed_gives_the_same_samples():
    def draw(seed):
        sampler = Sampler(SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, seed=seed))
        return [sampler(LOGITS, NOTHING_SEEN) for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_k_one_is_greedy_even_when_hot():
    sampler = Sampler(SamplingSettings(temperature=5.0, top_k=1, seed=0))
    assert {sampler(LOGITS, NOTHING_SEEN) for _ in range(20)} == {int(np.argmax(LOGITS))}


def test_top_k_keeps_only_the_k_best():
    sampler = Sampler(SamplingSettings(temperature=10.0, top_k=5, top_p=1.0, seed=0))
    best = set(np.argsort(-LOGITS)[:5].tolist())
    draws = {sampler(LOGITS, NOTHING_SEEN) for _ in range(300)}
    assert draws <= best and len(draws) > 1


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    sampler = Sampler(SamplingSettings(temperature=1.0, top_k=0, top_p=0.7, seed=0))
    assert {sampler(logits, NOTHING_SEEN) for _ in range(300)} == {0, 1}


def test_repetition_penalty_matches_transformers():
    seen = np.array([3, 10, 10, 999], dtype=np.int64)
    ours = apply_repetition_penalty(LOGITS, seen, 1.3)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(seen[None]), torch.tensor(LOGITS[None]))[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_repetition_penalty_steers_greedy_away_from_seen_tokens():
    top = int(np.argmax(LOGITS))
    sampler = Sampler(SamplingSettings(temperature=0, repetition_penalty=100.0))
    assert sampler(LOGITS, np.array([top])) != top


def test_the_default_settings_are_greedy_even_over_tokens_already_seen():
    top = int(np.argmax(LOGITS))
    assert Sampler(SamplingSettings())(LOGITS, np.array([top] * 10)) == top


def _first_pick(prompt: list[int], logits: np.ndarray, penalty: float, stop_ids=frozenset({7})) -> int | str:
    """What the shared generation loop does first: the token it yields, or why it ended."""
    sampler = Sampler(SamplingSettings(temperature=0, repetition_penalty=penalty))
    steps = sample_tokens(logits, sampler, lambda token: logits, lambda: True, 1, stop_ids, np.array(prompt))
    try:
        return next(steps)
    except StopIteration as end:
        return end.value


def test_the_penalty_never_holds_back_a_stop_token_from_earlier_turns():
    logits = np.zeros(100, np.float32)
    logits[7], logits[8] = 2.0, 1.5  # the stop token 7 is the best; 8 is close behind
    prompt = [1, 7, 2, 7, 3, 7]  # three earlier turns, each ended by the stop token
    assert _first_pick(prompt, logits, penalty=1.5) == "stop"
    assert _first_pick(prompt, logits, penalty=1.5, stop_ids=frozenset({99})) == 8  # were 7 not a stop token


def test_the_penalty_looks_back_over_the_last_window_of_tokens_only():
    logits = np.zeros(100, np.float32)
    logits[5], logits[6] = 2.0, 1.5
    recent = [5] + [1] * (PENALTY_WINDOW - 1)  # 5 is the oldest token inside the window
    assert _first_pick(recent, logits, penalty=2.0) == 6
    assert _first_pick([5] + recent[1:] + [1], logits, penalty=2.0) == 5  # one token later it has left it


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_p=1.5),
                                 dict(top_k=-1), dict(repetition_penalty=0)])
def test_bad_settings_are_refused_with_a_reason(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingSettings(**bad)


@pytest.mark.parametrize("temperature, top_k, top_p, penalty", [(0.7, 40, 0.9, 1.1), (1.5, 0, 0.5, 1.0),
                                                                 (1.0, 5, 1.0, 1.3), (0.3, 200, 0.95, 1.0)])
def test_the_sampled_distribution_is_transformers_own(temperature, top_k, top_p, penalty):
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    seen = np.array([3, 17, 17, 250, int(np.argmax(LOGITS))], dtype=np.int64)
    settings = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty)
    tokens, probs = Sampler(settings).distribution(LOGITS, seen)
    steps = [RepetitionPenaltyLogitsProcessor(penalty), TemperatureLogitsWarper(temperature)]
    steps += [TopKLogitsWarper(top_k)] if top_k else []
    steps += [TopPLogitsWarper(top_p)] if top_p < 1 else []
    theirs = LogitsProcessorList(steps)(torch.tensor(seen)[None], torch.tensor(LOGITS)[None])
    reference = torch.softmax(theirs, dim=-1)[0].numpy()
    assert set(tokens.tolist()) == set(np.flatnonzero(reference > 0).tolist())  # the same candidates
    np.testing.assert_allclose(probs, reference[tokens], rtol=1e-5, atol=1e-7)  # with the same chances
