"""The HTTP API (OpenAI-compatible /v1 and VisualGLM's POST /), driven by the real `openai`
client and raw HTTP against a live server on the tiny seeing model."""
import base64
import io
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
from gradio_client import Client, handle_file
from PIL import Image, ImageDraw

from app import serve
from language.families import Turn
from language.sampling import SamplingSettings
from serving.scheduler import Scheduler
from tests.conftest import free_port
from vision.preprocess import load_image

GREEDY = SamplingSettings(max_new_tokens=6, repetition_penalty=1.0)


def png(rgb, size=(48, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


RED, BLUE = png((220, 30, 30)), png((30, 30, 220))


def asking(question: str, picture: bytes | None = None) -> dict:
    if picture is None:
        return {"role": "user", "content": question}
    return {"role": "user", "content": [{"type": "text", "text": question},
                                        {"type": "image_url", "image_url": {"url": data_uri(picture)}}]}


def expected(model, question, picture=None, history=(), settings=GREEDY, **kwargs) -> str:
    image = load_image(picture) if picture else None
    return model.reply(list(history), question, settings, image=image, **kwargs).answer


@pytest.fixture
def api(app):
    return openai.OpenAI(base_url=f"{app}v1", api_key="unused", max_retries=0)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return body["error"]


def completion(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}v1/chat/completions", json={"max_tokens": 6, "repetition_penalty": 1.0, **body},
                      timeout=60)


@contextmanager
def slow_model(model, monkeypatch, seconds_per_token=0.05):
    """Every decode step takes a while, and only the cap ends an answer; counts the steps."""
    steps = []
    decode = model.generator.decode
    with monkeypatch.context() as patch:
        patch.setattr(model.generator, "decode", lambda token, slot=0: (steps.append(1), time.sleep(seconds_per_token),
                                                                decode(token, slot))[2])
        patch.setattr(model.family, "stop_ids", frozenset())
        yield steps


def test_models_lists_the_served_model(api, tiny_seeing):
    [listed] = api.models.list().data
    assert listed.id == tiny_seeing[0].name


def test_a_picture_then_a_follow_up_about_it(api, tiny_seeing):
    model = tiny_seeing[0]
    first = api.chat.completions.create(model=model.name, messages=[asking("What colour is it?", RED)],
                                        max_tokens=6, extra_body={"repetition_penalty": 1.0})
    assert first.choices[0].message.content == expected(model, "What colour is it?", RED)
    assert first.choices[0].finish_reason in ("stop", "length") and first.usage.completion_tokens >= 1
    follow_up = api.chat.completions.create(
        model=model.name, max_tokens=6, extra_body={"repetition_penalty": 1.0},
        messages=[asking("What colour is it?", RED), {"role": "assistant", "content": first.choices[0].message.content},
                  asking("Is it bright?")])
    history = [Turn("What colour is it?", first.choices[0].message.content)]
    assert follow_up.choices[0].message.content == expected(model, "Is it bright?", RED, history)
    assert follow_up.choices[0].message.content != expected(model, "Is it bright?", BLUE, history)


def test_a_follow_up_reads_only_its_new_turn_and_says_so_in_its_usage(api, tiny_seeing):
    model, question = tiny_seeing[0].name, asking("Tell me about the sea.")
    first = api.chat.completions.create(model=model, messages=[question], max_tokens=6)
    answer = first.choices[0].message.content
    follow_up = api.chat.completions.create(model=model, max_tokens=6, messages=[
        question, {"role": "assistant", "content": answer}, asking("And the sky?")])
    assert first.usage.prompt_tokens < follow_up.usage.prompt_tokens_details.cached_tokens < follow_up.usage.prompt_tokens
    assert follow_up.choices[0].message.content == expected(tiny_seeing[0], "And the sky?",
                                                            history=[Turn("Tell me about the sea.", answer)])


def test_streaming_sends_role_deltas_finish_usage_and_done(app, api, tiny_seeing):
    model = tiny_seeing[0]
    stream = api.chat.completions.create(model=model.name, messages=[asking("Describe it.", BLUE)], max_tokens=6,
                                         stream=True, stream_options={"include_usage": True},
                                         extra_body={"repetition_penalty": 1.0})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it streamed in pieces
    assert text.strip() == expected(model, "Describe it.", BLUE)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"] or finish == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and 1 <= usage.completion_tokens <= 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    raw = completion(app, messages=[asking("Hi")], stream=True).text
    assert raw.rstrip().endswith("data: [DONE]") and '"usage"' not in raw


def test_settings_system_prompt_and_stop_strings_are_honoured(api, tiny_seeing):
    model = tiny_seeing[0]

    def ask(**kwargs):
        return api.chat.completions.create(model=model.name, **{"max_tokens": 8, **kwargs}).choices[0]

    hot = {ask(messages=[asking("Hello")], temperature=1.5, seed=seed).message.content for seed in range(4)}
    assert len(hot) > 1
    assert ask(messages=[asking("Hello")], temperature=1.5, seed=3).message.content == \
        ask(messages=[asking("Hello")], temperature=1.5, seed=3).message.content
    system = ask(messages=[{"role": "system", "content": "You are terse."}, asking("Hello")],
                 extra_body={"repetition_penalty": 1.0}).message.content
    assert system == expected(model, "Hello", settings=SamplingSettings(max_new_tokens=8, repetition_penalty=1.0),
                              system="You are terse.")
    whole = expected(model, "Hello", settings=SamplingSettings(max_new_tokens=8, repetition_penalty=1.0))
    stop = whole.split()[2]
    cut = ask(messages=[asking("Hello")], stop=[stop], extra_body={"repetition_penalty": 1.0})
    assert cut.finish_reason == "stop" and stop not in cut.message.content
    assert whole.startswith(cut.message.content)


def test_visualglm_request_shape_gets_its_response_shape(app, tiny_seeing):
    model = tiny_seeing[0]
    body = {"text": "What colour is it?", "image": base64.b64encode(RED).decode(), "history": [],
            "max_length": 6, "repetition_penalty": 1.0}
    first = httpx.post(app, json=body, timeout=60).json()
    assert set(first) == {"result", "history", "status", "time"} and first["status"] == 200
    assert first["result"] == expected(model, "What colour is it?", RED)
    assert first["history"] == [["What colour is it?", first["result"]]]
    again = httpx.post(app, json={**body, "text": "Sure?", "history": first["history"]}, timeout=60).json()
    assert again["result"] == expected(model, "Sure?", RED, [Turn("What colour is it?", first["result"])])
    assert httpx.get(app).status_code == 200 and "<html" in httpx.get(app).text.lower()  # the page is still at /


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages[0].content"),
    ({"messages": [asking("Hi")], "temperature": -1}, "temperature"),
    ({"messages": [asking("Hi")], "top_p": 0}, "top_p"),
    ({"messages": [asking("Hi")], "max_tokens": 0}, "max_tokens"),
    ({"messages": [asking("Hi")], "max_tokens": "many"}, "max_tokens"),
    ({"messages": [asking("Hi")], "n": 2}, "n"),
    ({"messages": [asking("Hi")], "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": [asking("Hi")], "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"messages": [asking("Hi")], "best_of": 3}, "best_of"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages[0]"),
    ({"messages": [asking("Hi"), {"role": "assistant", "content": "x"}]}, "messages"),
    ({"messages": [asking("Hi", b"not a picture")]}, "messages[0].content[1].image_url.url"),
    ({"messages": [asking("Hi", RED), {"role": "assistant", "content": "Red."}, asking("And this?", BLUE)]},
     "messages[2].content"),
    ({"messages": [asking("Hi", png((1, 2, 3), size=(8000, 6000)))]}, "messages[0].content[1].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/a.png"}},
                                                {"type": "text", "text": "Hi"}]}]}, "messages[0].content[0].image_url.url"),
    ({"messages": [asking("word " * 400)]}, "messages"),
])
def test_bad_requests_get_a_400_that_names_the_field(app, body, param):
    response = completion(app, **body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_malformed_bodies_and_unknown_models(app):
    for raw in (b"{not json", b"[1, 2]", b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}'):
        response = httpx.post(f"{app}v1/chat/completions", content=raw, timeout=30)
        assert response.status_code == 400 and error_of(response)["message"]
    response = completion(app, model="gpt-4o", messages=[asking("Hi")])
    assert response.status_code == 404 and error_of(response)["param"] == "model"
    response = httpx.post(app, json={"text": "Hi", "history": [["only a question"]]}, timeout=30)
    assert response.status_code == 400 and error_of(response)["param"].startswith("history")


def test_image_urls_are_fetched_only_when_allowed_and_with_a_cap(tiny_seeing, tmp_path):
    import http.server
    import socketserver

    (tmp_path / "red.png").write_bytes(RED)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    with socketserver.TCPServer(("127.0.0.1", 0), handler) as files:
        threading.Thread(target=files.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{files.server_address[1]}/"
        port = free_port()
        demo = serve(tiny_seeing[0], GREEDY, port=port, allow_image_urls=True, block=False)
        try:
            def ask(image_url):
                return completion(f"http://127.0.0.1:{port}/", messages=[{"role": "user", "content": [
                    {"type": "text", "text": "What colour is it?"}, {"type": "image_url", "image_url": {"url": image_url}}]}])

            answer = ask(url + "red.png")
            assert answer.status_code == 200
            assert answer.json()["choices"][0]["message"]["content"] == expected(tiny_seeing[0], "What colour is it?", RED)
            missing = ask(url + "missing.png")
            assert missing.status_code == 400 and "could not be fetched" in error_of(missing)["message"]
        finally:
            demo.close()
            files.shutdown()


def test_the_api_key_guards_the_api_but_not_the_page(tiny_seeing):
    port = free_port()
    demo = serve(tiny_seeing[0], GREEDY, port=port, api_key="sesame", block=False)
    url = f"http://127.0.0.1:{port}/"
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.post(url, json={"text": "Hi", "history": []}).status_code == 401
        refused = completion(url, messages=[asking("Hi")])
        assert refused.status_code == 401 and error_of(refused)["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=f"{url}v1", api_key="sesame", max_retries=0)
        assert good.chat.completions.create(model=tiny_seeing[0].name, messages=[asking("Hi")], max_tokens=2).usage
        assert httpx.get(url).status_code == 200
    finally:
        demo.close()


def test_an_oversized_body_is_a_413(tiny_seeing):
    port = free_port()
    demo = serve(tiny_seeing[0], GREEDY, port=port, max_upload_mb=1, block=False)
    try:
        response = completion(f"http://127.0.0.1:{port}/", messages=[asking("x" * 3 * 2**20)])
        assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"
    finally:
        demo.close()


def until(condition, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_a_full_queue_is_a_503_with_retry_after(tiny_seeing, monkeypatch):
    """One answer holds the only slot until released and one waits; a third is refused, whatever the load."""
    model, release, steps, submitted = tiny_seeing[0], threading.Event(), [], []
    decode, submit = model.generator.decode, Scheduler.submit
    monkeypatch.setattr(model.generator, "decode",
                        lambda token, slot=0: (steps.append(1), release.wait(60), decode(token, slot))[2])
    monkeypatch.setattr(Scheduler, "submit", lambda self, request: (submitted.append(1), submit(self, request))[1])
    port = free_port()
    demo = serve(model, GREEDY, port=port, queue_size=1, slots=1, block=False)
    url = f"http://127.0.0.1:{port}/"
    try:
        running = threading.Thread(target=completion, args=(url,), kwargs={"messages": [asking("One")]})
        waiting = threading.Thread(target=completion, args=(url,), kwargs={"messages": [asking("Two")]})
        running.start()
        until(lambda: steps)
        waiting.start()
        until(lambda: len(submitted) == 2)
        refused = completion(url, messages=[asking("Three")])
        release.set()
        running.join(60), waiting.join(60)
        assert refused.status_code == 503 and refused.headers["retry-after"].isdigit()
        assert error_of(refused)["code"] == "queue_full"
        assert completion(url, messages=[asking("Four")]).status_code == 200
    finally:
        release.set()
        demo.close()


def test_a_backend_failure_is_a_500_and_the_server_lives_on(app, tiny_seeing, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    with monkeypatch.context() as patch:
        patch.setattr(tiny_seeing[0].generator, "generate", broken)
        failed = completion(app, messages=[asking("Hi")])
        streamed = completion(app, messages=[asking("Hi")], stream=True)
    assert failed.status_code == 500 and error_of(failed)["type"] == "server_error"
    assert streamed.status_code == 500 and error_of(streamed)["code"] == "model_failed"
    assert completion(app, messages=[asking("Hi")]).status_code == 200


def test_a_client_leaving_mid_stream_frees_the_model(app, tiny_seeing, monkeypatch):
    with slow_model(tiny_seeing[0], monkeypatch) as steps:
        with httpx.stream("POST", f"{app}v1/chat/completions", timeout=60,
                          json={"messages": [asking("Tell me a long story.")], "max_tokens": 100, "stream": True}) as r:
            lines = r.iter_lines()
            while sum(1 for line in [next(lines)] if '"content"' in line and '"content":""' not in line) == 0:
                pass
        left_at = len(steps)
        after = completion(app, messages=[asking("Hello")], max_tokens=3)
    assert after.status_code == 200
    print(f"left at step {left_at}, {len(steps)} steps in all")
    assert len(steps) < left_at + 10  # the abandoned answer stopped within a few tokens, far from its 100


def test_two_api_streams_and_a_page_session_at_once(app, tiny_seeing, tmp_path):
    model = tiny_seeing[0]
    (tmp_path / "green.png").write_bytes(png((30, 200, 30)))
    page = Client(app, verbose=False)
    page.predict(handle_file(str(tmp_path / "green.png")), False, 6, 0.0, 0.9, 40, 1.0, api_name="/set_image")
    api = openai.OpenAI(base_url=f"{app}v1", api_key="unused", max_retries=0)
    results = {}

    def stream(name, picture):
        chunks = api.chat.completions.create(model=model.name, messages=[asking("What is in the picture?", picture)],
                                             max_tokens=6, stream=True, extra_body={"repetition_penalty": 1.0})
        results[name] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()

    def ask_page():
        results["page"] = page.predict("What is in the picture?", 6, 0.0, 0.9, 40, 1.0,
                                       api_name="/image_chat")[1][-1]["content"][0]["text"]

    threads = [threading.Thread(target=stream, args=("red", RED)), threading.Thread(target=stream, args=("blue", BLUE)),
               threading.Thread(target=ask_page)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results["red"] == expected(model, "What is in the picture?", RED)
    assert results["blue"] == expected(model, "What is in the picture?", BLUE)
    assert results["page"] == expected(model, "What is in the picture?", png((30, 200, 30)))
    assert len(set(results.values())) == 3


@pytest.mark.slow
def test_the_default_model_streams_a_correct_answer_about_a_picture_to_the_openai_client():
    from models.loader import load_chat_model
    from models import catalog
    from training.evaluate import correct

    model = load_chat_model(catalog.prepare_model(catalog.VISION_MODEL, weights=catalog.DEFAULT_CPU_WEIGHTS))
    image = Image.new("RGB", (400, 300), "white")  # a red circle, as a photo would come
    ImageDraw.Draw(image).ellipse([60, 50, 220, 210], fill=(230, 20, 30))
    photo = io.BytesIO()
    image.save(photo, "JPEG", quality=85)
    port = free_port()
    demo = serve(model, SamplingSettings(max_new_tokens=24), port=port, block=False)
    try:
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        stream = api.chat.completions.create(model=model.name, stream=True, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What colour is the shape?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(photo.getvalue()).decode()}}]}])
        answer = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert correct(answer, "red"), answer
    finally:
        demo.close()
