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
    """Decode steps that take a while and never stop early; logs every decode and prefill."""
    steps = []
    decode, prefill = tiny_model.generator.decode, tiny_model.generator.prefill_steps
    monkeypatch.setattr(tiny_model.generator, "decode", lambda token, slot=0: (steps.append("decode"), time.sleep(0.02),
                                                                               decode(token, slot))[2])
    monkeypatch.setattr(tiny_model.generator, "prefill_steps",
                        lambda *args: (steps.append("prefill"), prefill(*args))[1])
    monkeypatch.setattr(tiny_model.family, "stop_ids", frozenset())
    return steps


def test_answers_match_the_model_and_later_requests_see_their_place(tiny_model, slow):
    scheduler = Scheduler(tiny_model, slots=1)
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
    assert waits[0] >= 1 and waits[-1] == 0  # it moved up once the first answer was done
    assert not any(isinstance(e, Waiting) for e in events["first"])
    assert events["third"][-1].answer == tiny_model.reply([], "Three", SamplingSettings(max_new_tokens=4,
                                                                                         repetition_penalty=1.0)).answer


def test_a_full_queue_refuses_and_a_cancelled_waiter_leaves_it(tiny_model, slow):
    scheduler = Scheduler(tiny_model, max_waiting=1, slots=1)
    running = scheduler.submit(ChatRequest([], "One", LONG))
    stream = running.events()  # held open: a stream dropped after one event cancels its answer
    next(stream)  # it has started: the queue is empty again
    waiting = scheduler.submit(ChatRequest([], "Two", LONG))
    with pytest.raises(QueueFull):
        scheduler.submit(ChatRequest([], "Three", LONG))
    waiting.cancel()
    assert scheduler.waiting == 0
    assert list(waiting.events()) == [Waiting(0)]  # its stream ends at once
    stream.close()


def test_closing_a_stream_frees_the_model_within_a_step(tiny_model, slow):
    scheduler = Scheduler(tiny_model, slots=1)
    stream = scheduler.stream([], "Tell me a story.", LONG)
    next(e for e in stream if isinstance(e, TextDelta))
    stream.close()  # Stop pressed, or the client went away
    closed_at = len(slow)
    done = [e for e in scheduler.stream([], "Hi", SamplingSettings(max_new_tokens=3)) if isinstance(e, Done)]
    assert done[0].new_tokens == 3
    assert slow[closed_at:slow.index("prefill", closed_at)].count("decode") <= 1  # at most the step under way


