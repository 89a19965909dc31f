"""A conversation turn end to end: fit the prompt, generate, stream text, measure.

`ChatModel` answers one turn on one of its generator's KV slots and reports the answer's
timings. One thread drives it: the Scheduler (serving/scheduler.py) when many users share
it, which may interleave answers on different slots step by step. A turn is prepared first
(prompt, picture rows), so that the scheduler can pick the slot that already holds most of
its prompt (a follow-up's conversation so far), then answered.
"""
from __future__ import annotations

import logging
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Iterator

from PIL import Image

from language.families.base import Family, Prompt, Turn
from language.generate import ContextOverflow, ImageRows, TokenGenerator, row_keys
from language.sampling import Sampler, SamplingSettings
from language.streaming import StopAt, TextStream
from vision.encoder import VisionEncoder


log = logging.getLogger(__name__)
TURN_END_ROWS = 32  # read_turn_end reads at most this many rows: a template's, not a conversation's


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
    vision_s: float = 0.0  # time spent in the vision net (0 when the image came from the cache)
    image_cached: bool = False
    cached_tokens: int = 0  # prompt tokens whose K/V the slot held already: not read again

    def figures(self) -> list[str]:
        """The answer's timings, worded for people."""
        parts = [f"first token {self.first_token_s:.2f} s",
                 f"{self.new_tokens} tokens at {self.decode_tokens_per_s:.1f} tokens/s"]
        if self.cached_tokens:
            parts.append(f"{self.cached_tokens} of {self.prompt_tokens} prompt tokens kept from before")
        if self.vision_s:  # a cache hit says nothing: the picture may be another user's
            parts.append(f"vision {self.vision_s * 1000:.0f} ms")
        if self.finish_reason != "stop":
            parts.append("cut at the length limit")
        return parts


@dataclass(frozen=True)
class Reading:
    """A chunk of a long prompt was read: nothing to show yet, others may take a turn."""


Event = TextDelta | Notice | Done | Reading


@dataclass(frozen=True)
class PreparedTurn:
    """A question made ready to answer: its prompt, and its picture's rows in the backend."""
    prompt: Prompt
    dropped: int  # oldest turns left out to fit the context
    settings: SamplingSettings
    stop: tuple[str, ...]
    image: ImageRows | None
    vision_s: float  # 0 when the picture's rows came from the vision cache
    image_cached: bool
    started: float  # perf_counter() when the request was taken up
    history: tuple[Turn, ...] = ()  # what the prompt was made of
    question: str = ""
    system: str | None = None

    @property
    def row_keys(self) -> list:
        """What fills each prompt row (language/generate.py row_keys)."""
        return row_keys(self.prompt.ids, self.image)


def valid_text(text: str) -> str:
    """Text a tokenizer can take: lone surrogates (halves of a character, which any JSON client
    can send) become U+FFFD; everything else is kept."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def valid_turns(history: list[Turn], question: str, system: str | None) -> tuple[list[Turn], str, str | None]:
    """A conversation's texts, each made valid_text."""
    return ([Turn(valid_text(turn.question), valid_text(turn.answer)) for turn in history], valid_text(question),
            system if system is None else valid_text(system))


