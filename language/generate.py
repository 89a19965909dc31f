"""The generation loop, written once over the Backend interface.

prefill: embedding -> block_0..N-1 -> lm_head on the last prompt row; each block's K/V
rows are copied into a fixed-length cache that stays in the backend.
decode:  embedding_cache -> block_cache_0..N-1 (reading that cache, returning the new
row, which is copied in at its position) -> lm_head.

The embedding is the `embedding` nets or a host table (language/embedding.py). Bmodels are
static: their prefill nets may come in several widths (`block_<i>` the widest, `block_<i>_<W>`
narrower ones) and a prompt runs through the narrowest that takes it, so a short question
costs what it is, not what the context is. Every shape (layers, hidden size, cache length,
prefill widths) is read from the nets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Generator as Steps, Protocol

import numpy as np

from language.embedding import Embedding, HostEmbedding, NetEmbedding, bucket_net, check_table
from language.families.base import Family
from language.sampling import PENALTY_WINDOW, Sampler, penalty_window
from runtime.backend import Backend, ModelFileError, NetSpec, Tensor, TensorSpec


@dataclass(frozen=True)
class ImageRows:
    """An image's prefix embeddings [1,Q,H] in the backend, and the prompt row they start at."""
    embeds: Tensor
    start: int


class ContextOverflow(ValueError):
    """The prompt does not fit the model's context."""


class Generation:
    """One answer's token ids as they come, and why they ended: "stop", "length" or "context"."""

    def __init__(self, steps: Steps[int, None, str]):
        self._steps, self.finish_reason = steps, ""

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> int:
        try:
            return next(self._steps)
        except StopIteration as end:
            self.finish_reason = end.value
            raise

    def close(self) -> None:
        self._steps.close()


class TokenGenerator(Protocol):
    """What ChatModel and the Scheduler need of a generation loop (Generator, ShiftedGenerator)."""
    family: Family
    backend: Backend
    slots: int  # KV caches it holds: generations on different slots may interleave step by step
    notice: str | None  # what users should know about its sampling, if anything

    @property
    def context_length(self) -> int: ...

    @property
    def prompt_limit(self) -> int: ...

    def open_slots(self, wanted: int) -> int:
        """Hold at least `wanted` KV caches (each allocated on first use); returns how many of them
        the caller may use (slots 0 to that number - 1)."""

    def generate(self, ids: list[int], sampler: Sampler, max_new_tokens: int, image: ImageRows | None = None,
                 slot: int = 0) -> Generation: ...


def sample_tokens(logits: np.ndarray, pick: Callable[[np.ndarray, np.ndarray], int],
                  decode: Callable[[int], np.ndarray], has_room: Callable[[], bool], max_new_tokens: int,
                  stop_ids: frozenset[int], seen: np.ndarray) -> Steps[int, None, str]:
    """The loop every generator shares: pick a token, stop or yield it, decode it. `seen` is the
    prompt's ids, which the repetition penalty may look at (see penalty_window)."""
    seen = penalty_window(seen, stop_ids)
    for step in range(max_new_tokens):
        token = pick(logits, seen)
        if token in stop_ids:
            return "stop"
        yield token
        if not has_room():
            return "context"
        if step + 1 < max_new_tokens:
            seen = np.append(seen, token)[-PENALTY_WINDOW:]
            logits = decode(token)
    return "length"


def count_layers(nets: dict[str, NetSpec]) -> int:
    """How many block_<i> nets there are, each paired with its block_cache_<i>."""
    layers = 0
    while f"block_{layers}" in nets:
        layers += 1
    missing = [f"block_cache_{i}" for i in range(layers) if f"block_cache_{i}" not in nets]
    if missing or f"block_cache_{layers}" in nets:
        raise ModelFileError(f"block and block_cache nets do not pair up (missing: {', '.join(missing) or 'block'})")
    return layers


