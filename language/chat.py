"""A conversation turn end to end: fit the prompt, generate, stream text, measure.

`ChatModel` is what the CLI, the web app and the benchmark talk to. It serialises
generations on its device (one KV cache) and reports each answer's timings.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterator

from language.families.base import Family, Turn
from language.generate import ContextOverflow, Generator
from language.sampling import Sampler, SamplingSettings
from language.streaming import TextStream


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Notice:
    message: str


@dataclass(frozen=True)
class Done:
    answer: str  # the whole answer, post-processed by the family
    prompt_tokens: int
    new_tokens: int
    first_token_s: float  # from the request to the first new token
    decode_tokens_per_s: float  # tokens after the first, per second
    finish_reason: str  # "stop", "length" or "context"
    dropped_turns: int


Event = TextDelta | Notice | Done


class ChatModel:
    def __init__(self, generator: Generator, family: Family, tokenizer, name: str = "model"):
        self.generator, self.family, self.tokenizer, self.name = generator, family, tokenizer, name
        self._lock = threading.Lock()

    @property
    def context_length(self) -> int:
        return self.generator.context_length

    def fit(self, history: list[Turn], question: str, max_new_tokens: int) -> tuple[list[int], int]:
        """Token ids for the prompt and how many of the oldest turns had to be left out.

        Older turns are dropped until the answer has room for max_new_tokens (at most half
        the context); the question alone only has to fit.
        """
        limit = self.generator.prompt_limit
        reserve = min(max_new_tokens, self.context_length // 2)
        for dropped in range(len(history) + 1):
            ids = self.family.encode(history[dropped:], question)
            if len(ids) + reserve <= self.context_length and len(ids) <= limit:
                return ids, dropped
        if len(ids) <= limit and len(ids) < self.context_length:
            return ids, len(history)
        raise ContextOverflow(f"The message is too long: {len(ids)} tokens, and this model's context "
                              f"holds {min(limit, self.context_length - 1)}. Please shorten it.")

    def stream(self, history: list[Turn], question: str, settings: SamplingSettings) -> Iterator[Event]:
        if not question.strip():
            raise ValueError("The question is empty.")
        start = time.perf_counter()
        ids, dropped = self.fit(history, question, settings.max_new_tokens)
        if dropped:
            yield Notice(f"The conversation was longer than the model's context of {self.context_length} "
                         f"tokens: the oldest {dropped} turn(s) were left out of this answer.")
        text = TextStream(self.tokenizer)
        first_token_s, count = 0.0, 0
        with self._lock:
            for token in self.generator.generate(ids, Sampler(settings), settings.max_new_tokens):
                count += 1
                if count == 1:
                    first_token_s = time.perf_counter() - start
                    first_at = time.perf_counter()
                delta = text.push(token)
                if delta:
                    yield TextDelta(delta)
            finish = self.generator.finish_reason
        tail = text.flush()
        if tail:
            yield TextDelta(tail)
        decode_rate = (count - 1) / (time.perf_counter() - first_at) if count > 1 else 0.0
        yield Done(self.family.postprocess(text.text), len(ids), count, first_token_s, decode_rate, finish, dropped)

    def reply(self, history: list[Turn], question: str, settings: SamplingSettings | None = None) -> Done:
        """The whole answer at once (tests, scripts)."""
        events = list(self.stream(history, question, settings or SamplingSettings()))
        return events[-1]