class ChatModel:
    def __init__(self, generator: TokenGenerator, family: Family, tokenizer, name: str = "model",
                 vision: VisionEncoder | None = None, weights: str | None = None):
        """`weights`: how the nets store their weights (fp32, int8, ...), where the model files say."""
        self.generator, self.family, self.tokenizer, self.name = generator, family, tokenizer, name
        self.vision, self.weights = vision, weights

    @property
    def runs_on(self) -> str:
        device = self.generator.backend.device
        return f"{device}, {self.weights} weights" if self.weights else device

    @property
    def context_length(self) -> int:
        return self.generator.context_length

    def fit(self, history: list[Turn], question: str, max_new_tokens: int,
            image_tokens: int = 0, system: str | None = None) -> tuple[Prompt, int]:
        """The prompt and how many of the oldest turns had to be left out.

        Older turns are dropped until the answer has room for max_new_tokens (at most half
        the context); the question alone only has to fit.
        """
        history, question, system = valid_turns(history, question, system)
        limit = self.generator.prompt_limit
        reserve = min(max_new_tokens, self.context_length // 2)
        for dropped in range(len(history) + 1):
            prompt = self.family.encode(history[dropped:], question, image_tokens, system)
            if len(prompt.ids) + reserve <= self.context_length and len(prompt.ids) <= limit:
                return prompt, dropped
        if len(prompt.ids) <= limit and len(prompt.ids) < self.context_length:
            return prompt, len(history)
        raise ContextOverflow(f"The message is too long: {len(prompt.ids)} tokens, and this model's context "
                              f"holds {min(limit, self.context_length - 1)}. Please shorten it.")

    def prepare(self, history: list[Turn], question: str, settings: SamplingSettings,
                image: Image.Image | None = None, *, system: str | None = None,
                stop: tuple[str, ...] = ()) -> PreparedTurn:
        """The prompt for `question` after `history`, about `image` if one is given (an upright
        RGB picture from vision.preprocess.load_image), whose rows the vision net computes here
        unless its cache holds them. Raises ValueError or ContextOverflow for what cannot be
        answered.

        `system` replaces the family's default system prompt. The answer ends before the first
        of the `stop` strings, which is never streamed, not even in part."""
        if not question.strip():
            raise ValueError("The question is empty.")
        if image is not None and self.vision is None:
            raise ValueError(f"{self.name} has no vision net: it cannot look at images.")
        start = time.perf_counter()
        history, question, system = valid_turns(history, question, system)
        prompt, dropped = self.fit(history, question, settings.max_new_tokens,
                                   self.vision.rows if image is not None else 0, system)
        rows, vision_s, cached = None, 0.0, False
        if image is not None:
            vision_start = time.perf_counter()
            encoded = self.vision.encode(image)
            cached = encoded.cached
            vision_s = 0.0 if cached else time.perf_counter() - vision_start
            rows = ImageRows(encoded.embeds, prompt.image_start, encoded.key)
        return PreparedTurn(prompt, dropped, settings, stop, rows, vision_s, cached, start, tuple(history), question,
                            system)

    def answer(self, turn: PreparedTurn, slot: int = 0) -> Iterator[Event]:
        """Stream the answer to a prepared turn on KV slot `slot`."""
        prompt, settings = turn.prompt, turn.settings
        if turn.dropped:
            yield Notice(f"The conversation was longer than the model's context of {self.context_length} "
                         f"tokens: the oldest {turn.dropped} turn(s) were left out of this answer.")
        if self.generator.notice and settings.temperature > 0:  # e.g. a head that picks tokens on the chip
            yield Notice(self.generator.notice)
        text = StopAt(TextStream(self.tokenizer), turn.stop)
        first_token_s, count = 0.0, 0
        cached_tokens = self.generator.reusable_rows(slot, turn.row_keys)
        tokens = self.generator.generate(prompt.ids, Sampler(settings), settings.max_new_tokens, turn.image, slot)
        with closing(tokens):
            for token in tokens:
                if token is None:
                    yield Reading()
                    continue
                count += 1
                if count == 1:
                    first_token_s = time.perf_counter() - turn.started
                    first_at = time.perf_counter()
                delta = text.push(token)
                if delta:
                    yield TextDelta(delta)
                if text.stopped:
                    break
        finish = "stop" if text.stopped else tokens.finish_reason
        tail = text.flush()
        if tail:
            yield TextDelta(tail)
        decode_rate = (count - 1) / (time.perf_counter() - first_at) if count > 1 else 0.0
        answer = self.family.postprocess(text.text)
        self._read_turn_end(turn, answer, slot)
        yield Done(answer, len(prompt.ids), count, first_token_s, decode_rate, finish, turn.dropped, turn.vision_s,
                   turn.image_cached, cached_tokens)

    def _read_turn_end(self, turn: PreparedTurn, answer: str, slot: int) -> None:
        """After an answer, before its Done: read_turn_end. It only saves a follow-up some rows, so
        its failure is logged, not the answer's."""
        try:
            self.read_turn_end(turn, answer, slot)
        except Exception:
            log.warning("reading the end of a turn ahead failed", exc_info=True)

    def read_turn_end(self, turn: PreparedTurn, answer: str, slot: int) -> int:
        """Read into `slot`, which holds `turn` and its `answer`, the rows that every next question
        of this conversation will start with: the answer's end-of-turn tokens and the next user
        message's header (a few rows, one step), so that a follow-up's first token waits only for
        its own words. Returns the rows read (0 when the slot no longer holds the conversation,
        or the next prompt is not known in advance)."""
        if turn.dropped or not self.generator.reuse_prefixes:
            return 0
        history = [*turn.history, Turn(turn.question, answer)]
        rows = turn.image.embeds.shape[1] if turn.image is not None else 0
        one, other = (self.family.encode(history, question, rows, turn.system) for question in ("Yes", "No"))
        shared = next((i for i, (a, b) in enumerate(zip(one.ids, other.ids)) if a != b), len(one.ids))
        ids = one.ids[:shared - 1]  # the question's first token might have merged with the one before it
        if turn.image is not None and one.image_start != turn.image.start:
            return 0
        held = self.generator.reusable_rows(slot, row_keys(ids, turn.image))
        if held < len(turn.prompt.ids) or len(ids) - held > TURN_END_ROWS or len(ids) >= self.context_length:
            return 0
        self.generator.prefill(ids, turn.image, slot)
        return len(ids) - held

    def stream(self, history: list[Turn], question: str, settings: SamplingSettings,
               image: Image.Image | None = None, *, system: str | None = None,
               stop: tuple[str, ...] = (), slot: int = 0) -> Iterator[Event]:
        """prepare() then answer(), in one stream (errors are raised at its first step)."""
        yield from self.answer(self.prepare(history, question, settings, image, system=system, stop=stop), slot)

    def reply(self, history: list[Turn], question: str, settings: SamplingSettings | None = None,
              image: Image.Image | None = None, **options) -> Done:
        """The whole answer at once (tests, scripts); `options` as for stream()."""
        events = list(self.stream(history, question, settings or SamplingSettings(), image, **options))
        return events[-1]
