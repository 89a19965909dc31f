"""The web app, driven through its HTTP API with gradio_client, on the tiny seeing model."""
import os
import threading
import time

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from language.sampling import SamplingSettings  # noqa: E402
from serving.scheduler import Scheduler  # noqa: E402
from vision.preprocess import load_image  # noqa: E402
from web import handlers  # noqa: E402
from web.handlers import Session  # noqa: E402
from web.share import share_service_reachable  # noqa: E402
from tests.conftest import free_port, running_app  # noqa: E402

SETTINGS = [6, 0.0, 0.9, 40, 1.0]  # max new tokens, temperature, top-p, top-k, repetition penalty


@pytest.fixture
def pictures(tmp_path):
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    paths = {}
    for name, rgb in colours.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (48, 48), rgb).save(paths[name])
    (tmp_path / "notes.png").write_text("not a picture")
    return paths, tmp_path / "notes.png"


def expected_answer(model, question: str, path) -> str:
    return model.reply([], question, handlers.settings_from(*SETTINGS), image=load_image(path)).answer


def last_answer(messages) -> str:
    return messages[-1]["content"][0]["text"]


def client(url: str) -> Client:
    return Client(url, verbose=False)


def test_upload_describes_and_answers_follow_ups(app, tiny_seeing, pictures):
    paths, _ = pictures
    tiny_seeing[0].vision.clear_cache()  # other tests may have shown the model the same colour
    c = client(app)
    messages, stats = c.predict(handle_file(str(paths["red"])), True, *SETTINGS, api_name="/set_image")
    assert messages[0]["content"][0]["type"] == "file"  # the picture is shown in the chat
    assert last_answer(messages) == expected_answer(tiny_seeing[0], handlers.DESCRIBE_PROMPT, paths["red"])
    assert "vision" in stats and "tokens/s" in stats
    question, messages, stats = c.predict("What colour is it?", *SETTINGS, api_name="/image_chat")
    assert question == "" and "tokens/s" in stats and "vision" not in stats and "cache" not in stats
    assert len(messages) == 5


def page_updates(app, model, monkeypatch, seconds_per_token: float) -> tuple[list, list[float]]:
    """The text tab's updates for a 40-token answer, each decode step taking a while; and when
    each step began."""
    steps, decode = [], model.generator.decode
    monkeypatch.setattr(model.generator, "decode", lambda token, slot=0: (
        steps.append(time.monotonic()), time.sleep(seconds_per_token), decode(token, slot))[2])
    monkeypatch.setattr(model.family, "stop_ids", frozenset())
    job = client(app).submit("Tell me a story.", 40, 0.0, 0.9, 40, 1.0, api_name="/text_chat")
    return list(job), steps


def test_answers_stream_in_pieces(app, tiny_seeing, monkeypatch):
    updates, _ = page_updates(app, tiny_seeing[0], monkeypatch, seconds_per_token=0.03)
    assert len(updates) > 3
    texts = [last_answer(u[1]) for u in updates if u[1] and u[1][-1]["role"] == "assistant"]
    assert texts[0] != texts[-1] and texts[-1].startswith(texts[1][:3])


def test_a_fast_answer_is_shown_a_few_times_a_second_not_per_token(app, tiny_seeing, monkeypatch):
    updates, steps = page_updates(app, tiny_seeing[0], monkeypatch, seconds_per_token=0.002)
    streaming_s = steps[-1] - steps[0]  # about 0.1 s on a quiet machine, longer on a busy one
    assert len(steps) == 39 and len(updates) <= streaming_s / handlers.PAGE_UPDATE_S + 3
    assert "40 tokens" in updates[-1][2]


def test_three_sessions_at_once_each_get_their_own_image(app, tiny_seeing, pictures):
    paths, _ = pictures
    sessions = {name: client(app) for name in paths}
    for name, c in sessions.items():
        c.predict(handle_file(str(paths[name])), False, *SETTINGS, api_name="/set_image")
    results, errors = {}, []

    def ask(name: str) -> None:
        try:
            results[name] = sessions[name].predict("What is in the picture?", *SETTINGS, api_name="/image_chat")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(name,)) for name in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for name in paths:
        assert last_answer(results[name][1]) == expected_answer(tiny_seeing[0], "What is in the picture?", paths[name])
    assert len({last_answer(r[1]) for r in results.values()}) == 3


