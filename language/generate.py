"""The generation loop, written once over the Backend interface.

prefill: embedding -> block_0..N-1 -> lm_head on the last prompt row; each block's K/V
rows are copied into a fixed-length cache that stays in the backend.
decode:  embedding_cache -> block_cache_0..N-1 (reading that cache, returning the new
row, which is copied in at its position) -> lm_head.

prefill after cached rows: block_kv_0..N-1, when the model has them (causal families): the new
rows attend to the cache as well. A slot remembers what fills its rows, so a follow-up whose
prompt begins with the conversation so far prefills only what is new; a long prompt is read
in chunks, and the generation yields between chunks so that a scheduler can step other
answers. A backend that reads filled history (ONNX Runtime) runs every step this way: a
fresh prompt over no history rows, and a decode step as one row (so that a layer is one
session, with one copy of its weights). The CPU copies' llama layers go further: they write their
K/V rows into a heads-first cache themselves (NetLayout.cache_in_place), so nothing is copied,
and they take the slots as a batch: generations on several slots have their next tokens
decoded in one step (decode_pending, which the Scheduler calls before it steps them).

The embedding is the `embedding` nets or a host table (language/embedding.py). Bmodels are
static: their prefill nets may come in several widths (`block_<i>` the widest, `block_<i>_<W>`
narrower ones) and a prompt runs through the narrowest that takes it, so a short question
costs what it is, not what the context is. Every shape (layers, hidden size, cache length,
prefill widths) is read from the nets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Generator as Steps, Hashable, Protocol, Sequence

import numpy as np

from language.embedding import Embedding, HostEmbedding, NetEmbedding, bucket_net, check_table
from language.families.base import Family
from language.sampling import PENALTY_WINDOW, Sampler, penalty_window
from language.slot_batch import SlotBatch
from runtime.backend import Backend, ModelFileError, NetSpec, Tensor, TensorSpec


PREFILL_CHUNK = 256  # prompt rows read per step where the prefill nets take any length

@dataclass(frozen=True)
class ImageRows:
    """An image's prefix embeddings [1,Q,H] in the backend, and the prompt row they start at.
    `key` names the picture (the same picture, the same key) so that a cache holding its rows
    can be reused; None: the embeddings tensor itself is the key (held, not its id(), which a
    later tensor could take over once this one is freed)."""
    embeds: Tensor
    start: int
    key: Hashable | None = None


def row_keys(ids: Sequence[int], image: ImageRows | None = None) -> list[Hashable]:
    """What fills each row of a prompt: its token id, or (picture, row) for an image's rows."""
    keys: list[Hashable] = list(ids)
    if image is not None:
        picture, rows = image.embeds if image.key is None else image.key, image.embeds.shape[1]
        keys[image.start:image.start + rows] = [(picture, row) for row in range(rows)]
    return keys


class ContextOverflow(ValueError):
    """The prompt does not fit the model's context."""


