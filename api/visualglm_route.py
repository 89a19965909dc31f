"""VisualGLM-6B's `POST /`, shaped like its api.py, so that scripts written for it work.

Request: {"text", "image": base64 or null, "history": [[question, answer], ...]}, and
optionally max_length, temperature, top_p, top_k, repetition_penalty. Response:
{"result", "history", "status": 200, "time"}. Differences, by design: `max_length` caps the
answer's new tokens (VisualGLM counts the prompt too; here the prompt is bounded by the
context), `min_length` is not supported, and settings left out take this server's defaults.
"""
from __future__ import annotations

import datetime
from typing import Annotated

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.answering import start
from api.errors import bad_request
from api.images import picture_from_base64
from api.openai_request import Finite, validation_error
from api.options import ApiOptions, read_body
from language.families import Turn
from language.sampling import SamplingSettings
from serving.scheduler import ChatRequest, Scheduler

class VisualGlmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str
    image: str | None = None
    history: list[Annotated[list[str], Field(min_length=2, max_length=2)]] = []
    max_length: int | None = Field(None, ge=1)
    temperature: Finite | None = Field(None, ge=0, le=2)
    top_p: Finite | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: Finite | None = Field(None, gt=0, le=10)


async def visualglm_chat(request: Request, scheduler: Scheduler, options: ApiOptions) -> JSONResponse:
    try:
        body = VisualGlmRequest.model_validate_json(await read_body(request, options))
    except ValidationError as exc:
        raise validation_error(exc) from None
    if not body.text.strip():
        raise bad_request("'text' is empty: please ask something.", "text", "empty_message")
    model = scheduler.model
    image = None
    if body.image:
        if model.vision is None:
            raise bad_request(f"{model.name} cannot look at pictures: send text only.", "image", "image_not_supported")
        image = picture_from_base64(body.image.partition("base64,")[2] or body.image, "image").image
    d = options.defaults
    settings = SamplingSettings(
        max_new_tokens=body.max_length or d.max_new_tokens,
        temperature=d.temperature if body.temperature is None else body.temperature,
        top_p=body.top_p or d.top_p, top_k=d.top_k if body.top_k is None else body.top_k,
        repetition_penalty=body.repetition_penalty or d.repetition_penalty)
    history = [Turn(q, a) for q, a in body.history]
    done = await (await start(scheduler, ChatRequest(history, body.text.strip(), settings, image), request)).done()
    return JSONResponse({"result": done.answer, "history": [*body.history, [body.text, done.answer]], "status": 200,
                         "time": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")})

