"""OpenAI-compatible `/v1/models` and `/v1/chat/completions`, streaming over SSE."""
from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.answering import Answer, start
from api.errors import ApiError
from api.openai_request import conversation_from, parse_request, settings_for, stop_strings
from api.options import ApiOptions, read_body
from language.chat import Done, TextDelta
from serving.scheduler import ChatRequest, Scheduler

FINISH = {"stop": "stop", "length": "length", "context": "length"}


def list_models(scheduler: Scheduler) -> JSONResponse:
    model = scheduler.model
    return JSONResponse({"object": "list", "data": [
        {"id": model.name, "object": "model", "created": 0, "owned_by": "visualglm-tpu",
         "context_length": model.context_length, "vision": model.vision is not None}]})


async def chat_completions(request: Request, scheduler: Scheduler, options: ApiOptions):
    body = parse_request(await read_body(request, options))
    model = scheduler.model
    if body.model not in (None, model.name):
        raise ApiError(404, f"The model '{body.model}' is not served here; this server serves '{model.name}' "
                            "(GET /v1/models).", "model", "model_not_found")
    chat = conversation_from(body.messages, options.allow_image_urls)
    if chat.picture is not None and model.vision is None:
        raise ApiError(400, f"{model.name} cannot look at pictures: send text only.", "messages", "image_not_supported")
    work = ChatRequest(chat.history, chat.question, settings_for(body, options.defaults),
                       chat.picture.image if chat.picture else None, chat.system, stop_strings(body))
    answer = await start(scheduler, work, request)
    reply = _Reply(model.name)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(reply.stream(answer, usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(reply.whole(await answer.done()))


class _Reply:
    """The response objects of one completion, sharing its id and creation time."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model

    def _object(self, kind: str, **fields) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, **fields}

    @staticmethod
    def _usage(done: Done) -> dict:
        return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.new_tokens,
                "total_tokens": done.prompt_tokens + done.new_tokens,
                "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}

    def whole(self, done: Done) -> dict:
        return self._object("chat.completion", choices=[{
            "index": 0, "message": {"role": "assistant", "content": done.answer},
            "finish_reason": FINISH[done.finish_reason], "logprobs": None}], usage=self._usage(done))

    def _chunk(self, delta: dict, finish: str | None = None, **fields) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _sse(self._object("chat.completion.chunk", choices=[choice], **fields))

    async def stream(self, answer: Answer, include_usage: bool) -> AsyncIterator[str]:
        yield self._chunk({"role": "assistant", "content": ""})
        try:
            async for event in answer.events():
                if isinstance(event, TextDelta):
                    yield self._chunk({"content": event.text})
                elif isinstance(event, Done):
                    yield self._chunk({}, FINISH[event.finish_reason])
                    if include_usage:
                        yield _sse(self._object("chat.completion.chunk", choices=[], usage=self._usage(event)))
        except ApiError as exc:  # the headers are sent: the error goes in the stream, as OpenAI does
            yield _sse(exc.body())
        yield "data: [DONE]\n\n"


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
