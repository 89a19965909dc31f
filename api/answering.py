"""Running one API request on the shared Scheduler, from a FastAPI handler.

The request waits in the Scheduler's queue like a page user's. Its first event is awaited
before any response is sent, so that a full queue, a prompt past the context or a backend
failure still get their HTTP status. A client that goes away while waiting or while the
answer streams cancels the request, which frees the model at the next token.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from fastapi import Request

from api.errors import ApiError, bad_request
from language.chat import Done, Event
from language.generate import ContextOverflow
from serving.scheduler import ChatRequest, QueueFull, Scheduler, Ticket, Waiting

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5
DISCONNECT_POLL_S = 0.5


class ClientGone(Exception):
    """The client disconnected before its answer began."""


class Answer:
    """A started answer: its first event, then the rest as an async iterator."""

    def __init__(self, ticket: Ticket, events: AsyncIterator[Event | Waiting], first: Event):
        self.ticket, self._events, self.first = ticket, events, first

    async def events(self) -> AsyncIterator[Event]:
        """Every event from the first; leaving early (client gone) cancels the request."""
        try:
            event = self.first
            while event is not None:
                yield event
                event = await _next(self._events)
        except ApiError as exc:
            log.warning("an answer failed while streaming: %s", exc.message)
            raise
        finally:
            self.ticket.cancel()

    async def done(self) -> Done:
        async for event in self.events():
            if isinstance(event, Done):
                return event
        raise ApiError(500, "The model ended without an answer. Please try again.")


async def start(scheduler: Scheduler, request: ChatRequest, http: Request) -> Answer:
    try:
        ticket = scheduler.submit(request)
    except QueueFull as exc:
        raise ApiError(503, str(exc), code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    events = ticket.async_events()
    try:
        while True:
            pending = asyncio.ensure_future(_next(events))
            while not (await asyncio.wait({pending}, timeout=DISCONNECT_POLL_S))[0]:
                if await http.is_disconnected():
                    ticket.cancel()
                    raise ClientGone()
            event = pending.result()
            if event is None:
                raise ApiError(500, "The model ended without an answer. Please try again.")
            if not isinstance(event, Waiting):
                return Answer(ticket, events, event)
    except BaseException:
        ticket.cancel()
        raise


async def _next(events: AsyncIterator[Event | Waiting]) -> Event | Waiting | None:
    try:
        return await anext(events, None)
    except ContextOverflow as exc:
        raise bad_request(str(exc), "messages", "context_length_exceeded") from None
    except ValueError as exc:  # the model's own checks, e.g. a picture for a text-only model
        raise bad_request(str(exc)) from None
    except Exception as exc:
        log.exception("the model failed on a request")
        raise ApiError(500, f"The model failed on this request ({type(exc).__name__}). Please try again.",
                       code="model_failed") from None
