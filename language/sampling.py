"""Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 picks the most likely token every step
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = 1.0  # 1 leaves the scores alone, so temperature 0 is plain greedy
    seed: int | None = None

    def __post_init__(self):
        for name in ("max_new_tokens", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be a whole number, not {value!r}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value!r}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0 keeps every token)")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")


PENALTY_WINDOW = 64  # tokens the repetition penalty looks back over (llama.cpp's repeat_last_n)


def penalty_window(ids: np.ndarray, stop_ids: frozenset[int]) -> np.ndarray:
    """The tokens a repetition penalty applies to: the last PENALTY_WINDOW of prompt and answer,
    leaving out stop tokens, so that earlier turns' ends do not make this answer's end less likely."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids[~np.isin(ids, list(stop_ids))][-PENALTY_WINDOW:]


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL-style penalty, as transformers applies it: shrink the scores of seen tokens."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    logits = logits.copy()
    scores = logits[seen]
    logits[seen] = np.where(scores > 0, scores / penalty, scores * penalty)
    return logits


class Sampler:
    def __init__(self, settings: SamplingSettings):
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)

    def distribution(self, logits: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens a sampled step may pick, best first, and their probabilities: repetition
        penalty, temperature, top-k, then top-p (the order transformers applies them in)."""
        s = self.settings
        logits = apply_repetition_penalty(np.asarray(logits, np.float32).reshape(-1), seen, s.repetition_penalty)
        # The candidates, best first. Only the top k are sorted and scaled: sorting a 130k
        # vocabulary cost 2.6 ms per token on an idle core (0.19 ms this way, bench/host_overhead.py).
        if 0 < s.top_k < logits.size:
            top = np.argpartition(logits, logits.size - s.top_k)[-s.top_k:]
            order = top[np.argsort(-logits[top], kind="stable")]
        else:
            order = np.argsort(-logits, kind="stable")
        scaled = logits[order] / s.temperature
        probs = np.exp(scaled - scaled[0])
        probs /= probs.sum()
        if s.top_p < 1:
            keep = np.cumsum(probs) - probs < s.top_p  # always keeps the top token
            order, probs = order[keep], probs[keep] / probs[keep].sum()
        return order, probs

    def __call__(self, logits: np.ndarray, seen: np.ndarray) -> int:
        if self.settings.temperature == 0:
            penalized = apply_repetition_penalty(np.asarray(logits, np.float32).reshape(-1), seen,
                                                 self.settings.repetition_penalty)
            return int(np.argmax(penalized))
        order, probs = self.distribution(logits, seen)
        return int(order[self.rng.choice(probs.size, p=probs)])
