"""The one owner of the model: a worker thread answers queued requests on the KV slots.

The web page, the HTTP API and anything else that serves several users submit requests
here instead of calling the ChatModel themselves. Each running request holds one of the
generator's KV slots; the worker steps the running answers in turn, a token or a chunk of a
long prompt each, so that every user's answer streams (where the nets take the slots as a
batch, the answers' next tokens are decoded together first, in one step). A slot keeps its conversation's
K/V after the answer: a request starts on the free slot that already holds the most of its
prompt and throws away the least of another conversation (a follow-up finds its own
conversation there and reads only the new turn; a new one takes an empty slot rather than
another conversation's, though they share the system prompt), the one left longest ago
among equals. Requests beyond the slots wait in a bounded queue and
are told their place. Nothing holds a lock while a front end waits on its client: a
request's events travel through its own queue, and closing the event stream (Stop pressed,
client gone) cancels the request, which frees its slot at its next turn, or drops it from
the queue if it has not started.
"""
from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterator

from PIL import Image

from language.chat import ChatModel, Event, Reading
from language.families import Turn
from language.sampling import SamplingSettings


@dataclass(frozen=True)
class Waiting:
    """An event before the answer starts: how many queued requests will start before this one
    (0: it starts when the next slot frees)."""
    ahead: int


HELD_ROW_WEIGHT = 4  # a held row lost counts as this many rows kept: a conversation in a slot is likely to go on


class QueueFull(RuntimeError):
    """Raised by submit() when `max_waiting` requests are already waiting."""


@dataclass(frozen=True)
class ChatRequest:
    history: list[Turn]
    question: str
    settings: SamplingSettings
    image: Image.Image | None = None
    system: str | None = None
    stop: tuple[str, ...] = ()


_END = object()


@dataclass(eq=False)
class Ticket:
    """A submitted request: iterate `events()` (or, on an event loop, `async_events()`) for its
    answer; closing that stream cancels it."""
    request: ChatRequest
    _scheduler: "Scheduler"
    _events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    _arrived: Callable[[], None] | None = None  # wakes an async_events() consumer
    cancelled: threading.Event = field(default_factory=threading.Event)

    def events(self) -> Iterator[Event | Waiting]:
        """Waiting updates, then the ChatModel's events; a failure is raised here."""
        try:
            while (item := self._events.get()) is not _END:
                yield _event(item)
        finally:
            self.cancel()

    async def async_events(self) -> AsyncIterator[Event | Waiting]:
        """events() for a consumer on an asyncio loop: each event wakes the loop directly, so a
        stream does not hold a thread of the server's pool while it waits for tokens."""
        loop, arrived = asyncio.get_running_loop(), asyncio.Event()
        self._arrived = lambda: loop.call_soon_threadsafe(arrived.set)
        try:
            while True:
                try:
                    item = self._events.get_nowait()
                except queue.Empty:
                    await arrived.wait()
                    arrived.clear()  # then the queue is read again: nothing put before is missed
                    continue
                if item is _END:
                    return
                yield _event(item)
        finally:
            self._arrived = None
            self.cancel()

    def _put(self, item) -> None:
        self._events.put(item)
        if (arrived := self._arrived) is not None:
            try:
                arrived()
            except RuntimeError:  # its event loop has closed: nobody is listening any more
                pass

    def cancel(self) -> None:
        self.cancelled.set()
        self._scheduler._forget(self)


def _event(item):
    if isinstance(item, BaseException):
        raise item
    return item


@dataclass(eq=False)
class _Running:
    ticket: Ticket
    events: Iterator[Event]
    slot: int


