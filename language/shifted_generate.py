"""The generation loop for nets with a right-aligned KV cache that block_cache shifts itself:
the layout of Sophgo's prebuilt ChatGLM3 bmodels (sophon-demo sample/ChatGLM3, LLM-TPU
models/ChatGLM3).

Their contract differs from the project's own (language/generate.py) in three ways:

  block_<i>        input_states [W,1,H] (sequence first; [1,W,H] works too), position_ids [1,W],
                   attention_mask [1,1,W,W] -> hidden, past_k, past_v [W,1,KV,D]
  block_cache_<i>  input_states [1,1,H], position_ids [1,1], attention_mask [1,1,1,SEQ+1],
                   history_k, history_v [SEQ,1,KV,D] -> hidden, present_k, present_v [SEQ,1,KV,D]
  lm_head          [1,H] -> token [1,1] int32 (argmax on the chip; sophon-demo), or logits [1,V]
                   (LLM-TPU, whose sampling heads are separate nets this loop does not use)

1. The cache is right-aligned: after a prefill of L tokens its last L rows hold them (the
   vendor code copies past_k to element offset (SEQ - L) * row); the rows before are zeroed
   here and masked.
2. block_cache returns the whole cache, already shifted: cat(history, new row)[1:]. The
   oldest row drops out, the new one is appended at the end; the runtime only swaps buffers
   (the vendor demos bind the same buffer as input and output; here each layer has two
   caches, read one, write the other, which no backend can get wrong).
3. With a token head the chip picks the next token (greedy): temperature, top-p, top-k and
   the repetition penalty cannot apply and are ignored, with a logged notice (`notice`).
   With a logits head the usual host sampler runs.

The decode mask is the family's (visible = the `filled` cached positions and the token
itself), moved to the right end of the cache: the first SEQ - filled entries are masked.
Positions are the family's, so the prompt starts at position 0 wherever its rows sit.

`detect_layout` tells the two contracts apart from the nets alone; `make_generator` picks
the loop for a backend. Every shape (layers, hidden size, cache length, prefill width,
sequence-first or not) is read from the nets.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Generator as Steps

import numpy as np

from language.families.base import MASKED, Family
from language.generate import (ContextOverflow, Generation, Generator, ImageRows, TokenGenerator, count_layers,
                               sample_tokens)
from language.sampling import Sampler
from runtime.backend import Backend, ModelFileError, NetSpec

log = logging.getLogger(__name__)

APPENDED = "appended"  # the project's: block_cache returns one new row, the runtime writes it at `filled`
SHIFTED = "shifted"  # the vendor ChatGLM3 one: block_cache returns the whole cache, shifted by one row

GREEDY_NOTICE = ("This model's lm_head picks the next token on the device (argmax): answers are greedy, and "
                 "temperature, top-p, top-k and the repetition penalty are ignored")


@dataclass(frozen=True)
class NetsLayout:
    cache: str  # APPENDED or SHIFTED
    token_head: bool  # lm_head returns the chosen token id instead of logits


def _elements(shape: tuple[int | None, ...]) -> int | None:
    return None if any(d is None for d in shape) else int(np.prod(shape))


def detect_layout(nets: dict[str, NetSpec]) -> NetsLayout:
    """Which cache contract and which kind of head the nets have, from their shapes and types."""
    head = nets["lm_head"].outputs[0] if "lm_head" in nets else None
    if head is not None and "block_cache_0" not in nets and "block_kv_0" in nets:  # decodes through block_kv
        return NetsLayout(APPENDED, bool(np.issubdtype(head.dtype, np.integer)))
    for needed in ("lm_head", "block_cache_0"):
        if needed not in nets:
            raise ModelFileError(f"the model has no '{needed}' net (found: {', '.join(sorted(nets)) or 'none'})")
    spec = nets["block_cache_0"]
    if len(spec.inputs) != 5 or len(spec.outputs) != 3:
        raise ModelFileError(f"block_cache_0 takes {len(spec.inputs)} inputs and gives {len(spec.outputs)} outputs; "
                             "expected hidden, position, mask, history K, history V -> hidden, K, V")
    seq = spec.inputs[2].shape[-1]
    history, present = spec.inputs[3].shape, spec.outputs[1].shape
    total = _elements(history)
    if seq is None or total is None or seq < 2 or total % (seq - 1):
        raise ModelFileError(f"block_cache_0 has a mask of {spec.inputs[2].shape} and a KV cache of {history}: "
                             "the cache length cannot be read from them")
    seq -= 1
    if present == history:
        cache = SHIFTED
    elif _elements(present) == total // seq:
        cache = APPENDED
    else:
        raise ModelFileError(f"block_cache_0 returns K of shape {present} for a cache of {history}: neither one "
                             "new row nor the whole cache")
    return NetsLayout(cache, bool(np.issubdtype(head.dtype, np.integer)))


def make_generator(backend: Backend, family: Family, embedding_table: np.ndarray | None = None) -> TokenGenerator:
    """The generation loop the backend's nets need: Generator or ShiftedGenerator.
    `embedding_table`: the model's host embedding table, if it has one instead of the nets."""
    layout = detect_layout(backend.nets())
    if layout.cache == SHIFTED:
        if embedding_table is not None:
            raise ModelFileError("a host embedding table goes with the project's own nets, not Sophgo's prebuilt "
                                 "layout (which has its embedding nets)")
        return ShiftedGenerator(backend, family)
    if layout.token_head:
        raise ModelFileError("lm_head returns token ids but block_cache returns one new row: no generation loop "
                             "here takes that mix (export lm_head with logits)")
    return Generator(backend, family, embedding_table)


