"""An OpenAI chat-completions request, checked, and turned into the model's terms.

Every field OpenAI defines is either honoured, refused with a 400 that names it, or ignored
because it cannot change the answer (marked so in ChatCompletionRequest). Unknown fields are
refused, so that a typo or an unsupported feature never passes silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import ApiError, bad_request
from api.images import Picture, picture_from_url
from language.families import Turn
from language.sampling import SamplingSettings

Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageUrl(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # one resolution here: the vision net's


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: Finite | None = Field(None, ge=0, le=2)
    top_p: Finite | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # an extension, as in vLLM and llama.cpp
    repetition_penalty: Finite | None = Field(None, gt=0, le=10)  # likewise
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    frequency_penalty: Finite | None = None
    presence_penalty: Finite | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    user: str | None = None  # ignored from here on: none of these can change the answer
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


@dataclass(frozen=True)
class Conversation:
    """What the model is asked: earlier turns, the question, the one picture, a system prompt."""
    history: list[Turn]
    question: str
    picture: Picture | None
    system: str | None


def parse_request(body: bytes) -> ChatCompletionRequest:
    try:
        request = ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    _refuse_unsupported(request)
    return request


def validation_error(exc: ValidationError) -> ApiError:
    error = max(exc.errors(), key=lambda e: len(e["loc"]))  # in a union, the branch that got furthest
    if error["type"] in ("json_invalid", "json_type"):
        return bad_request(f"The body is not a JSON object ({error['msg']}).", code="invalid_json")
    param = _param(error["loc"])
    if error["type"] == "extra_forbidden":
        return bad_request(f"Unsupported parameter: '{param}'.", param, "unsupported_parameter")
    return bad_request(f"Invalid '{param}': {error['msg']}.", param, "invalid_value")


def _param(loc: tuple) -> str | None:
    """A pydantic error location as the request's field path, without union branch names."""
    path, tagged = "", False
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "str" or "[" in part:
            tagged = tagged or "tagged-union" in part
        elif tagged and path.endswith("]") and not path.endswith(f".{part}"):
            tagged = False  # the discriminator's value, not a field
        else:
            path += f".{part}"
    return path.lstrip(".") or None


def _refuse_unsupported(r: ChatCompletionRequest) -> None:
    refused = {
        "n": r.n not in (None, 1),
        "tools": bool(r.tools), "functions": bool(r.functions),
        "tool_choice": r.tool_choice not in (None, "none"), "function_call": r.function_call not in (None, "none"),
        "frequency_penalty": bool(r.frequency_penalty), "presence_penalty": bool(r.presence_penalty),
        "logprobs": bool(r.logprobs), "top_logprobs": r.top_logprobs is not None,
        "logit_bias": bool(r.logit_bias),
        "response_format": r.response_format not in (None, {"type": "text"}),
    }
    for field, is_refused in refused.items():
        if is_refused:
            raise bad_request(f"'{field}' is not supported by this server: {_WHY[field]}", field,
                              "unsupported_parameter")
    if isinstance(r.stop, list) and len(r.stop) > 4:
        raise bad_request("'stop' takes at most 4 strings.", "stop", "invalid_value")


_WHY = {"n": "it answers with one choice (n=1).", "tools": "the model has no tool calling.",
        "functions": "the model has no tool calling.", "tool_choice": "the model has no tool calling.",
        "function_call": "the model has no tool calling.",
        "frequency_penalty": "use repetition_penalty instead.", "presence_penalty": "use repetition_penalty instead.",
        "logprobs": "log-probabilities are not returned.", "top_logprobs": "log-probabilities are not returned.",
        "logit_bias": "logit bias is not applied.", "response_format": "only plain text answers are produced."}


def settings_for(r: ChatCompletionRequest, defaults: SamplingSettings) -> SamplingSettings:
    """The request's sampling settings; what it leaves out comes from the server's defaults."""
    def pick(value, default):
        return default if value is None else value

    try:
        return SamplingSettings(
            max_new_tokens=pick(r.max_completion_tokens, pick(r.max_tokens, defaults.max_new_tokens)),
            temperature=pick(r.temperature, defaults.temperature), top_p=pick(r.top_p, defaults.top_p),
            top_k=pick(r.top_k, defaults.top_k), repetition_penalty=pick(r.repetition_penalty, defaults.repetition_penalty),
            seed=r.seed)
    except ValueError as exc:
        raise bad_request(str(exc), code="invalid_value") from None


def stop_strings(r: ChatCompletionRequest) -> tuple[str, ...]:
    return (r.stop,) if isinstance(r.stop, str) else tuple(r.stop or ())


def conversation_from(messages: list[Message], allow_image_urls: bool) -> Conversation:
    """Messages to turns. System (and developer) messages join the family's system prompt;
    consecutive user messages join; the last message must be the user's question."""
    system, pairs, picture = [], [], None
    for index, message in enumerate(messages):
        text, found = _text_and_picture(message, f"messages[{index}].content", allow_image_urls)
        if found is not None:
            if picture is not None and found.digest != picture.digest:
                raise bad_request("Only one picture per conversation: this model looks at one picture, and "
                                  "this conversation already has a different one. Start a new conversation "
                                  "for another picture.", f"messages[{index}].content", "too_many_images")
            picture = found
        if message.role in ("system", "developer"):
            system.append(text)
        elif message.role == "user":
            if pairs and pairs[-1][1] is None:
                pairs[-1][0] += "\n" + text
            else:
                pairs.append([text, None])
        elif not pairs or pairs[-1][1] is not None:
            raise bad_request("An assistant message must follow a user message.", f"messages[{index}]")
        else:
            pairs[-1][1] = text
    if not pairs or pairs[-1][1] is not None:
        raise bad_request("The last message must be the user's.", "messages")
    question = pairs[-1][0].strip()
    if not question:
        raise bad_request("The user's message is empty: please ask something.", f"messages[{len(messages) - 1}].content",
                          "empty_message")
    history = [Turn(q, a) for q, a in pairs[:-1]]
    return Conversation(history, question, picture, "\n".join(system) if system else None)


def _text_and_picture(message: Message, param: str, allow_image_urls: bool) -> tuple[str, Picture | None]:
    if message.content is None or isinstance(message.content, str):
        return message.content or "", None
    texts, picture = [], None
    for index, part in enumerate(message.content):
        if isinstance(part, TextPart):
            texts.append(part.text)
            continue
        if message.role != "user":
            raise bad_request("Pictures go in user messages.", f"{param}[{index}]")
        found = picture_from_url(part.image_url.url, f"{param}[{index}].image_url.url", allow_image_urls)
        if picture is not None and found.digest != picture.digest:
            raise bad_request("Only one picture per conversation: this message has two different ones.",
                              f"{param}[{index}]", "too_many_images")
        picture = found
    return "\n".join(texts), picture