def default_slots(model: ChatModel, most: int = 4, share_of_free_memory: float = 0.1) -> int:
    """KV slots to open when none are asked for. On a CPU: up to `most`, as long as they take at
    most `share_of_free_memory` of the RAM still free. On a TPU: 1, since every slot is another
    KV cache in device memory that the compile report did not budget for (ask with --slots)."""
    generator = model.generator
    if not generator.backend.in_host_memory:
        return 1
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(1, min(most, int(free * share_of_free_memory) // max(1, generator.slot_bytes)))


class Scheduler:
    """`slots`: answers in progress at once, each on its own KV cache (default: default_slots).
    `reuse_prefixes=False` reads every prompt whole (a baseline for measurements)."""

    def __init__(self, model: ChatModel, max_waiting: int = 32, slots: int | None = None, reuse_prefixes: bool = True):
        self.model, self.max_waiting = model, max_waiting
        self.slots = model.generator.open_slots(slots or default_slots(model))
        model.generator.reuse_prefixes = reuse_prefixes and model.generator.reuse_prefixes
        self._waiting: deque[Ticket] = deque()
        self._free = list(range(self.slots))
        self._running: list[_Running] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._serve, name="model-scheduler", daemon=True).start()

    def submit(self, request: ChatRequest) -> Ticket:
        """Queue a request; QueueFull when the queue is at its limit."""
        with self._changed:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"The server is busy: {len(self._waiting)} requests are already waiting. "
                                "Please try again in a moment.")
            ticket = Ticket(request, self)
            if self._waiting or not self._free:
                ticket._put(Waiting(len(self._waiting)))
            self._waiting.append(ticket)
            self._changed.notify()
        return ticket

    def stream(self, history: list[Turn], question: str, settings: SamplingSettings,
               image: Image.Image | None = None, *, system: str | None = None,
               stop: tuple[str, ...] = ()) -> Iterator[Event | Waiting]:
        """ChatModel.stream through the queue (QueueFull is raised at the first step)."""
        yield from self.submit(ChatRequest(history, question, settings, image, system, stop)).events()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _forget(self, ticket: Ticket) -> None:
        with self._changed:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
                ticket._put(_END)  # its stream may be waiting for an event
                self._tell_positions()

    def _tell_positions(self) -> None:
        for ahead, ticket in enumerate(self._waiting):
            ticket._put(Waiting(ahead))

    def _serve(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._running:
                    self._changed.wait()
                for run in [r for r in self._running if r.ticket.cancelled.is_set()]:
                    self._finish(run)
                starting = [self._waiting.popleft() for _ in range(min(len(self._waiting), len(self._free)))]
                if starting:
                    self._tell_positions()
            for ticket in starting:
                self._start(ticket)
            self.model.generator.decode_pending()  # the answers' next tokens, as one step where it can
            for run in list(self._running):
                self._step(run)

    def _start(self, ticket: Ticket) -> None:
        """Prepare a request and start it on the free slot where it keeps the most rows and drops
        the fewest; a request that cannot be answered ends here."""
        r = ticket.request
        try:
            turn = self.model.prepare(r.history, r.question, r.settings, r.image, system=r.system, stop=r.stop)
        except Exception as exc:  # the request's own failure, raised in its stream
            ticket._put(exc)
            ticket._put(_END)
            return
        keys, generator = turn.row_keys, self.model.generator

        def value(slot: int) -> tuple[int, int]:
            kept = generator.reusable_rows(slot, keys)
            return kept - HELD_ROW_WEIGHT * (generator.held_rows(slot) - kept), -self._free.index(slot)

        slot = max(self._free, key=value)
        self._free.remove(slot)
        self._running.insert(0, _Running(ticket, self.model.answer(turn, slot), slot))  # its prefill goes first

    def _step(self, run: _Running) -> None:
        """Advance one answer by its next event; finish it when it ends, fails or is cancelled."""
        try:
            if not run.ticket.cancelled.is_set():
                event = next(run.events)
                if not isinstance(event, Reading):  # a step of its prefill: nothing to tell
                    run.ticket._put(event)
                return
        except StopIteration:
            pass
        except Exception as exc:  # the request's failure, raised in its own stream; the worker lives on
            run.ticket._put(exc)
        with self._changed:
            self._finish(run)

    def _finish(self, run: _Running) -> None:
        """Close an answer and free its slot (called with the lock held)."""
        run.events.close()
        run.ticket._put(_END)
        self._running.remove(run)
        self._free.append(run.slot)