class Generation:
    """One answer's token ids as they come, and why they ended: "stop", "length" or "context".
    None comes between the chunks of a long prefill: no token yet, others may take a turn."""

    def __init__(self, steps: Steps[int | None, None, str]):
        self._steps, self.finish_reason = steps, ""

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> int | None:
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
    reuse_prefixes: bool  # whether a generation keeps the rows its slot holds of its prompt (reusable_rows)
    notice: str | None  # what users should know about its sampling, if anything

    @property
    def context_length(self) -> int: ...

    @property
    def prompt_limit(self) -> int: ...

    def open_slots(self, wanted: int) -> int:
        """Hold at least `wanted` KV caches (each allocated on first use); returns how many of them
        the caller may use (slots 0 to that number - 1)."""

    def reusable_rows(self, slot: int, keys: Sequence[Hashable]) -> int:
        """How many of a prompt's first rows (row_keys) the slot holds already: a generation on
        that slot prefills only the rest."""

    def held_rows(self, slot: int) -> int:
        """How many rows the slot holds (of its last conversation)."""

    def generate(self, ids: list[int], sampler: Sampler, max_new_tokens: int, image: ImageRows | None = None,
                 slot: int = 0) -> Generation: ...

    def decode_pending(self) -> None:
        """Decode ahead, in one step, the tokens that generations on several slots have yielded and
        will have decoded when next asked, where the nets allow it; otherwise nothing."""


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
    """How many layers the nets have, each with the same kinds of net: a decode net (block_cache_<i>,
    or block_kv_<i> with one row) and a prefill (block_<i>, block_kv_<i> or both)."""
    found = [m for name in nets if (m := re.fullmatch(r"(block|block_cache|block_kv)_(\d+)", name))]
    layers = max((int(m.group(2)) + 1 for m in found), default=0)
    bases = {m.group(1) for m in found}
    missing = [f"{base}_{i}" for base in sorted(bases) for i in range(layers) if f"{base}_{i}" not in nets]
    if missing:
        raise ModelFileError(f"the model lacks the net(s) {', '.join(missing[:3])}: a file is missing, or the nets "
                             "come from different exports")
    for kind, names in (("decode", {"block_cache", "block_kv"}), ("prefill", {"block", "block_kv"})):
        if not bases & names:
            raise ModelFileError(f"the model has no {kind} net ({' or '.join(f'{n}_0' for n in sorted(names))})")
    return layers


@dataclass(frozen=True)
class NetLayout:
    num_layers: int
    hidden_size: int
    vocab_size: int
    cache_length: int  # KV rows per layer: the model's context
    prefill_widths: tuple[int, ...] | None  # widths of block_<i>, ascending; () = any length; None: no such nets
    history_widths: tuple[int, ...] | None  # widths of block_kv_<i> as above; None: the model has none
    decode_net: str = "block_cache"  # or "block_kv": a step is a prefill of one row after the cached ones
    cache_in_place: bool = False  # block_kv_<i> writes its rows into a [1,KV,SEQ,D] cache itself (CPU copies)

    @property
    def fresh_prefill(self) -> bool:
        """Whether a prompt starts through block_<i> (else through block_kv_<i> over no history)."""
        return self.prefill_widths is not None

    def widths(self, base: str) -> tuple[int, ...] | None:
        """The widths of the `base` nets ("block" or "block_kv")."""
        return self.prefill_widths if base == "block" else self.history_widths

    @staticmethod
    def read(nets: dict[str, NetSpec], host_embedding: bool = False) -> "NetLayout":
        needed = ("lm_head",) + (() if host_embedding else ("embedding", "embedding_cache"))
        for name in needed:
            if name not in nets:
                raise ModelFileError(f"the model has no '{name}' net (found: {', '.join(sorted(nets)) or 'none'})")
        layers = count_layers(nets)
        decode = "block_cache" if "block_cache_0" in nets else "block_kv"
        hidden = nets[f"{decode}_0"].inputs[0].shape[-1]
        history = nets[f"{decode}_0"].inputs[3].shape
        # The CPU copies' layers (export/llama_onnxruntime.py) take the lengths instead of positions
        # and a mask, and their present K/V are the past K/V tensors themselves, heads-first.
        in_place = nets[f"{decode}_0"].inputs[1].name == "seqlens_k"
        for i in range(layers):
            if nets[f"{decode}_{i}"].inputs[3].shape != history:
                raise ModelFileError(f"{decode}_{i} has a KV cache of shape {nets[f'{decode}_{i}'].inputs[3].shape},"
                                     f" {decode}_0 has {history}: the nets come from different exports")
        if nets["lm_head"].inputs[0].shape[-1] != hidden:
            raise ModelFileError("lm_head and the blocks disagree on the hidden size")
        widths = {base: prefill_widths(nets, base, layers, host_embedding) if f"{base}_0" in nets else None
                  for base in ("block", "block_kv")}
        return NetLayout(layers, hidden, nets["lm_head"].outputs[0].shape[-1], history[2 if in_place else 1],
                         widths["block"], widths["block_kv"], decode, in_place)


