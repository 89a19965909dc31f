"""The generation loop, written once over the Backend interface.

prefill: embedding -> block_0..N-1 -> lm_head on the last prompt row; each block's K/V
rows are copied into a fixed-length cache that stays in the backend.
decode:  embedding_cache -> block_cache_0..N-1 (reading that cache, returning the new
row, which is copied in at its position) -> lm_head.

Every shape (layers, hidden size, cache length, prefill width) is read from the nets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from language.families.base import Family
from language.sampling import Sampler
from runtime.backend import Backend, ModelFileError, NetSpec, Tensor


@dataclass(frozen=True)
class ImageRows:
    """An image's prefix embeddings [1,Q,H] in the backend, and the prompt row they start at."""
    embeds: Tensor
    start: int


class ContextOverflow(ValueError):
    """The prompt does not fit the model's context."""


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
    prefill_width: int | None  # None: the prefill nets take any length

    @staticmethod
    def read(nets: dict[str, NetSpec]) -> "NetLayout":
        for needed in ("embedding", "embedding_cache", "lm_head", "block_0", "block_cache_0"):
            if needed not in nets:
                raise ModelFileError(f"the model has no '{needed}' net (found: {', '.join(sorted(nets)) or 'none'})")
        layers = count_layers(nets)
        hidden = nets["embedding"].outputs[0].shape[-1]
        history = nets["block_cache_0"].inputs[3].shape
        for i in range(layers):
            if nets[f"block_cache_{i}"].inputs[3].shape != history:
                raise ModelFileError(f"block_cache_{i} has a KV cache of shape {nets[f'block_cache_{i}'].inputs[3].shape},"
                                     f" block_cache_0 has {history}: the nets come from different exports")
        if nets["lm_head"].inputs[0].shape[-1] != hidden:
            raise ModelFileError("lm_head and embedding disagree on the hidden size")
        return NetLayout(layers, hidden, nets["lm_head"].outputs[0].shape[-1], history[1],
                         nets["block_0"].inputs[0].shape[1])