def _resolve(shape: tuple[int | None, ...], width: int) -> tuple[int, ...]:
    """A net's tensor shape with its run-time dimensions set to `width`."""
    return tuple(width if d is None else d for d in shape)


class ShiftedGenerator:
    """Owns the KV cache of one device for right-aligned, shifted-cache nets; one generation at a
    time (one slot). A TokenGenerator, like language.generate.Generator."""

    slots = 1
    reuse_prefixes = False  # its prefill has no history input: every prompt is read whole

    def __init__(self, backend: Backend, family: Family):
        self.backend, self.family = backend, family
        self.nets = nets = backend.nets()
        layout = detect_layout(nets)
        if layout.cache != SHIFTED:
            raise ModelFileError("these nets return one new KV row per step: run them with language.generate.Generator")
        self.token_head = layout.token_head
        for needed in ("embedding", "embedding_cache"):
            if needed not in nets:
                raise ModelFileError(f"the model has no '{needed}' net (found: {', '.join(sorted(nets))})")
        self.num_layers = layers = count_layers(nets)
        block, cached = nets["block_0"], nets["block_cache_0"]
        cache_spec = cached.inputs[3]
        for i in range(layers):
            other = nets[f"block_cache_{i}"]
            if other.inputs[3].shape != cache_spec.shape or other.outputs[1].shape != cache_spec.shape:
                raise ModelFileError(f"block_cache_{i} has a KV cache of shape {other.inputs[3].shape}, block_cache_0 "
                                     f"has {cache_spec.shape}: the nets come from different exports")
        self.cache_length = cached.inputs[2].shape[-1] - 1
        self.row = _elements(cache_spec.shape) // self.cache_length  # elements of one cached position
        self.hidden_size = nets["embedding"].outputs[0].shape[-1]
        if nets["lm_head"].inputs[0].shape[-1] != self.hidden_size:
            raise ModelFileError("lm_head and embedding disagree on the hidden size")
        self.prefill_width = block.inputs[1].shape[-1]  # None: the prefill nets take any length
        b = backend
        self._caches = [[(b.alloc(cache_spec.shape, cache_spec.dtype), b.alloc(cache_spec.shape, cache_spec.dtype))
                         for _ in range(layers)] for _ in range(2)]
        self._current = 0  # which of the two caches holds the rows
        self._zeros = b.alloc(cache_spec.shape, cache_spec.dtype)  # clears the unused head of the cache
        self._ids = self._alloc("embedding_cache", "inputs", 0)
        self._embedded = self._alloc("embedding_cache", "outputs", 0)
        self._hidden = [self._alloc("block_cache_0", "inputs", 0), self._alloc("block_cache_0", "outputs", 0)]
        self._position = self._alloc("block_cache_0", "inputs", 1)
        self._mask = self._alloc("block_cache_0", "inputs", 2)
        self._head_in = self._alloc("lm_head", "inputs", 0)
        self._head_out = self._alloc("lm_head", "outputs", 0)
        self.filled = 0  # positions held in the cache
        self.prompt_length = 0
        self._noticed = False

    def open_slots(self, wanted: int) -> int:
        """Sophgo's prebuilt layout holds one KV cache: always 1."""
        if wanted > 1:
            log.warning("Sophgo's prebuilt layout holds one KV cache: one conversation is answered at a time")
        return 1

    def reusable_rows(self, slot: int, keys) -> int:
        return 0

    def held_rows(self, slot: int) -> int:
        return 0

    def _alloc(self, net: str, side: str, index: int, width: int = 1):
        spec = getattr(self.nets[net], side)[index]
        return self.backend.alloc(_resolve(spec.shape, width), spec.dtype)

    @property
    def context_length(self) -> int:
        return self.cache_length

    @property
    def prompt_limit(self) -> int:
        """The longest prompt one prefill takes."""
        return min(self.prefill_width or self.cache_length, self.cache_length)

    @property
    def greedy_only(self) -> bool:
        return self.token_head

    @property
    def notice(self) -> str | None:
        """What users should know about this model's sampling, if anything."""
        return GREEDY_NOTICE if self.token_head else None

    # ------------------------------------------------------------------ steps

    def _prefill(self, ids: list[int]) -> np.ndarray:
        """Run the prompt through every layer, leave its rows at the end of the cache; returns
        lm_head's raw output (a token id, or logits)."""
        b, length, h = self.backend, len(ids), self.hidden_size
        if not 0 < length <= self.prompt_limit:
            raise ContextOverflow(f"a prompt of {length} tokens does not fit the model's context of "
                                  f"{self.prompt_limit} tokens")
        width = self.prefill_width or length
        ids_t = self._alloc("embedding", "inputs", 0, width)
        b.write(ids_t, np.pad(np.asarray(ids, np.int32), (0, width - length))[None])
        embedded = self._alloc("embedding", "outputs", 0, width)
        hidden = [self._alloc("block_0", "inputs", 0, width), self._alloc("block_0", "outputs", 0, width)]
        positions, mask = self._alloc("block_0", "inputs", 1, width), self._alloc("block_0", "inputs", 2, width)
        b.write(positions, self.family.prefill_positions(length, width))
        b.write(mask, self.family.prefill_mask(length, width))
        past = [self._alloc("block_0", "outputs", i, width) for i in (1, 2)]
        b.run("embedding", [ids_t], [embedded])
        b.copy(hidden[0], embedded, width * h)  # [1,W,H] -> [W,1,H]: the same elements
        start = (self.cache_length - length) * self.row
        caches = self._caches[self._current]
        for i in range(self.num_layers):
            b.run(f"block_{i}", [hidden[0], positions, mask], [hidden[1], *past])
            for cache, rows in zip(caches[i], past):
                b.copy(cache, self._zeros, start)
                b.copy(cache, rows, length * self.row, dst_offset=start)
            hidden.reverse()
        b.copy(self._head_in, hidden[0], h, src_offset=(length - 1) * h)
        self.filled = self.prompt_length = length
        return self._head()

    def _decode(self, token: int) -> np.ndarray:
        if self.filled >= self.cache_length:
            raise ContextOverflow("the KV cache is full")
        b, hidden, seq = self.backend, self._hidden, self.cache_length
        b.write(self._ids, np.array([[token]], np.int32))
        b.write(self._position, self.family.decode_position(self.filled, self.prompt_length))
        b.write(self._mask, right_aligned(self.family.decode_mask(self.filled, seq), self.filled, seq))
        b.run("embedding_cache", [self._ids], [self._embedded])
        b.copy(hidden[0], self._embedded, self.hidden_size)
        read, written = self._caches[self._current], self._caches[1 - self._current]
        for i in range(self.num_layers):
            b.run(f"block_cache_{i}", [hidden[0], self._position, self._mask, *read[i]], [hidden[1], *written[i]])
            hidden.reverse()
        self._current = 1 - self._current
        self.filled += 1
        b.copy(self._head_in, hidden[0], self.hidden_size)
        return self._head()

    def _head(self) -> np.ndarray:
        self.backend.run("lm_head", [self._head_in], [self._head_out])
        return self.backend.read(self._head_out).reshape(-1)

    def _scores(self, out: np.ndarray) -> np.ndarray:
        """Logits, or for a token head a score vector whose argmax is the chosen token (0 there,
        -inf elsewhere; its length is the token id + 1, not the vocabulary)."""
        if not self.token_head:
            return out
        scores = np.full(int(out[0]) + 1, -np.inf, np.float32)
        scores[-1] = 0.0
        return scores

    def prefill(self, ids: list[int], image: ImageRows | None = None) -> np.ndarray:
        """Prefill; returns the next-token scores (see _scores)."""
        self._no_image(image)
        return self._scores(self._prefill(ids))

    def decode(self, token: int) -> np.ndarray:
        """Feed one token at the next position; returns the scores after it (see _scores)."""
        return self._scores(self._decode(token))

    @staticmethod
    def _no_image(image: ImageRows | None) -> None:
        if image is not None:
            raise ValueError("this model's nets have no image input: it is a text-only model")

    # ------------------------------------------------------------------ the loop

    def generate(self, ids: list[int], sampler: Sampler, max_new_tokens: int, image: ImageRows | None = None,
                 slot: int = 0) -> Generation:
        """New token ids until a stop token, max_new_tokens, or a full context."""
        self._no_image(image)
        if slot != 0:
            raise ValueError("Sophgo's prebuilt layout holds one KV cache (slot 0)")
        if self.token_head:
            s = sampler.settings
            if (s.temperature != 0 or s.repetition_penalty != 1.0) and not self._noticed:
                log.warning(GREEDY_NOTICE)
                self._noticed = True
        return Generation(self._generate(ids, sampler, max_new_tokens))

    def decode_pending(self) -> None:
        """One KV cache: there is never a second generation to decode along with."""

    def _generate(self, ids: list[int], sampler: Sampler, max_new_tokens: int) -> Steps[int, None, str]:
        out = self._prefill(ids)
        pick = (lambda scores, seen: int(scores[0])) if self.token_head else sampler
        return (yield from sample_tokens(out, pick, self._decode, lambda: self.filled < self.cache_length,
                                         max_new_tokens, self.family.stop_ids, np.asarray(ids, dtype=np.int64)))


def right_aligned(mask: np.ndarray, filled: int, cache_length: int) -> np.ndarray:
    """A decode mask for a left-aligned cache ([..., SEQ+1]: entry j is position j, the last one
    the current token) moved onto a right-aligned cache, where position j sits in row
    SEQ - filled + j; the rows before the first position are masked."""
    out = np.full_like(mask, MASKED)
    out[..., cache_length - filled:cache_length] = mask[..., :filled]
    out[..., cache_length] = mask[..., cache_length]
    return out