def prefill_widths(nets: dict[str, NetSpec], base: str, layers: int, host_embedding: bool) -> tuple[int, ...]:
    """The widths every layer's `base` net (and the embedding, on the device) comes in."""
    widest = nets[f"{base}_0"].inputs[0].shape[1]
    if widest is None:
        return ()
    widths = {widest} | {int(m.group(1)) for name in nets if (m := re.fullmatch(rf"{base}_0_(\d+)", name))}
    bases = [f"{base}_{i}" for i in range(layers)] + ([] if host_embedding else ["embedding"])
    for width in widths:
        missing = [bucket_net(base, width, widest) for base in bases if bucket_net(base, width, widest) not in nets]
        if missing:
            raise ModelFileError(f"the prefill at width {width} lacks the net(s) {', '.join(missing[:3])}: "
                                 "the bmodel is incomplete")
    return tuple(sorted(widths))


@dataclass
class KvSlot:
    """One conversation's place in the backend: a K and a V cache per layer, what fills its rows
    (row_keys: the prompt's, then each decoded token's id), and where the answer began."""
    k: list[Tensor]
    v: list[Tensor]
    keys: list[Hashable] = field(default_factory=list)
    prompt_length: int = 0

    @property
    def filled(self) -> int:
        return len(self.keys)


@dataclass
class _PrefillBuffers:
    """The tensors of one prefill net and width, kept for the next prompt of that width."""
    hidden: list[Tensor]
    positions: Tensor | None  # None, and so are mask and past, for nets with the cache in place
    mask: Tensor | None  # with history on a backend that reads filled rows: as wide as the whole cache
    past: list[Tensor]


