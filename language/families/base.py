"""What a model family supplies to the shared generation loop.

A family is the model-specific part: how a conversation becomes token ids, the position
ids and attention masks its nets take, which tokens stop generation, and how the raw
answer is tidied. Everything else (KV cache, sampling, streaming) is shared.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

MASKED = -10000.0  # additive mask value; finite so F16/BF16 compiles stay NaN-free


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    image_start: int | None = None  # first of the image's placeholder rows, if it has an image


class Family(Protocol):
    name: str
    stop_ids: frozenset[int]

    def encode(self, history: list[Turn], question: str, image_tokens: int = 0, system: str | None = None) -> Prompt:
        """The prompt for `question` after `history`, ready for the answer to follow.

        With image_tokens > 0 the prompt reserves that many placeholder rows for the image,
        at the place the family's format puts it. `system` replaces the family's default
        system prompt where its format has one.
        """

    def prefill_positions(self, length: int, width: int) -> np.ndarray:
        """Position ids for a prompt of `length` tokens padded to `width`."""

    def prefill_mask(self, length: int, width: int) -> np.ndarray:
        """Additive attention mask [1,1,width,width] for that prompt."""

    def decode_position(self, index: int, prompt_length: int) -> np.ndarray:
        """Position ids of the token at absolute `index` (>= prompt_length)."""

    # Families whose exports write block_kv nets (causal, positions that do not depend on the
    # prompt's length, so that cached rows stay valid as a conversation grows) also give:
    #   history_prefill_positions(start, width) -> position ids of prompt rows start..start+width
    #   history_prefill_mask(filled, history_rows, length, width) -> history_mask's mask

    def decode_mask(self, filled: int, cache_length: int) -> np.ndarray:
        """Mask [1,1,1,cache_length+1]: `filled` cached rows, then the current token."""

    def postprocess(self, text: str) -> str:
        """The answer as the user should see it."""


def causal_mask(length: int, width: int, seen_by_all: int = 0) -> np.ndarray:
    """Additive [1,1,width,width]: row i sees columns 0..i of the real prompt, and every row sees
    its first `seen_by_all` columns (GLM's bidirectional context); padding is never seen."""
    rows = np.arange(width)[:, None]
    cols = np.arange(width)[None, :]
    visible = ((cols < seen_by_all) | (cols <= rows)) & (cols < length)
    return np.where(visible, 0.0, MASKED).astype(np.float32)[None, None]


def history_mask(filled: int, history_rows: int, length: int, width: int) -> np.ndarray:
    """Additive [1,1,width,history_rows+width] for `length` new rows (padded to `width`) after
    `filled` cached rows of a `history_rows`-row cache: each new row sees the filled rows and the
    new rows up to itself; unfilled cache rows and padding are never seen."""
    mask = np.full((1, 1, width, history_rows + width), MASKED, dtype=np.float32)
    mask[..., :filled] = 0.0
    mask[..., history_rows:] = causal_mask(length, width)
    return mask


def decode_mask(filled: int, cache_length: int) -> np.ndarray:
    mask = np.full((1, 1, 1, cache_length + 1), MASKED, dtype=np.float32)
    mask[..., :filled] = 0.0
    mask[..., -1] = 0.0
    return mask