@dataclass(frozen=True)
class NetLayout:
    num_layers: int
    hidden_size: int
    vocab_size: int
    cache_length: int  # KV rows per layer: the model's context
    prefill_widths: tuple[int, ...]  # widths the prefill nets were compiled at, ascending; () = any length

    @staticmethod
    def read(nets: dict[str, NetSpec], host_embedding: bool = False) -> "NetLayout":
        needed = ("lm_head", "block_0", "block_cache_0") + (() if host_embedding else ("embedding", "embedding_cache"))
        for name in needed:
            if name not in nets:
                raise ModelFileError(f"the model has no '{name}' net (found: {', '.join(sorted(nets)) or 'none'})")
        layers = count_layers(nets)
        hidden = nets["block_cache_0"].inputs[0].shape[-1]
        history = nets["block_cache_0"].inputs[3].shape
        for i in range(layers):
            if nets[f"block_cache_{i}"].inputs[3].shape != history:
                raise ModelFileError(f"block_cache_{i} has a KV cache of shape {nets[f'block_cache_{i}'].inputs[3].shape},"
                                     f" block_cache_0 has {history}: the nets come from different exports")
        if nets["lm_head"].inputs[0].shape[-1] != hidden:
            raise ModelFileError("lm_head and the blocks disagree on the hidden size")
        return NetLayout(layers, hidden, nets["lm_head"].outputs[0].shape[-1], history[1],
                         prefill_widths(nets, layers, host_embedding))


def prefill_widths(nets: dict[str, NetSpec], layers: int, host_embedding: bool) -> tuple[int, ...]:
    """The widths every layer (and the embedding, on the device) has a prefill net for."""
    widest = nets["block_0"].inputs[0].shape[1]
    if widest is None:
        return ()
    widths = {widest} | {int(m.group(1)) for name in nets if (m := re.fullmatch(r"block_0_(\d+)", name))}
    bases = [f"block_{i}" for i in range(layers)] + ([] if host_embedding else ["embedding"])
    for width in widths:
        missing = [bucket_net(base, width, widest) for base in bases if bucket_net(base, width, widest) not in nets]
        if missing:
            raise ModelFileError(f"the prefill at width {width} lacks the net(s) {', '.join(missing[:3])}: "
                                 "the bmodel is incomplete")
    return tuple(sorted(widths))


@dataclass
class KvSlot:
    """One conversation's place in the backend: a K and a V cache per layer, and how full."""
    k: list[Tensor]
    v: list[Tensor]
    filled: int = 0  # positions held
    prompt_length: int = 0


@dataclass
class _PrefillBuffers:
    """The tensors of one prefill width, kept for the next prompt of that width."""
    hidden: list[Tensor]
    positions: Tensor
    mask: Tensor
    past: list[Tensor]


