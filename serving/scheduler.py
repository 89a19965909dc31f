"""The one owner of the model: a worker thread answers queued requests, one at a time.

The web page, the HTTP API and anything else that serves several users submit requests
here instead of calling the ChatModel themselves. Nothing holds a lock while a front end
waits on its client: a request's events travel through its own queue, and closing the
event stream (Stop pressed, client gone) cancels the request, which frees the model at
the next token, or drops it from the queue if it has not started.
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field
from typing import Iterator

from PIL import Image

from language.chat import ChatModel, Event
from language.families import Turn
from language.sampling import SamplingSettings


@dataclass(frozen=True)
class Waiting:
    """An event before the answer starts: how many requests are ahead of this one."""
    ahead: int


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
    """A submitted request: iterate `events()` for its answer; closing that stream cancels it."""
    request: ChatRequest
    _scheduler: "Scheduler"
    _events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def events(self) -> Iterator[Event | Waiting]:
        """Waiting updates, then the ChatModel's events; a failure is raised here."""
        try:
            while (item := self._events.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()

    def cancel(self) -> None:
        self.cancelled.set()
        self._scheduler._forget(self)


class Scheduler:
    def __init__(self, model: ChatModel, max_waiting: int = 32):
        self.model, self.max_waiting = model, max_waiting
        self._waiting: deque[Ticket] = deque()
        self._busy = False
        self._changed = threading.Condition()
        threading.Thread(target=self._serve, name="model-scheduler", daemon=True).start()

    def submit(self, request: ChatRequest) -> Ticket:
        """Queue a request; QueueFull when the queue is at its limit."""
        with self._changed:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"The server is busy: {len(self._waiting)} requests are already waiting. "
                                "Please try again in a moment.")
            ticket = Ticket(request, self)
            ahead = len(self._waiting) + self._busy
            self._waiting.append(ticket)
            if ahead:
                ticket._events.put(Waiting(ahead))
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
                ticket._events.put(_END)  # its stream may be waiting for an event
                self._tell_positions()

    def _tell_positions(self) -> None:
        for ahead, ticket in enumerate(self._waiting, start=1 if self._busy else 0):
            ticket._events.put(Waiting(ahead))

    def _serve(self) -> None:
        while True:
            with self._changed:
                self._busy = False
                while not self._waiting:
                    self._changed.wait()
                ticket = self._waiting.popleft()
                self._busy = True
                self._tell_positions()
            self._answer(ticket)

    def _answer(self, ticket: Ticket) -> None:
        r = ticket.request
        try:
            with closing(self.model.stream(r.history, r.question, r.settings, r.image,
                                           system=r.system, stop=r.stop)) as events:
                for event in events:
                    if ticket.cancelled.is_set():
                        break
                    ticket._events.put(event)
        except Exception as exc:  # the request's failure, raised in its own stream; the worker lives on
            ticket._events.put(exc)
        ticket._events.put(_END)