def test_text_tab_has_its_own_history_and_settings_reach_the_sampler(app, tiny_seeing):
    c = client(app)
    _, messages, stats = c.predict("Hello", 3, 0.0, 0.9, 40, 1.0, api_name="/text_chat")
    assert "3 tokens" in stats and "vision" not in stats
    _, again, _ = c.predict("Hello again", 3, 0.0, 0.9, 40, 1.0, api_name="/text_chat")
    assert len(again) == 4 and again[:2] == messages  # the same session remembers the first turn


def test_temperature_reaches_the_sampler(app):
    def answers(temperature: float) -> set[str]:
        return {last_answer(client(app).predict("Hello", 6, temperature, 1.0, 0, 1.0, api_name="/text_chat")[1])
                for _ in range(3)}

    assert len(answers(0.0)) == 1  # greedy: the same answer in every session
    assert len(answers(2.0)) > 1  # hot sampling: different answers


def test_bad_upload_and_empty_question_are_messages_not_crashes(app, pictures):
    _, notes = pictures
    c = client(app)
    messages, stats = c.predict(handle_file(str(notes)), True, *SETTINGS, api_name="/set_image")
    assert len(messages) == 1 and "not an image" in last_answer(messages) and stats == ""
    _, messages, stats = c.predict("   ", *SETTINGS, api_name="/image_chat")
    assert "type a question" in stats
    _, messages, _ = c.predict("word " * 400, *SETTINGS, api_name="/text_chat")
    assert "too long" in last_answer(messages)
    _, messages, _ = c.predict("Still there?", *SETTINGS, api_name="/text_chat")
    assert last_answer(messages) and "⚠️" not in last_answer(messages)


def test_stopping_keeps_the_partial_answer_in_the_conversation(tiny_seeing):
    session = Session()
    stream = handlers.answer(Scheduler(tiny_seeing[0]), session, "Tell me a story.", SamplingSettings(max_new_tokens=50))
    first = next(r for r in stream if r.messages[-1]["content"])
    stream.close()  # what Gradio does when Stop cancels the event
    assert session.turns and session.turns[0].answer == first.messages[-1]["content"].strip()
    assert tiny_seeing[0].reply([], "Hi", SamplingSettings(max_new_tokens=2)).new_tokens == 2  # model free again


def test_a_backend_failure_is_a_message_and_the_session_goes_on(tiny_seeing, monkeypatch):
    model, session = tiny_seeing[0], Session()
    scheduler = Scheduler(model)

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    with monkeypatch.context() as patch:
        patch.setattr(model.generator, "generate", broken)
        reply = list(handlers.answer(scheduler, session, "Hello", SamplingSettings(max_new_tokens=3)))[-1]
    assert "device lost" in reply.messages[-1]["content"] and "try again" in reply.messages[-1]["content"]
    reply = list(handlers.answer(scheduler, session, "Hello", SamplingSettings(max_new_tokens=3)))[-1]
    assert "⚠️" not in reply.messages[-1]["content"] and len(reply.messages) == 4


def test_sliders_map_onto_sampling_settings():
    assert handlers.settings_from(7.0, 0.5, 0.8, 12.0, 1.2) == SamplingSettings(
        max_new_tokens=7, temperature=0.5, top_p=0.8, top_k=12, repetition_penalty=1.2)


def test_an_unreachable_share_service_is_reported_quickly():
    port = free_port()  # nothing listens there
    ok, why = share_service_reachable(f"127.0.0.1:{port}", timeout_s=2)
    assert not ok and f"127.0.0.1:{port}" in why