def test_a_failure_reaches_its_request_and_the_worker_goes_on(tiny_model, monkeypatch):
    scheduler = Scheduler(tiny_model)
    with monkeypatch.context() as patch:
        patch.setattr(tiny_model.generator, "generate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("lost")))
        with pytest.raises(RuntimeError, match="lost"):
            list(scheduler.stream([], "Hi", SamplingSettings(max_new_tokens=3)))
    assert list(scheduler.stream([], "Hi", SamplingSettings(max_new_tokens=3)))[-1].new_tokens == 3


def test_answers_on_several_slots_take_turns_and_keep_to_themselves(tiny_seeing, monkeypatch):
    from PIL import Image

    from language.chat import Done
    from serving.scheduler import Ticket
    model = tiny_seeing[0]
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40), (200, 40, 200), (40, 200, 200),
               (250, 140, 20), (120, 120, 120)]
    pictures = [Image.new("RGB", (48, 48), rgb) for rgb in colours]
    settings = SamplingSettings(max_new_tokens=12, repetition_penalty=1.0)
    alone = [model.reply([], "What colour is it?", settings, image=p).answer for p in pictures]
    produced, put = [], Ticket._put  # the order the scheduler hands events out in, whoever reads them when
    monkeypatch.setattr(Ticket, "_put", lambda ticket, item: (produced.append((id(ticket), type(item).__name__)),
                                                               put(ticket, item))[1])
    scheduler = Scheduler(model, slots=8)
    tickets = [scheduler.submit(ChatRequest([], "What colour is it?", settings, p)) for p in pictures]
    answers = [None] * 8

    def read(n):
        answers[n] = next(e for e in tickets[n].events() if isinstance(e, Done)).answer

    threads = [threading.Thread(target=read, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers == alone  # no cross-talk between the slots
    assert len(set(alone)) > 4  # the pictures really drive the answers
    first_done = next(i for i, (_, kind) in enumerate(produced) if kind == "Done")
    started = {ticket for ticket, kind in produced[:first_done] if kind == "TextDelta"}
    assert len(started) == 8  # every answer was streaming before any one of them finished


def test_a_cancelled_answer_hands_its_slot_to_the_next_in_line(tiny_model, slow):
    scheduler = Scheduler(tiny_model, slots=2)
    streams = [scheduler.stream([], f"Story {n}", LONG) for n in range(2)]
    for stream in streams:
        next(e for e in stream if isinstance(e, TextDelta))
    queued = scheduler.submit(ChatRequest([], "Hi", SamplingSettings(max_new_tokens=3)))
    events = queued.events()
    assert next(events) == Waiting(0)
    streams[0].close()
    cancelled_at = len(slow)
    assert isinstance(next(events), TextDelta | Done)  # it started
    started_at = slow.index("prefill", cancelled_at)
    assert slow[cancelled_at:started_at].count("decode") <= 2  # the step under way, then one round of the rest
    streams[1].close()


def answers_side_by_side(model, questions: list[str], settings: SamplingSettings) -> tuple[list[str], list[int]]:
    """The answers of the questions submitted at once to a 4-slot Scheduler, and the batch
    size of each lm_head run on the way."""
    batch_rows, run = [], model.generator.backend.run
    model.generator.backend.run = lambda net, inputs, outputs: (
        batch_rows.append(inputs[0].shape[0]) if net == "lm_head" else None, run(net, inputs, outputs))[1]
    scheduler = Scheduler(model, slots=4)
    tickets = [scheduler.submit(ChatRequest([], question, settings)) for question in questions]
    return [list(ticket.events())[-1].answer for ticket in tickets], batch_rows


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_answers_on_several_slots_decode_as_one_batch_and_match_their_lone_answers(tiny_dir, tmp_path, weights):
    """The CPU copies' nets take the slots as a batch (language/generate.py decode_pending):
    four answers at once step together, and each is the answer it gets alone."""
    from models.cpu_weights import cpu_copy
    from models.loader import load_chat_model

    cpu_copy(tiny_dir[0], tmp_path / weights, weights)
    model = load_chat_model(tmp_path / weights)
    settings = SamplingSettings(max_new_tokens=12, repetition_penalty=1.0)
    questions = ["Hi there", "What is the capital of France?", "Tell me a story.", "Count to five, please."]
    model.family.stop_ids = frozenset()  # every answer runs its 12 tokens, side by side
    alone = [model.reply([], question, settings, slot=0).answer for question in questions]
    answers, batch_rows = answers_side_by_side(model, questions, settings)
    assert answers == alone
    assert batch_rows.count(4) >= 8  # most steps decoded the four answers in one


def test_two_answers_on_the_last_slots_decode_as_a_batch_of_two(tiny_dir, tmp_path):
    """Slots 0 and 1 hold earlier conversations: two new ones take slots 2 and 3, and their
    batch is those two rows only."""
    from models.cpu_weights import cpu_copy
    from models.loader import load_chat_model

    cpu_copy(tiny_dir[0], tmp_path / "int8", "int8")
    model = load_chat_model(tmp_path / "int8")
    model.generator.open_slots(4)
    settings = SamplingSettings(max_new_tokens=12, repetition_penalty=1.0)
    for slot, earlier in enumerate(["Good morning, how are you today?", "Please name three colours."]):
        model.reply([], earlier, settings, slot=slot)
    model.family.stop_ids = frozenset()
    questions = ["Hi there", "Tell me a story."]
    alone = [model.reply([], question, settings, slot=3).answer for question in questions]
    answers, batch_rows = answers_side_by_side(model, questions, settings)
    assert answers == alone
    assert batch_rows.count(2) >= 8 and 4 not in batch_rows
