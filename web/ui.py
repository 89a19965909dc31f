"""The web page: two tabs, shared generation settings, and the events wired to web/handlers.py.

Only layout and wiring live here. Events that run the model hand their request to the
Scheduler shared with the HTTP API, which answers them in turn; a waiting user sees their
place in its queue under the chat.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from language.sampling import SamplingSettings
from serving.scheduler import Scheduler
from web import handlers
from web.handlers import Session
from web.i18n import I18N as t

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
MODEL_SLOT = {"concurrency_limit": None}  # the Scheduler queues; Gradio only waits on it
LAUNCH_OPTIONS = {"i18n": t, "footer_links": ["api"]}  # every launch() of this UI passes these
IDLE_SESSION_S = 3600  # a session untouched this long is forgotten (API clients send no heartbeat)
UPLOADS_KEPT_S = 3600  # uploaded files older than this are deleted from Gradio's cache, checked as often
QUEUE_IDLE_POLL_S, QUEUE_PROGRESS_POLL_S = 0.02, 0.1  # Gradio's own: 0.001 and 0.01 (see queue_events)


def queue_events(demo: gr.Blocks, max_size: int) -> None:
    """demo.queue(), polling less often. While it has nothing to do, Gradio's queue looks for
    new events every millisecond (and for progress every 10 ms): each look takes the GIL and a
    core from the model, whose steps use both of a small machine's cores, and slowed the
    default model's decoding by 8 % (78.7 against 85.5 tokens/s, interleaved, with nobody on
    the page). An event now waits at most 20 ms to be taken up."""
    demo.queue(max_size=max_size)
    demo._queue.sleep_when_free, demo._queue.progress_update_sleep_when_free = QUEUE_IDLE_POLL_S, QUEUE_PROGRESS_POLL_S


def _settings_controls(defaults: SamplingSettings) -> list[gr.components.Component]:
    with gr.Accordion(t("settings"), open=False):
        with gr.Row():
            return [
                gr.Slider(1, 1024, value=defaults.max_new_tokens, step=1, label=t("max_new_tokens")),
                gr.Slider(0.0, 2.0, value=defaults.temperature, step=0.05, label=t("temperature")),
                gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label=t("top_p")),
                gr.Slider(0, 200, value=defaults.top_k, step=1, label=t("top_k")),
                gr.Slider(1.0, 2.0, value=defaults.repetition_penalty, step=0.05, label=t("repetition_penalty")),
            ]


@dataclass
class ChatPanel:
    session: gr.State
    chat: gr.Chatbot
    question: gr.Textbox
    send: gr.Button
    stop: gr.Button
    clear: gr.Button
    stats: gr.Markdown


def _chat_panel(placeholder: str, height: int) -> ChatPanel:
    session = gr.State(Session(), time_to_live=IDLE_SESSION_S)
    chat = gr.Chatbot(label=t("chat"), buttons=["copy", "copy_all"], height=height)
    question = gr.Textbox(placeholder=t(placeholder), show_label=False)
    with gr.Row():
        send, stop, clear = gr.Button(t("send"), variant="primary"), gr.Button(t("stop")), gr.Button(t("clear"))
    return ChatPanel(session, chat, question, send, stop, clear, gr.Markdown(elem_classes="stats"))


def _wire(panel: ChatPanel, ask, settings: list, api_name: str, more_events=(), also_clear=()) -> None:
    """Send/Enter ask; Stop cancels whatever of this panel is running; Clear starts over."""
    io = ([panel.question, panel.session, *settings], [panel.question, panel.session, panel.chat, panel.stats])
    # Not preprocessed: Gradio's own check of the sliders answers a bad value sent to the API
    # with a generic error; the handler checks them itself and says which one is wrong.
    events = [panel.question.submit(ask, *io, api_name=api_name, preprocess=False, **MODEL_SLOT),
              panel.send.click(ask, *io, api_name=False, preprocess=False, **MODEL_SLOT), *more_events]
    panel.stop.click(None, cancels=events)
    panel.clear.click(lambda: (*[None] * len(also_clear), Session(), [], ""), None,
                      [*also_clear, panel.session, panel.chat, panel.stats], cancels=events, api_name=False)


def build_ui(scheduler: Scheduler, defaults: SamplingSettings = SamplingSettings()) -> gr.Blocks:
    model = scheduler.model

    def ask(question, session, *settings):
        for reply in handlers.answer_with(scheduler, session, question, *settings):
            yield "" if reply.taken else question, session, reply.messages, reply.stats

    def upload(payload, describe, *settings):
        # Not preprocessed by gr.Image, which would fail on a non-image with a generic error:
        # the handler checks the file itself and says what is wrong.
        session, stats = handlers.new_image(model, payload["path"] if payload else None)
        yield session, session.messages, stats
        if describe and session.image is not None:
            for reply in handlers.answer_with(scheduler, session, handlers.DESCRIBE_PROMPT, *settings):
                yield session, reply.messages, reply.stats

    with gr.Blocks(title="VisualGLM-TPU chat", delete_cache=(UPLOADS_KEPT_S, UPLOADS_KEPT_S)) as demo:
        gr.Markdown(f"### VisualGLM-TPU · {model.name} · {model.runs_on} · context {model.context_length} tokens")
        with gr.Tab(t("image_tab")):
            with gr.Row():
                with gr.Column(scale=2):
                    image = gr.Image(type="filepath", label="Picture · 图片", sources=["upload", "clipboard"], height=320)
                    describe = gr.Checkbox(value=True, label=t("describe"))
                    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))
                    if examples:
                        gr.Examples(examples, inputs=image, label=t("examples"))
                with gr.Column(scale=3):
                    image_panel = _chat_panel("question_placeholder", 420)
        with gr.Tab(t("text_tab")):
            text_panel = _chat_panel("text_placeholder", 460)
        settings = _settings_controls(defaults)

        upload_event = image.change(upload, [image, describe, *settings],
                                    [image_panel.session, image_panel.chat, image_panel.stats],
                                    api_name="set_image", preprocess=False, **MODEL_SLOT)
        _wire(image_panel, ask, settings, "image_chat", more_events=[upload_event], also_clear=[image])
        _wire(text_panel, ask, settings, "text_chat")
    return demo
