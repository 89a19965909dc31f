"""A slot keeps its conversation's K/V: a follow-up reads only what is new, a long prompt is read
in chunks, and either way the answer is the one a whole read gives."""
import threading
import time

import numpy as np
import pytest
from PIL import Image

import language.generate
from language.families import Turn
from language.generate import ImageRows, row_keys
from language.sampling import SamplingSettings
from models.cpu_weights import cpu_copy
from models.loader import load_chat_model
from serving.scheduler import ChatRequest, Scheduler

GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=8)
STORY = "Tell me a long story about a lighthouse keeper, the sea, the gulls and a storm that lasted for days."


@pytest.fixture(scope="module")
def int8_copies(tmp_path_factory) -> dict:
    """CPU copies (models/cpu_weights.py), whose layers write their K/V into the cache in place."""
    copies = {}

    def copy(model_dir):
        if model_dir not in copies:
            copies[model_dir] = tmp_path_factory.mktemp("int8") / "model"
            cpu_copy(model_dir, copies[model_dir], "int8")
        return copies[model_dir]
    return copy


@pytest.fixture(params=["float32 nets", "int8 CPU copy"])
def as_loaded(request, int8_copies):
    """A model folder as given, or its int8 CPU copy: both ways of keeping the cache."""
    return (lambda model_dir: model_dir) if request.param == "float32 nets" else int8_copies


@pytest.fixture
def model(tiny_dir, as_loaded):
    """The tiny llama with KV slots of its own (the session's tiny_model keeps its slots' rows)."""
    chat = load_chat_model(as_loaded(tiny_dir[0]))
    chat.generator.open_slots(4)
    return chat


@pytest.fixture
def rows_read(model, monkeypatch):
    """Prompt rows each prefill net call reads (layer 0), in order; decode steps (which on ONNX
    Runtime are one-row calls of the same net) are not counted."""
    generator, read, decoding = model.generator, [], []
    run, decode = generator.backend.run, generator.decode

    def counting(net, inputs, outputs):
        if net in ("block_0", "block_kv_0") and not decoding:
            read.append(inputs[0].shape[1])
        return run(net, inputs, outputs)

    def counted_decode(token, slot=0):
        decoding.append(token)
        try:
            return decode(token, slot)
        finally:
            decoding.pop()

    monkeypatch.setattr(generator.backend, "run", counting)
    monkeypatch.setattr(generator, "decode", counted_decode)
    return read


def read_all(steps) -> tuple[np.ndarray, int]:
    """Run prefill_steps to the end: its logits, and how many times it paused."""
    pauses = 0
    while True:
        try:
            next(steps)
            pauses += 1
        except StopIteration as end:
            return end.value, pauses