class Generator:
    """Owns the KV cache of one device; one generation at a time."""

    def __init__(self, backend: Backend, family: Family):
        self.backend, self.family = backend, family
        self.nets = backend.nets()
        self.layout = NetLayout.read(self.nets)
        b, block = backend, self.nets["block_cache_0"]
        cache_spec = block.inputs[3]
        self.row = int(np.prod(cache_spec.shape[2:]))  # elements of one cached position
        self.cache_k = [b.alloc(cache_spec.shape, cache_spec.dtype) for _ in range(self.layout.num_layers)]
        self.cache_v = [b.alloc(cache_spec.shape, cache_spec.dtype) for _ in range(self.layout.num_layers)]
        self._ids = self._alloc_input("embedding_cache", 0)
        self._hidden = [self._alloc_output("embedding_cache", 0) for _ in range(2)]
        self._position = self._alloc_input("block_cache_0", 1)
        self._mask = self._alloc_input("block_cache_0", 2)
        self._present = [self._alloc_output("block_cache_0", i) for i in (1, 2)]
        self._logits = self._alloc_output("lm_head", 0)
        self.filled = 0  # positions held in the cache
        self.prompt_length = 0
        self.finish_reason = ""  # why the last generate() ended: "stop", "length" or "context"

    def _alloc_input(self, net: str, index: int):
        spec = self.nets[net].inputs[index]
        return self.backend.alloc(spec.shape, spec.dtype)

    def _alloc_output(self, net: str, index: int):
        spec = self.nets[net].outputs[index]
        return self.backend.alloc(spec.shape, spec.dtype)

    @property
    def context_length(self) -> int:
        return self.layout.cache_length

    @property
    def prompt_limit(self) -> int:
        """The longest prompt one prefill takes."""
        return min(self.layout.prefill_width or self.layout.cache_length, self.layout.cache_length)

    def prefill(self, ids: list[int], image: ImageRows | None = None) -> np.ndarray:
        """Run the prompt through every layer, fill the cache; returns next-token logits.

        With an image, its prefix embeddings (a tensor already in the backend) overwrite the
        placeholder rows of the embedding output: one backend copy, then the blocks run.
        """
        b, length = self.backend, len(ids)
        width = self.layout.prefill_width or length
        if not 0 < length <= self.prompt_limit:
            raise ContextOverflow(f"a prompt of {length} tokens does not fit the model's context of "
                                  f"{self.prompt_limit} tokens")
        net = self.nets["block_0"]
        ids_t = b.alloc((1, width), self.nets["embedding"].inputs[0].dtype)
        b.write(ids_t, np.pad(np.asarray(ids, np.int32), (0, width - length))[None])
        hidden = [b.alloc((1, width, self.layout.hidden_size), net.inputs[0].dtype) for _ in range(2)]
        positions_np = self.family.prefill_positions(length, width)
        mask_np = self.family.prefill_mask(length, width)
        positions = b.alloc(positions_np.shape, net.inputs[1].dtype)
        mask = b.alloc(mask_np.shape, net.inputs[2].dtype)
        b.write(positions, positions_np)
        b.write(mask, mask_np)
        past = [b.alloc((1, width, *self.nets["block_cache_0"].inputs[3].shape[2:]), net.outputs[i].dtype)
                for i in (1, 2)]
        b.run("embedding", [ids_t], [hidden[0]])
        if image is not None:
            self._splice(hidden[0], image, length)
        for i in range(self.layout.num_layers):
            b.run(f"block_{i}", [hidden[0], positions, mask], [hidden[1], *past])
            b.copy(self.cache_k[i], past[0], length * self.row)
            b.copy(self.cache_v[i], past[1], length * self.row)
            hidden.reverse()
        h = self.layout.hidden_size
        b.copy(self._hidden[0], hidden[0], h, src_offset=(length - 1) * h)
        self.filled = self.prompt_length = length
        return self._head(self._hidden[0])

    def _splice(self, hidden, image: ImageRows, length: int) -> None:
        rows, h = image.embeds.shape[1], self.layout.hidden_size
        if image.embeds.shape[-1] != h:
            raise ModelFileError(f"the vision net gives rows of {image.embeds.shape[-1]} values, "
                                 f"the language model takes {h}")
        if image.embeds.dtype != hidden.dtype:
            raise ModelFileError(f"the vision net gives {image.embeds.dtype} rows, the language model's embedding "
                                 f"gives {hidden.dtype}: compile both with the same float type")
        if not 0 <= image.start <= length - rows:
            raise ValueError(f"image rows {image.start}..{image.start + rows} fall outside the {length}-token prompt")
        self.backend.copy(hidden, image.embeds, rows * h, dst_offset=image.start * h)

    def decode(self, token: int) -> np.ndarray:
        """Feed one token at the next position; returns the logits after it."""
        if self.filled >= self.layout.cache_length:
            raise ContextOverflow("the KV cache is full")
        b, hidden = self.backend, self._hidden
        b.write(self._ids, np.array([[token]], np.int32))
        b.write(self._position, self.family.decode_position(self.filled, self.prompt_length))
        b.write(self._mask, self.family.decode_mask(self.filled, self.layout.cache_length))
        b.run("embedding_cache", [self._ids], [hidden[0]])
        offset = self.filled * self.row
        for i in range(self.layout.num_layers):
            b.run(f"block_cache_{i}", [hidden[0], self._position, self._mask, self.cache_k[i], self.cache_v[i]],
                  [hidden[1], *self._present])
            b.copy(self.cache_k[i], self._present[0], self.row, dst_offset=offset)
            b.copy(self.cache_v[i], self._present[1], self.row, dst_offset=offset)
            hidden.reverse()
        self.filled += 1
        return self._head(hidden[0])

    def _head(self, last_hidden) -> np.ndarray:
        self.backend.run("lm_head", [last_hidden], [self._logits])
        return self.backend.read(self._logits).reshape(-1)

    def generate(self, ids: list[int], sampler: Sampler, max_new_tokens: int,
                 image: ImageRows | None = None) -> Iterator[int]:
        """Yield new token ids until a stop token, max_new_tokens, or a full context."""
        self.finish_reason = ""
        logits = self.prefill(ids, image)
        seen = np.asarray(ids, dtype=np.int64)
        if image is not None:  # placeholder ids are not text the answer could repeat
            seen = np.delete(seen, np.s_[image.start:image.start + image.embeds.shape[1]])
        for step in range(max_new_tokens):
            token = sampler(logits, seen)
            if token in self.family.stop_ids:
                self.finish_reason = "stop"
                return
            yield token
            if self.filled >= self.layout.cache_length:
                self.finish_reason = "context"
                return
            if step + 1 < max_new_tokens:
                seen = np.append(seen, token)
                logits = self.decode(token)
        self.finish_reason = "length"