class Generator:
    """Owns `slots` KV caches on one device (one until open_slots() asks for more; each is
    allocated on first use). Calls are made from one thread at a time; between calls,
    generations on different slots may take turns step by step.

    `embedding_table`: the model's host embedding table (language/embedding.py), for models
    compiled without the embedding nets; None runs the nets."""

    notice = None

    def __init__(self, backend: Backend, family: Family, embedding_table: np.ndarray | None = None):
        self.backend, self.family, self.slots, self.reuse_prefixes = backend, family, 1, True
        self.nets = backend.nets()
        self.layout = NetLayout.read(self.nets, host_embedding=embedding_table is not None)
        block = self.nets[f"{self.layout.decode_net}_0"]
        cache_spec = block.inputs[3]
        if self.layout.cache_in_place:  # a slot's cache: one row of the batch
            cache_spec = TensorSpec(cache_spec.name, (1, *cache_spec.shape[1:]), cache_spec.dtype)
        if embedding_table is None:
            widths = self.layout.prefill_widths or self.layout.history_widths
            self.embedding: Embedding = NetEmbedding(backend, widths[-1] if widths else None)
        else:
            check_table(embedding_table, self.layout.hidden_size, block.inputs[0].dtype)
            self.embedding = HostEmbedding(backend, embedding_table)
        self.row = int(np.prod(cache_spec.shape[2:]))  # elements of one cached position
        self._cache_spec = cache_spec
        self._slots: dict[int, KvSlot] = {}
        self._hidden = [self._alloc(block.inputs[0], 1) for _ in range(2)]
        if self.layout.cache_in_place:  # the rows' last index and their count: what such a net reads
            self._lengths = [self._alloc(block.inputs[i]) for i in (1, 2)]
        else:
            self._position = self._alloc(block.inputs[1], 1)
            self._mask = backend.alloc((1, 1, 1, self.layout.cache_length + 1), block.inputs[2].dtype)
            self._present = [self._alloc(block.outputs[i], 1) for i in (1, 2)]
        self._logits = self._alloc(self.nets["lm_head"].outputs[0])
        self._prefill_buffers: dict[tuple[str, int], _PrefillBuffers] = {}
        self._batch = SlotBatch(backend, self.layout, cache_spec, self.embedding, self._slots,
                                steps=self.nets["lm_head"].inputs[0].shape[0] is None) \
            if self.layout.cache_in_place else None

    def _alloc(self, spec: TensorSpec, width: int | None = None) -> Tensor:
        """A tensor for one slot: a batch dimension (the first, when open) of 1, other open ones `width`."""
        shape = (1 if i == 0 and d is None else width if d is None else d for i, d in enumerate(spec.shape))
        return self.backend.alloc(tuple(shape), spec.dtype)

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
            if self.layout.cache_in_place:
                self._slots[index] = KvSlot(*self._batch.rows(index, self.slots))
            else:
                spec, layers = self._cache_spec, range(self.layout.num_layers)
                self._slots[index] = KvSlot([self.backend.alloc(spec.shape, spec.dtype) for _ in layers],
                                            [self.backend.alloc(spec.shape, spec.dtype) for _ in layers])
        return self._slots[index]

    def reusable_rows(self, slot: int, keys: Sequence[Hashable]) -> int:
        if not self.reuse_prefixes or self.layout.history_widths is None or slot not in self._slots:
            return 0
        held, same = self._slots[slot].keys, 0
        for same, (a, b) in enumerate(zip(held, keys[:-1]), 1):  # the last row is read again for its logits
            if a != b:
                return same - 1
        return same

    def held_rows(self, slot: int) -> int:
        return self._slots[slot].filled if slot in self._slots else 0

    @property
    def context_length(self) -> int:
        return self.layout.cache_length

    @property
    def prompt_limit(self) -> int:
        """The longest prompt a prefill takes: the context when it can be read in chunks."""
        widths = self.layout.prefill_widths
        if self.layout.history_widths is not None or not widths:
            return self.layout.cache_length
        return min(widths[-1], self.layout.cache_length)

    def prefill_chunk(self, start: int, remaining: int) -> tuple[str, int, int]:
        """The prefill net to read prompt rows from `start` with ("block" or "block_kv"), how many
        rows it takes in, and its width (rows padded to it)."""
        fresh = start == 0 and self.layout.fresh_prefill
        base = "block" if fresh else "block_kv"
        widths = self.layout.widths(base)
        if not widths:  # any length; a long prompt in chunks, so that other answers can step between them
            count = remaining if fresh else min(remaining, PREFILL_CHUNK)
            return base, count, count
        count = min(remaining, widths[-1])
        return base, count, next(w for w in widths if w >= count)

    def _buffers(self, base: str, width: int) -> _PrefillBuffers:
        if (base, width) in self._prefill_buffers:
            return self._prefill_buffers[base, width]
        net = self.nets[self._net(base, 0, width)]
        if self.layout.cache_in_place:
            return _PrefillBuffers([self._alloc(net.inputs[0], width) for _ in range(2)], None, None, [])
        with_history = base == "block_kv"
        history = self.layout.cache_length if with_history else 0  # the widest the mask gets
        buffers = _PrefillBuffers([self._alloc(net.inputs[0], width) for _ in range(2)],
                                  self._alloc(net.inputs[1], width),
                                  self.backend.alloc((1, 1, width, history + width), net.inputs[2].dtype),
                                  [self.backend.alloc((1, width, *self._cache_spec.shape[2:]), net.outputs[i].dtype)
                                   for i in (1, 2)])
        if self.layout.widths(base):  # static widths: a handful, worth keeping; any-length nets: not
            self._prefill_buffers[base, width] = buffers
        return buffers

    def _net(self, base: str, layer: int, width: int) -> str:
        widths = self.layout.widths(base)
        return bucket_net(f"{base}_{layer}", width, widths[-1]) if widths else f"{base}_{layer}"

    def prefill(self, ids: list[int], image: ImageRows | None = None, slot: int = 0) -> np.ndarray:
        """Read the whole prompt at once (see prefill_steps); returns next-token logits."""
        steps = self.prefill_steps(ids, image, slot)
        while True:
            try:
                next(steps)
            except StopIteration as end:
                return end.value

    def prefill_steps(self, ids: list[int], image: ImageRows | None = None, slot: int = 0) -> Steps[None, None, np.ndarray]:
        """Read the prompt into the slot's cache, chunk by chunk, yielding between chunks; returns
        next-token logits. Rows the slot holds already (reusable_rows) are kept, not read again.

        With an image, its prefix embeddings (a tensor already in the backend) overwrite the
        placeholder rows of the embedding output: one backend copy, then the blocks run.
        """
        length, kv = len(ids), self.slot(slot)
        if self._batch is not None:
            self._batch.forget(slot)
        if not 0 < length <= self.prompt_limit:
            raise ContextOverflow(f"a prompt of {length} tokens does not fit the model's context of "
                                  f"{self.prompt_limit} tokens")
        keys = row_keys(ids, image)
        start = self.reusable_rows(slot, keys)
        del kv.keys[start:]
        kv.prompt_length = length
        while True:
            base, count, width = self.prefill_chunk(start, length - start)
            self._read_rows(ids, image, kv, base, start, count, width)
            kv.keys += keys[start:start + count]
            start += count
            if start == length:
                break
            yield
        return self._head(self._hidden[0])

    def _read_rows(self, ids: list[int], image: ImageRows | None, kv: KvSlot, base: str, start: int, count: int,
                   width: int) -> None:
        """Prompt rows start..start+count through every layer; their K/V go into the cache at
        `start`, and the last row's hidden state into self._hidden[0]."""
        buffers = self._buffers(base, width)
        hidden = list(buffers.hidden)
        chunk = np.asarray(ids[start:start + count], np.int32)
        self.embedding.prefill(np.pad(chunk, (0, width - count))[None], hidden[0])
        if image is not None:
            self._splice(hidden[0], image, len(ids), start, count)
        if self.layout.cache_in_place:
            self._layers_in_place(lambda i: self._net(base, i, width), hidden, kv, start, count)
        else:
            self._prefill_layers(base, width, buffers, hidden, kv, start, count)
        h = self.layout.hidden_size
        self.backend.copy(self._hidden[0], hidden[0], h, src_offset=(count - 1) * h)

    def _prefill_layers(self, base: str, width: int, buffers: _PrefillBuffers, hidden: list[Tensor], kv: KvSlot,
                        start: int, count: int) -> None:
        b, past = self.backend, buffers.past
        mask, history = buffers.mask, [()] * self.layout.num_layers
        if base == "block":
            b.write(buffers.positions, self.family.prefill_positions(count, width))
            b.write(mask, self.family.prefill_mask(count, width))
        else:
            b.write(buffers.positions, self.family.history_prefill_positions(start, width))
            rows = start if b.reads_filled_history else self.layout.cache_length
            if b.reads_filled_history:
                mask = b.view(mask, (1, 1, width, rows + width))
                filled_rows = (1, rows, *self._cache_spec.shape[2:])
                history = [(b.view(k, filled_rows), b.view(v, filled_rows)) for k, v in zip(kv.k, kv.v)]
            else:
                history = list(zip(kv.k, kv.v))
            b.write(mask, self.family.history_prefill_mask(start, rows, count, width))
        for i in range(self.layout.num_layers):
            b.run(self._net(base, i, width), [hidden[0], buffers.positions, mask, *history[i]], [hidden[1], *past])
            b.copy(kv.k[i], past[0], count * self.row, dst_offset=start * self.row)
            b.copy(kv.v[i], past[1], count * self.row, dst_offset=start * self.row)
            hidden.reverse()

    def _layers_in_place(self, net: Callable[[int], str], hidden: list[Tensor], kv: KvSlot, filled: int,
                         count: int) -> None:
        """`count` rows after `filled` cached ones through every layer, on nets that write their
        K/V rows into the cache themselves (NetLayout.cache_in_place): no history views, no copies."""
        b, (last_row, total) = self.backend, self._lengths
        b.write(last_row, np.array([filled + count - 1], np.int32))
        b.write(total, np.array(filled + count, np.int32))
        for i in range(self.layout.num_layers):
            b.run(net(i), [hidden[0], last_row, total, kv.k[i], kv.v[i]], [hidden[1], kv.k[i], kv.v[i]])
            hidden.reverse()

    def _splice(self, hidden, image: ImageRows, length: int, start: int, count: int) -> None:
        """The image's rows that fall in prompt rows start..start+count, into `hidden`."""
        rows, h = image.embeds.shape[1], self.layout.hidden_size
        if image.embeds.shape[-1] != h:
            raise ModelFileError(f"the vision net gives rows of {image.embeds.shape[-1]} values, "
                                 f"the language model takes {h}")
        if image.embeds.dtype != hidden.dtype:
            raise ModelFileError(f"the vision net gives {image.embeds.dtype} rows, the language model takes "
                                 f"{hidden.dtype}: compile both with the same float type")
        if not 0 <= image.start <= length - rows:
            raise ValueError(f"image rows {image.start}..{image.start + rows} fall outside the {length}-token prompt")
        first, end = max(image.start, start), min(image.start + rows, start + count)
        if first < end:
            self.backend.copy(hidden, image.embeds, (end - first) * h, dst_offset=(first - start) * h,
                              src_offset=(first - image.start) * h)

    def decode(self, token: int, slot: int = 0) -> np.ndarray:
        """Feed one token at the slot's next position; returns the logits after it."""
        kv = self.slot(slot)
        if self._batch is not None and (ahead := self._batch.take(slot, token)) is not None:
            return ahead
        if kv.filled >= self.layout.cache_length:
            raise ContextOverflow("the KV cache is full")
        self.embedding.decode(token, self._hidden[0])
        if self.layout.cache_in_place:
            self._layers_in_place(lambda i: f"{self.layout.decode_net}_{i}", self._hidden, kv, kv.filled, 1)
        else:
            self._decode_layers(kv)
        kv.keys.append(token)
        return self._head(self._hidden[0])

    def _decode_layers(self, kv: KvSlot) -> None:
        b, hidden, filled = self.backend, self._hidden, kv.filled
        b.write(self._position, self.family.decode_position(filled, kv.prompt_length))
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
            b.run(f"{self.layout.decode_net}_{i}", [hidden[0], self._position, mask, history_k, history_v],
                  [hidden[1], *self._present])
            b.copy(kv.k[i], self._present[0], self.row, dst_offset=offset)
            b.copy(kv.v[i], self._present[1], self.row, dst_offset=offset)
            hidden.reverse()

    def _head(self, last_hidden) -> np.ndarray:
        self.backend.run("lm_head", [last_hidden], [self._logits])
        return self.backend.read(self._logits).reshape(-1)

    def generate(self, ids: list[int], sampler: Sampler, max_new_tokens: int, image: ImageRows | None = None,
                 slot: int = 0) -> Generation:
        """New token ids until a stop token, max_new_tokens, or a full context (None between the
        chunks of a long prefill)."""
        return Generation(self._generate(ids, sampler, max_new_tokens, image, slot))

    def _generate(self, ids, sampler, max_new_tokens, image, slot) -> Steps[int | None, None, str]:
        logits = yield from self.prefill_steps(ids, image, slot)
        seen = np.asarray(ids, dtype=np.int64)
        if image is not None:  # placeholder ids are not text the answer could repeat
            seen = np.delete(seen, np.s_[image.start:image.start + image.embeds.shape[1]])
        kv = self.slot(slot)
        tokens = sample_tokens(logits, sampler, lambda token: self.decode(token, slot),
                               lambda: kv.filled < self.layout.cache_length, max_new_tokens, self.family.stop_ids, seen)
        if self._batch is None:
            return (yield from tokens)
        while True:
            try:
                token = next(tokens)
            except StopIteration as end:
                return end.value
            self._batch.wait(slot, token)  # decode_pending may decode it along with other slots' tokens
            yield token

    def decode_pending(self) -> None:
        """Where the nets take the slots as a batch (the CPU copies), decode the tokens that
        generations on several slots wait to have decoded, in one step (language/slot_batch.py)."""
        if self._batch is not None:
            self._batch.step()