class Generator:
    """Owns `slots` KV caches on one device (one until open_slots() asks for more; each is
    allocated on first use). Calls are made from one thread at a time; between calls,
    generations on different slots may take turns step by step.

    `embedding_table`: the model's host embedding table (language/embedding.py), for models
    compiled without the embedding nets; None runs the nets."""

    notice = None

    def __init__(self, backend: Backend, family: Family, embedding_table: np.ndarray | None = None):
        self.backend, self.family, self.slots = backend, family, 1
        self.nets = backend.nets()
        self.layout = NetLayout.read(self.nets, host_embedding=embedding_table is not None)
        block = self.nets["block_cache_0"]
        cache_spec = block.inputs[3]
        if embedding_table is None:
            widest = self.layout.prefill_widths[-1] if self.layout.prefill_widths else None
            self.embedding: Embedding = NetEmbedding(backend, widest)
        else:
            check_table(embedding_table, self.layout.hidden_size, block.inputs[0].dtype)
            self.embedding = HostEmbedding(backend, embedding_table)
        self.row = int(np.prod(cache_spec.shape[2:]))  # elements of one cached position
        self._cache_spec = cache_spec
        self._slots: dict[int, KvSlot] = {}
        self._hidden = [self._alloc(block.inputs[0]) for _ in range(2)]
        self._position = self._alloc(block.inputs[1])
        self._mask = self._alloc(block.inputs[2])
        self._present = [self._alloc(block.outputs[i]) for i in (1, 2)]
        self._logits = self._alloc(self.nets["lm_head"].outputs[0])
        self._prefill_buffers: dict[int, _PrefillBuffers] = {}

    def _alloc(self, spec: TensorSpec, width: int | None = None) -> Tensor:
        return self.backend.alloc(tuple(width if d is None else d for d in spec.shape), spec.dtype)

    @property
    def slot_bytes(self) -> int:
        """The memory one KV slot takes in the backend."""
        spec = self._cache_spec
        return 2 * self.layout.num_layers * int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize

    def open_slots(self, wanted: int) -> int:
        self.slots = max(self.slots, wanted)  # never fewer: another user of this generator may hold them
        return max(1, wanted)

    def slot(self, index: int = 0) -> KvSlot:
        if not 0 <= index < self.slots:
            raise ValueError(f"there is no KV slot {index}: this generator holds {self.slots}")
        if index not in self._slots:
            spec, layers = self._cache_spec, range(self.layout.num_layers)
            self._slots[index] = KvSlot([self.backend.alloc(spec.shape, spec.dtype) for _ in layers],
                                        [self.backend.alloc(spec.shape, spec.dtype) for _ in layers])
        return self._slots[index]

    @property
    def context_length(self) -> int:
        return self.layout.cache_length

    @property
    def prompt_limit(self) -> int:
        """The longest prompt one prefill takes."""
        widths = self.layout.prefill_widths
        return min(widths[-1], self.layout.cache_length) if widths else self.layout.cache_length

    def prefill_width(self, length: int) -> int:
        """The narrowest prefill that takes a prompt of `length` tokens (the length itself when
        the nets take any length)."""
        return next((w for w in self.layout.prefill_widths if w >= length), length)

    def _buffers(self, width: int) -> _PrefillBuffers:
        if width in self._prefill_buffers:
            return self._prefill_buffers[width]
        net = self.nets[self._block(0, width)]
        positions = self.family.prefill_positions(1, width)  # only the shape and type matter here
        mask = self.family.prefill_mask(1, width)
        buffers = _PrefillBuffers([self._alloc(net.inputs[0], width) for _ in range(2)],
                                  self.backend.alloc(positions.shape, net.inputs[1].dtype),
                                  self.backend.alloc(mask.shape, net.inputs[2].dtype),
                                  [self.backend.alloc((1, width, *self.nets["block_cache_0"].inputs[3].shape[2:]),
                                                      net.outputs[i].dtype) for i in (1, 2)])
        if self.layout.prefill_widths:  # static widths: a handful, worth keeping; any-length nets: not
            self._prefill_buffers[width] = buffers
        return buffers

    def _block(self, layer: int, width: int) -> str:
        widths = self.layout.prefill_widths
        return bucket_net(f"block_{layer}", width, widths[-1]) if widths else f"block_{layer}"

    def prefill(self, ids: list[int], image: ImageRows | None = None, slot: int = 0) -> np.ndarray:
        """Run the prompt through every layer, fill the cache; returns next-token logits.

        The prompt runs through the narrowest prefill nets that take it. With an image, its
        prefix embeddings (a tensor already in the backend) overwrite the placeholder rows of
        the embedding output: one backend copy, then the blocks run.
        """
        b, length, kv = self.backend, len(ids), self.slot(slot)
        if not 0 < length <= self.prompt_limit:
            raise ContextOverflow(f"a prompt of {length} tokens does not fit the model's context of "
                                  f"{self.prompt_limit} tokens")
        width = self.prefill_width(length)
        buffers = self._buffers(width)
        hidden, past = list(buffers.hidden), buffers.past
        b.write(buffers.positions, self.family.prefill_positions(length, width))
        b.write(buffers.mask, self.family.prefill_mask(length, width))
        self.embedding.prefill(np.pad(np.asarray(ids, np.int32), (0, width - length))[None], hidden[0])
        if image is not None:
            self._splice(hidden[0], image, length)
        for i in range(self.layout.num_layers):
            b.run(self._block(i, width), [hidden[0], buffers.positions, buffers.mask], [hidden[1], *past])
            b.copy(kv.k[i], past[0], length * self.row)
            b.copy(kv.v[i], past[1], length * self.row)
            hidden.reverse()
        h = self.layout.hidden_size
        b.copy(self._hidden[0], hidden[0], h, src_offset=(length - 1) * h)
        kv.filled = kv.prompt_length = length
        return self._head(self._hidden[0])

    def _splice(self, hidden, image: ImageRows, length: int) -> None:
        rows, h = image.embeds.shape[1], self.layout.hidden_size
        if image.embeds.shape[-1] != h:
            raise ModelFileError(f"the vision net gives rows of {image.embeds.shape[-1]} values, "
                                 f"the language model takes {h}")
        if image.embeds.dtype != hidden.dtype:
            raise ModelFileError(f"the vision net gives {image.embeds.dtype} rows, the language model takes "
                                 f"{hidden.dtype}: compile both with the same float type")
        if not 0 <= image.start <= length - rows:
            raise ValueError(f"image rows {image.start}..{image.start + rows} fall outside the {length}-token prompt")
        self.backend.copy(hidden, image.embeds, rows * h, dst_offset=image.start * h)

    def decode(self, token: int, slot: int = 0) -> np.ndarray:
        """Feed one token at the slot's next position; returns the logits after it."""
        kv = self.slot(slot)
        if kv.filled >= self.layout.cache_length:
            raise ContextOverflow("the KV cache is full")
        b, hidden, filled = self.backend, self._hidden, kv.filled
        b.write(self._position, self.family.decode_position(filled, kv.prompt_length))
        self.embedding.decode(token, hidden[0])
        if b.reads_filled_history:  # attend over the filled rows only: the cost follows the conversation
            mask = b.view(self._mask, (*self._mask.shape[:-1], filled + 1))
            b.write(mask, self.family.decode_mask(filled, filled))
            filled_rows = (1, filled, *self._cache_spec.shape[2:])
            history = [(b.view(k, filled_rows), b.view(v, filled_rows)) for k, v in zip(kv.k, kv.v)]
        else:
            mask = self._mask
            b.write(mask, self.family.decode_mask(filled, self.layout.cache_length))
            history = list(zip(kv.k, kv.v))
        offset = filled * self.row
        for i, (history_k, history_v) in enumerate(history):
            b.run(f"block_cache_{i}", [hidden[0], self._position, mask, history_k, history_v],
                  [hidden[1], *self._present])
            b.copy(kv.k[i], self._present[0], self.row, dst_offset=offset)
            b.copy(kv.v[i], self._present[1], self.row, dst_offset=offset)
            hidden.reverse()
        kv.filled += 1
        return self._head(hidden[0])

    def _head(self, last_hidden) -> np.ndarray:
        self.backend.run("lm_head", [last_hidden], [self._logits])
        return self.backend.read(self._logits).reshape(-1)

    def generate(self, ids: list[int], sampler: Sampler, max_new_tokens: int, image: ImageRows | None = None,
                 slot: int = 0) -> Generation:
        """New token ids until a stop token, max_new_tokens, or a full context."""
        return Generation(self._generate(ids, sampler, max_new_tokens, image, slot))

    def _generate(self, ids, sampler, max_new_tokens, image, slot) -> Steps[int, None, str]:
        logits = self.prefill(ids, image, slot)
        seen = np.asarray(ids, dtype=np.int64)
        if image is not None:  # placeholder ids are not text the answer could repeat
            seen = np.delete(seen, np.s_[image.start:image.start + image.embeds.shape[1]])
        kv = self.slot(slot)
        return (yield from sample_tokens(logits, sampler, lambda token: self.decode(token, slot),
                                         lambda: kv.filled < self.layout.cache_length, max_new_tokens,
                                         self.family.stop_ids, seen))
