"""What the web app does, as plain functions of (inputs, session state) -> outputs.

Gradio calls these; tests call them directly. The model is shared by every browser
session (and the HTTP API) through one Scheduler; each session's conversation and picture
live in its own `Session`.
"""
from __future__ import annotations

import math
import numbers
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Iterator

from PIL import Image

from language.chat import ChatModel, Done, Notice, TextDelta
from language.families import Turn
from language.generate import ContextOverflow
from language.sampling import SamplingSettings
from serving.scheduler import QueueFull, Scheduler, Waiting
from vision.preprocess import ImageError, load_image

DESCRIBE_PROMPT = "Describe the image."
SESSION_POLL_S = 0.05
# The page shows a streaming answer at most this often (the first piece at once): every update
# is Gradio's work on the model's cores (a lone user's stats line, against the benchmark's
# decoding: 0.77 when every token was shown, 0.81-0.91 since; README, Benchmark).
PAGE_UPDATE_S = 0.05
_CLAIMING = threading.Lock()  # guards the check-and-set of Session.answering, never held while waiting

Messages = list[dict]


@dataclass
class Session:
    """One browser tab's conversation: model-side turns, the picture they are about, and the
    chat as displayed (kept here, so API callers need not send it back)."""
    turns: list[Turn] = field(default_factory=list)
    image: Image.Image | None = None
    messages: Messages = field(default_factory=list)
    answering: bool = False  # one answer at a time per session: a question asked meanwhile waits


@dataclass(frozen=True)
class Reply:
    """One streamed update: the chat as shown, and the stats line. `taken`: false when the
    question was not asked (bad settings), so the page leaves it in the box."""
    messages: Messages
    stats: str
    taken: bool = True


def settings_from(max_new_tokens: float, temperature: float, top_p: float, top_k: float,
                  repetition_penalty: float) -> SamplingSettings:
    """The sliders' values as settings; ValueError, saying which, for anything that is not a
    finite number in range (a client can send any JSON to the page's endpoints)."""
    def whole(name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a number, not {value!r}")
        return int(value)

    return SamplingSettings(max_new_tokens=whole("max_new_tokens", max_new_tokens), temperature=temperature,
                            top_p=top_p, top_k=whole("top_k", top_k), repetition_penalty=repetition_penalty)


def answer_with(scheduler: Scheduler, session: Session, question: str, *sliders) -> Iterator[Reply]:
    """answer() with the settings as the page's sliders send them; bad values are a message."""
    try:
        settings = settings_from(*sliders)
    except ValueError as exc:
        yield Reply(session.messages, f"⚠️ Generation settings: {exc}.", taken=False)
        return
    yield from answer(scheduler, session, question, settings)


def waiting_text(waiting: Waiting) -> str:
    ahead = "you are next" if waiting.ahead == 0 else f"{waiting.ahead} ahead of you"
    return f"⏳ Every slot of the model is answering someone: {ahead}."


def stats_text(done: Done) -> str:
    return " · ".join(done.figures())


def new_image(model: ChatModel, path: str | None) -> tuple[Session, str]:
    """A picture was uploaded (or removed): a new conversation about it starts."""
    if not path:
        return Session(), ""
    if model.vision is None:
        return _said(f"⚠️ {model.name} cannot look at images."), ""
    try:
        image = load_image(path)
    except ImageError as exc:
        return _said(f"⚠️ {exc} Please try another picture."), ""
    return Session(image=model.vision.shrink(image), messages=[{"role": "user", "content": {"path": path}}]), ""


def _said(text: str) -> Session:
    return Session(messages=[{"role": "assistant", "content": text}])


def answer(scheduler: Scheduler, session: Session, question: str, settings: SamplingSettings) -> Iterator[Reply]:
    """Stream the answer to `question` into the chat; problems become a message in the chat.

    Stopped half-way (the generator closed), the partial answer stays in the conversation
    and the model moves on to the next user at once.
    """
    question = question.strip()
    if not question:
        yield Reply(session.messages, "⚠️ Please type a question first.")
        return
    if not _claim(session):  # e.g. asked while the description on upload still streams
        yield Reply(session.messages, "⏳ Waiting for the answer before.")
        while not _claim(session):
            time.sleep(SESSION_POLL_S)
    try:
        yield from _answer(scheduler, session, question, settings)
    finally:
        session.answering = False


def _claim(session: Session) -> bool:
    with _CLAIMING:
        if session.answering:
            return False
        session.answering = True
        return True


def _answer(scheduler: Scheduler, session: Session, question: str, settings: SamplingSettings) -> Iterator[Reply]:
    shown = session.messages = [*session.messages, {"role": "user", "content": question},
                                {"role": "assistant", "content": ""}]
    text, notice, done, shown_at = "", "", None, -math.inf
    try:
        with closing(scheduler.stream(session.turns, question, settings, session.image)) as events:
            for event in events:
                if isinstance(event, Waiting):
                    yield Reply(shown, waiting_text(event))
                elif isinstance(event, TextDelta):
                    text += event.text
                    shown[-1] = {"role": "assistant", "content": text}
                    if time.monotonic() - shown_at >= PAGE_UPDATE_S:
                        shown_at = time.monotonic()
                        yield Reply(shown, notice)
                elif isinstance(event, Notice):
                    notice = f"ℹ️ {event.message}"
                elif isinstance(event, Done):
                    done = event
        session.turns.append(Turn(question, done.answer))
        shown[-1] = {"role": "assistant", "content": done.answer or "…"}
        yield Reply(shown, " · ".join(filter(None, [notice, stats_text(done)])))
    except GeneratorExit:  # Stop pressed
        if text:
            session.turns.append(Turn(question, text.strip()))
        raise
    except (ContextOverflow, ValueError, QueueFull) as exc:
        shown[-1] = {"role": "assistant", "content": f"⚠️ {exc}"}
        yield Reply(shown, "")
    except Exception as exc:  # a backend failure must not take the session down
        shown[-1] = {"role": "assistant", "content": f"⚠️ The model failed on this question ({type(exc).__name__}: "
                                                     f"{exc}). The conversation is kept; please try again."}
        yield Reply(shown, "")
