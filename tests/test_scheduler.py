"""The Scheduler: one owner of the model, a bounded queue, positions, and cancellation."""
import threading
import time

import pytest

from language.chat import Done, TextDelta
from language.sampling import SamplingSettings
from serving.scheduler import ChatRequest, QueueFull, Scheduler, Waiting

LONG = SamplingSettings(max_new_tokens=40, repetition_penalty=1.0)


@pytest.fixture
def slow(tiny_model, monkeypatch):
    """Decode steps that take a while and never stop early; counts them."""
    steps = []
    decode = tiny_model.generator.decode
    monkeypatch.setattr(tiny_model.generator, "decode", lambda token: (steps.append(1), time.sleep(0.02),
                                                                       decode(token))[2])
    monkeypatch.setattr(tiny_model.family, "stop_ids", frozenset())
    return steps


def test_answers_match_the_model_and_later_requests_see_their_place(tiny_model, slow):
    scheduler = Scheduler(tiny_model)
    first = scheduler.submit(ChatRequest([], "One", LONG))
    second = scheduler.submit(ChatRequest([], "Two", LONG))
    third = scheduler.submit(ChatRequest([], "Three", SamplingSettings(max_new_tokens=4, repetition_penalty=1.0)))
    events = {name: [] for name in ("first", "second", "third")}
    threads = [threading.Thread(target=lambda n=n, t=t: events[n].extend(t.events()))
               for n, t in (("first", first), ("second", second), ("third", third))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    waits = [e.ahead for e in events["third"] if isinstance(e, Waiting)]
    assert waits[0] == 2 and waits[-1] == 1  # it moved up once the first answer was done
    assert not any(isinstance(e, Waiting) for e in events["first"])
    assert events["third"][-1].answer == tiny_model.reply([], "Three", SamplingSettings(max_new_tokens=4,
                                                                                         repetition_penalty=1.0)).answer


def test_a_full_queue_refuses_and_a_cancelled_waiter_leaves_it(tiny_model, slow):
    scheduler = Scheduler(tiny_model, max_waiting=1)
    running = scheduler.submit(ChatRequest([], "One", LONG))
    next(running.events())  # it has started: the queue is empty again
    waiting = scheduler.submit(ChatRequest([], "Two", LONG))
    with pytest.raises(QueueFull):
        scheduler.submit(ChatRequest([], "Three", LONG))
    waiting.cancel()
    assert scheduler.waiting == 0
    assert list(waiting.events()) == [Waiting(1)]  # its stream ends at once
    running.cancel()


def test_closing_a_stream_frees_the_model_within_a_step(tiny_model, slow):
    scheduler = Scheduler(tiny_model)
    stream = scheduler.stream([], "Tell me a story.", LONG)
    next(e for e in stream if isinstance(e, TextDelta))
    stream.close()  # Stop pressed, or the client went away
    closed_at = len(slow)
    done = [e for e in scheduler.stream([], "Hi", SamplingSettings(max_new_tokens=3)) if isinstance(e, Done)]
    assert done[0].new_tokens == 3
    assert len(slow) <= closed_at + 1 + 2  # at most the step under way, then the 2 decode steps of "Hi"


def test_a_failure_reaches_its_request_and_the_worker_goes_on(tiny_model, monkeypatch):
    scheduler = Scheduler(tiny_model)
    with monkeypatch.context() as patch:
        patch.setattr(tiny_model.generator, "generate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("lost")))
        with pytest.raises(RuntimeError, match="lost"):
            list(scheduler.stream([], "Hi", SamplingSettings(max_new_tokens=3)))
    assert list(scheduler.stream([], "Hi", SamplingSettings(max_new_tokens=3)))[-1].new_tokens == 3