def test_a_long_prompt_is_read_in_chunks_with_the_logits_of_one_read(model, rows_read, monkeypatch):
    generator = model.generator
    ids = model.family.encode([], STORY).ids
    whole, pauses = read_all(generator.prefill_steps(ids, slot=0))
    assert pauses == 0 and rows_read == [len(ids)]
    monkeypatch.setattr(language.generate, "PREFILL_CHUNK", 16)
    rows_read.clear()
    chunked, pauses = read_all(generator.prefill_steps(ids, slot=1))
    assert rows_read == [16] * (len(ids) // 16) + [len(ids) % 16] and pauses == len(rows_read) - 1
    np.testing.assert_allclose(chunked, whole, atol=1e-4)
    for a, b in zip(generator.slot(0).k + generator.slot(0).v, generator.slot(1).k + generator.slot(1).v):
        np.testing.assert_allclose(generator.backend.read(a), generator.backend.read(b), atol=1e-4)  # both fresh


def test_a_follow_up_reads_only_its_new_turn_and_answers_as_a_whole_read(model, rows_read):
    first = model.reply([], "Hi there, who are you?", GREEDY, slot=0)
    first_prompt = first.prompt_tokens
    history, question = [Turn("Hi there, who are you?", first.answer)], "And what can you do?"
    rows_read.clear()
    follow_up = model.reply(history, question, GREEDY, slot=0)
    assert first_prompt <= follow_up.cached_tokens < follow_up.prompt_tokens
    assert rows_read[0] == follow_up.prompt_tokens - follow_up.cached_tokens  # only the new turn was read
    model.generator.reuse_prefixes = False
    rows_read.clear()
    whole = model.reply(history, question, GREEDY, slot=1)
    assert sum(rows_read) == whole.prompt_tokens and whole.cached_tokens == 0
    assert follow_up.answer == whole.answer and follow_up.new_tokens == whole.new_tokens


def test_a_follow_up_about_a_picture_keeps_the_picture_and_answers_as_a_whole_read(tiny_seeing_dir, as_loaded):
    model = load_chat_model(as_loaded(tiny_seeing_dir[0]))
    model.generator.open_slots(2)
    picture = Image.new("RGB", (64, 48), (30, 160, 60))
    first = model.reply([], "What colour is it?", GREEDY, image=picture, slot=0)
    history, question = [Turn("What colour is it?", first.answer)], "And its shape?"
    follow_up = model.reply(history, question, GREEDY, image=picture, slot=0)
    assert first.prompt_tokens <= follow_up.cached_tokens < follow_up.prompt_tokens  # picture rows included
    model.generator.reuse_prefixes = False
    whole = model.reply(history, question, GREEDY, image=picture, slot=1)
    assert whole.cached_tokens == 0 and (follow_up.answer, follow_up.new_tokens) == (whole.answer, whole.new_tokens)


def test_a_picture_is_kept_only_where_the_same_picture_was(tiny_seeing_dir, as_loaded):
    model = load_chat_model(as_loaded(tiny_seeing_dir[0]))
    generator, rows = model.generator, model.vision.rows
    generator.open_slots(2)
    prompt = model.family.encode([], "What colour is it?", image_tokens=rows)
    red = ImageRows(model.vision.encode(Image.new("RGB", (40, 40), (220, 30, 30))).embeds, prompt.image_start, "red")
    blue = ImageRows(model.vision.encode(Image.new("RGB", (40, 40), (30, 30, 220))).embeds, prompt.image_start, "blue")
    generator.prefill(prompt.ids, red, slot=0)
    assert generator.reusable_rows(0, row_keys(prompt.ids, red)) == len(prompt.ids) - 1  # the same question again
    assert generator.reusable_rows(0, row_keys(prompt.ids, blue)) == prompt.image_start  # up to the picture
    kept_red = generator.prefill(prompt.ids, blue, slot=0)  # reads the blue picture and what follows it
    generator.reuse_prefixes = False
    np.testing.assert_allclose(kept_red, generator.prefill(prompt.ids, blue, slot=1), atol=1e-4)


def test_a_follow_up_goes_back_to_its_conversation_and_new_ones_take_empty_slots(model):
    scheduler = Scheduler(model, slots=2)

    def ask(history, question):
        return list(scheduler.stream(history, question, GREEDY))[-1]

    a = ask([], "Hi there, who are you?")
    b = ask([], "What is the capital of France?")  # shares only the system prompt with a: takes the empty slot
    a2 = ask([Turn("Hi there, who are you?", a.answer)], "And what can you do?")
    b2 = ask([Turn("What is the capital of France?", b.answer)], "And of Italy?")
    assert a2.cached_tokens >= a.prompt_tokens and b2.cached_tokens >= b.prompt_tokens


def test_a_long_prompt_is_read_between_another_answers_steps(model, monkeypatch):
    """A long prompt does not stall an answer already streaming: its chunks take turns with that
    answer's decode steps."""
    monkeypatch.setattr(language.generate, "PREFILL_CHUNK", 8)
    monkeypatch.setattr(model.family, "stop_ids", frozenset())
    log, decode, read_rows = [], model.generator.decode, model.generator._read_rows
    monkeypatch.setattr(model.generator, "decode", lambda token, slot=0: (log.append(("decode", slot)),
                                                                          time.sleep(0.01), decode(token, slot))[2])
    monkeypatch.setattr(model.generator, "_read_rows",
                        lambda ids, image, kv, *args: (log.append(("read", len(ids))), read_rows(ids, image, kv, *args)))
    scheduler = Scheduler(model, slots=2)
    streaming = scheduler.submit(ChatRequest([], "Hi", SamplingSettings(max_new_tokens=60, repetition_penalty=1.0)))
    events = streaming.events()
    next(events)  # the short answer is streaming
    long_answer = list(scheduler.stream([], STORY, GREEDY))
    threading.Thread(target=lambda: list(events), daemon=True).start()
    story = len(model.family.encode([], STORY).ids)
    reads = [n for n, (kind, size) in enumerate(log) if kind == "read" and size == story]
    assert len(reads) >= 3 and long_answer[-1].new_tokens == GREEDY.max_new_tokens
    between = log[reads[0]:reads[-1]]
    assert sum(kind == "decode" for kind, _ in between) >= len(reads) - 1  # a step of the other answer each time
    streaming.cancel()


def test_the_end_of_a_turn_is_read_with_its_answer_and_the_follow_up_reads_only_its_words(model, rows_read,
                                                                                          as_loaded, tiny_dir):
    first = model.reply([], "Hi there, who are you?", GREEDY, slot=0)
    history = [Turn("Hi there, who are you?", first.answer)]
    one, other = (model.family.encode(history, question).ids for question in ("Yes", "No"))
    shared = next(i for i, (a, b) in enumerate(zip(one, other)) if a != b)  # the next prompt's rows before its words
    assert model.generator.held_rows(0) == shared - 1
    rows_read.clear()
    question = "And what can you do?"
    follow_up = model.reply(history, question, GREEDY, slot=0)
    # one read of the question's rows, then the follow-up's own turn end
    assert follow_up.cached_tokens == shared - 1 and rows_read[0] == follow_up.prompt_tokens - shared + 1
    whole = load_chat_model(as_loaded(tiny_dir[0])).reply(history, question, GREEDY)
    assert whole.cached_tokens == 0 and (follow_up.answer, follow_up.new_tokens) == (whole.answer, whole.new_tokens)


def test_a_conversation_keeps_its_rows_when_more_slots_open(tiny_dir, as_loaded):
    """Batched caches (the CPU copies) grow as slots open, each slot's rows copied over."""
    model = load_chat_model(as_loaded(tiny_dir[0]))
    first = model.reply([], "Hi there, who are you?", GREEDY, slot=0)
    model.generator.open_slots(3)
    model.reply([], "What is the capital of France?", GREEDY, slot=2)
    history, question = [Turn("Hi there, who are you?", first.answer)], "And what can you do?"
    follow_up = model.reply(history, question, GREEDY, slot=0)
    whole = load_chat_model(as_loaded(tiny_dir[0])).reply(history, question, GREEDY)
    assert follow_up.cached_tokens > first.prompt_tokens
    assert (follow_up.answer, follow_up.new_tokens) == (whole.answer, whole.new_tokens)
