"""Decode steps of several KV slots in one call, on nets that take the slots as a batch.

The CPU copies' llama layers and lm_head (export/llama_onnxruntime.py) take a batch of rows,
each with its own cache length, and write the new K/V rows into the caches in place. So the
slots' caches are rows of one [slots,KV,SEQ,D] tensor per layer, and when generations on
several slots each wait to have a token decoded, one step decodes them all: its weights are
read once instead of once a slot, which is what a CPU's decoding is bound by.

The Generator tells a SlotBatch which token each generation will have decoded next (wait);
the Scheduler calls step() before it steps the generations; each generation's decode() then
finds its logits computed (take). Nothing else changes: a token decoded ahead is in its
slot's cache and row keys exactly as a decode() would have put it there.
"""
from __future__ import annotations

from typing import Hashable, Protocol

import numpy as np

from language.embedding import Embedding
from runtime.backend import Backend, Tensor, TensorSpec


class Layout(Protocol):
    """What a batch needs of the nets' layout (language/generate.py NetLayout)."""
    num_layers: int
    hidden_size: int
    vocab_size: int
    cache_length: int
    decode_net: str


class Slot(Protocol):
    """What a batch needs of a KV slot (language/generate.py KvSlot)."""
    k: list[Tensor]
    v: list[Tensor]
    keys: list[Hashable]

    @property
    def filled(self) -> int: ...


class SlotBatch:
    """`slots`: the Generator's KV slots by index, whose caches this batch holds (rows()).
    `steps`: whether lm_head takes a batch too, so that step() can decode several slots."""

    def __init__(self, backend: Backend, layout: Layout, cache_spec: TensorSpec, embedding: Embedding,
                 slots: dict[int, Slot], steps: bool):
        self.backend, self.layout, self.cache_spec, self.embedding = backend, layout, cache_spec, embedding
        self.slots, self.steps = slots, steps
        self._caches: tuple[list[Tensor], list[Tensor]] | None = None  # K and V, one tensor per layer
        self._waiting: dict[int, int] = {}  # slot -> the token its generation will have decoded next
        self._ready: dict[int, tuple[int, np.ndarray]] = {}  # slot -> (token, logits) decoded ahead
        self._buffers: dict[range, tuple] = {}  # a step's tensors, by the slots it steps

    def rows(self, index: int, slots: int) -> tuple[list[Tensor], list[Tensor]]:
        """Slot `index`'s K and V caches: its rows of the batch's tensors, which grow to hold
        `slots` rows when they hold fewer (the slots' rows copied over)."""
        b, spec = self.backend, self.cache_spec
        if self._caches is None or self._caches[0][0].shape[0] <= index:
            rows, layers = max(slots, index + 1), range(self.layout.num_layers)
            grown = tuple([b.alloc((rows, *spec.shape[1:]), spec.dtype) for _ in layers] for _ in "kv")
            if self._caches is not None:
                for old, new in zip(self._caches[0] + self._caches[1], grown[0] + grown[1]):
                    b.copy(new, old, int(np.prod(old.shape)))
            self._caches, self._buffers = grown, {}
            for held, kv in self.slots.items():
                kv.k, kv.v = self.rows(held, slots)
        size = int(np.prod(spec.shape))
        return tuple([b.view(t, spec.shape, index * size) for t in tensors] for tensors in self._caches)

    def wait(self, slot: int, token: int) -> None:
        """The generation on `slot` will have `token` decoded when next asked."""
        if self.steps:
            self._waiting[slot] = token

    def forget(self, slot: int) -> None:
        """A new prompt is read into `slot`: nothing waits there any more."""
        self._waiting.pop(slot, None), self._ready.pop(slot, None)

    def take(self, slot: int, token: int) -> np.ndarray | None:
        """The logits after `token`, if step() decoded it ahead on `slot`; else None, and the
        caller decodes it (a token decoded ahead in its place is taken back first)."""
        self._waiting.pop(slot, None)
        ready = self._ready.pop(slot, None)
        if ready is None:
            return None
        if ready[0] == token:
            return ready[1]
        del self.slots[slot].keys[-1]  # its row is written over
        return None

    def step(self) -> None:
        """Decode every waiting token in one step, when two or more wait. The batch is the slots
        from the first one waiting to the last: rows of other slots among them go through too,
        at their next free position, where nothing is read."""
        if len(self._waiting) < 2:
            return
        b, first = self.backend, min(self._waiting)
        slots = range(first, max(self._waiting) + 1)
        filled = [self.slots[i].filled if i in self.slots else 0 for i in slots]
        if max(filled) >= self.layout.cache_length:  # a full slot has no free row to write: one by one
            return
        hidden, last_row, total, logits, k, v = self._step_buffers(slots)
        h = self.layout.hidden_size
        for slot, token in self._waiting.items():
            self.embedding.decode(token, b.view(hidden[0], (1, 1, h), (slot - first) * h))
        b.write(last_row, np.array(filled, np.int32))
        b.write(total, np.array(max(filled) + 1, np.int32))
        for i in range(self.layout.num_layers):
            b.run(f"{self.layout.decode_net}_{i}", [hidden[0], last_row, total, k[i], v[i]], [hidden[1], k[i], v[i]])
            hidden.reverse()
        b.run("lm_head", [hidden[0]], [logits])
        every = b.read(logits)
        for slot, token in self._waiting.items():
            self.slots[slot].keys.append(token)
            self._ready[slot] = token, every[slot - first]
        self._waiting.clear()

    def _step_buffers(self, slots: range) -> tuple:
        """Hidden states (two), lengths, logits and the K and V caches of `slots`, for a step
        over them."""
        if slots not in self._buffers:
            b, rows, spec = self.backend, len(slots), self.cache_spec
            size = int(np.prod(spec.shape))
            self._buffers[slots] = ([b.alloc((rows, 1, self.layout.hidden_size), spec.dtype) for _ in range(2)],
                                    b.alloc((rows,), np.int32), b.alloc((), np.int32),
                                    b.alloc((rows, self.layout.vocab_size), np.float32),
                                    *([b.view(layer, (rows, *spec.shape[1:]), slots.start * size) for layer in tensors]
                                      for tensors in self._caches))
        hidden, *rest = self._buffers[slots]
        return [*hidden], *rest