def test_app_without_share_service_says_so_and_serves_locally(tiny_dir, tmp_path):
    dead = free_port()  # nothing listens there
    with running_app(tiny_dir[0], tmp_path / "app.log", "--share", env={"VGLM_SHARE_SERVICE": f"127.0.0.1:{dead}"}):
        assert f"No share link: 127.0.0.1:{dead} cannot be reached" in (tmp_path / "app.log").read_text()


def test_cancelling_a_streaming_answer_frees_the_model_for_the_next_one(app, tiny_seeing, monkeypatch):
    import time

    model = tiny_seeing[0]
    decode = model.generator.decode
    monkeypatch.setattr(model.generator, "decode", lambda token, slot=0: (time.sleep(0.05), decode(token, slot))[1])
    monkeypatch.setattr(model.family, "stop_ids", frozenset())  # only the cap or a cancel ends it
    c = client(app)
    job = c.submit("Tell me a long story.", 80, 0.0, 0.9, 40, 1.0, api_name="/text_chat")
    deadline = time.time() + 30
    while len(job.outputs()) < 3 and time.time() < deadline:
        time.sleep(0.05)
    job.cancel()  # what the Stop button does
    _, messages, stats = client(app).predict("Hello", 2, 0.0, 0.9, 40, 1.0, api_name="/text_chat")
    assert "2 tokens" in stats  # the model was released
    assert job.done() and not any("80 tokens" in output[2] for output in job.outputs())  # the story never finished


def test_bad_settings_sent_to_the_page_are_a_message_and_keep_the_question(app, tiny_seeing):
    c = client(app)
    for bad in ([6, 0.0, 0.9, "many", 1.0], [6, 0.0, 0.9, 40, None]):  # what a JSON client can send
        question, messages, stats = c.predict("Hello there", *bad, api_name="/text_chat")
        assert question == "Hello there" and "Generation settings" in stats and messages == []
    _, messages, stats = c.predict("Hello there", *SETTINGS, api_name="/text_chat")
    assert "tokens/s" in stats and len(messages) == 2  # the session goes on
    session, scheduler = Session(), Scheduler(tiny_seeing[0])
    for bad in ([float("nan"), 0.0, 0.9, 40, 1.0], [6, float("nan"), 0.9, 40, 1.0], [6, 0.0, 0.9, 40, float("inf")]):
        [reply] = handlers.answer_with(scheduler, session, "Hello", *bad)  # NaN: what the page's handler gets
        assert not reply.taken and "Generation settings" in reply.stats and session.messages == []


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_sessions_keep_only_what_the_model_needs_of_their_pictures(app, tmp_path):
    import gc

    import numpy as np

    photo = tmp_path / "photo.jpg"  # 3000x3000, photo-like noise: 27 MB once decoded
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)).save(photo, quality=90)
    sessions = [client(app) for _ in range(8)]
    sessions[0].predict(handle_file(str(photo)), False, *SETTINGS, api_name="/set_image")  # warm-up
    gc.collect()
    before = rss_mb()
    for c in sessions[1:]:
        c.predict(handle_file(str(photo)), False, *SETTINGS, api_name="/set_image")
    gc.collect()
    grown = rss_mb() - before
    assert grown < 7 * 27 / 2, f"RSS grew {grown:.0f} MB for 7 sessions"  # the full pictures would be 189 MB


def test_the_served_queue_polls_at_the_pace_it_was_given(tiny_seeing):
    """web/ui.py queue_events: Gradio's queue keeps the slower idle polling once the app is up,
    and the page still answers."""
    from app import serve
    from web.ui import QUEUE_IDLE_POLL_S, QUEUE_PROGRESS_POLL_S

    port = free_port()
    demo = serve(tiny_seeing[0], SamplingSettings(), port=port, block=False)
    try:
        queue = demo._queue
        assert (queue.sleep_when_free, queue.progress_update_sleep_when_free) == (QUEUE_IDLE_POLL_S,
                                                                                QUEUE_PROGRESS_POLL_S)
        _, messages, stats = client(f"http://127.0.0.1:{port}/").predict("Hello", *SETTINGS, api_name="/text_chat")
        assert len(messages) == 2 and "tokens" in stats
    finally:
        demo.close()
