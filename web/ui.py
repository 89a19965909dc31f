"""The web page: two tabs, shared generation settings, and the events wired to web/handlers.py.

Only layout and wiring live here. Every event that runs the model shares one concurrency
slot ("model"): the model has one KV cache per device, so users beyond the first wait
in Gradio's queue and see their position in it.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from language.chat import ChatModel
from language.sampling import SamplingSettings
from web import handlers
from web.handlers import Session
from web.i18n import I18N as t

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
MODEL_SLOT = {"concurrency_limit": 1, "concurrency_id": "model"}
LAUNCH_OPTIONS = {"i18n": t, "footer_links": ["api"]}  # every launch() of this UI passes these


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


def build_ui(model: ChatModel, defaults: SamplingSettings = SamplingSettings()) -> gr.Blocks:
    def ask(question, session, *settings):
        for reply in handlers.answer(model, session, question, handlers.settings_from(*settings)):
            yield "", session, reply.messages, reply.stats

    def upload(payload, describe, *settings):
        # Not preprocessed by gr.Image, which would fail on a non-image with a generic error:
        # the handler checks the file itself and says what is wrong.
        session, stats = handlers.new_image(model, payload["path"] if payload else None)
        yield session, session.messages, stats
        if describe and session.image is not None:
            for reply in handlers.answer(model, session, handlers.DESCRIBE_PROMPT, handlers.settings_from(*settings)):
                yield session, reply.messages, reply.stats

    def clear():
        return Session(), [], ""

    with gr.Blocks(title="VisualGLM-TPU chat") as demo:
        gr.Markdown(f"### VisualGLM-TPU · {model.name} · context {model.context_length} tokens")
        with gr.Tab(t("image_tab")):
            image_session = gr.State(Session())
            with gr.Row():
                with gr.Column(scale=2):
                    image = gr.Image(type="filepath", label="Picture · 图片", sources=["upload", "clipboard"], height=320)
                    describe = gr.Checkbox(value=True, label=t("describe"))
                    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))
                    if examples:
                        gr.Examples(examples, inputs=image, label=t("examples"))
                with gr.Column(scale=3):
                    image_chat = gr.Chatbot(label=t("chat"), buttons=["copy", "copy_all"], height=420)
                    image_question = gr.Textbox(placeholder=t("question_placeholder"), show_label=False)
                    with gr.Row():
                        image_send = gr.Button(t("send"), variant="primary")
                        image_stop = gr.Button(t("stop"))
                        image_clear = gr.Button(t("clear"))
                    image_stats = gr.Markdown(elem_classes="stats")
        with gr.Tab(t("text_tab")):
            text_session = gr.State(Session())
            text_chat = gr.Chatbot(label=t("chat"), buttons=["copy", "copy_all"], height=460)
            text_question = gr.Textbox(placeholder=t("text_placeholder"), show_label=False)
            with gr.Row():
                text_send = gr.Button(t("send"), variant="primary")
                text_stop = gr.Button(t("stop"))
                text_clear = gr.Button(t("clear"))
            text_stats = gr.Markdown(elem_classes="stats")
        settings = _settings_controls(defaults)

        image_io = ([image_question, image_session, *settings], [image_question, image_session, image_chat, image_stats])
        image_events = [
            image_question.submit(ask, *image_io, api_name="image_chat", **MODEL_SLOT),
            image_send.click(ask, *image_io, api_name=False, **MODEL_SLOT),
            image.change(upload, [image, describe, *settings], [image_session, image_chat, image_stats],
                         api_name="set_image", preprocess=False, **MODEL_SLOT),
        ]
        image_stop.click(None, cancels=image_events)
        image_clear.click(lambda: (None, *clear()), None, [image, image_session, image_chat, image_stats],
                          cancels=image_events, api_name=False)

        text_io = ([text_question, text_session, *settings], [text_question, text_session, text_chat, text_stats])
        text_events = [
            text_question.submit(ask, *text_io, api_name="text_chat", **MODEL_SLOT),
            text_send.click(ask, *text_io, api_name=False, **MODEL_SLOT),
        ]
        text_stop.click(None, cancels=text_events)
        text_clear.click(clear, None, [text_session, text_chat, text_stats], cancels=text_events, api_name=False)
    return demo
