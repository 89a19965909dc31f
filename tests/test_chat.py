"""Conversations on the tiny model: history fitting, notices, errors, stats."""
import time

import pytest

from language.chat import Done, Notice, TextDelta
from language.families import Turn
from language.generate import ContextOverflow
from language.sampling import SamplingSettings
from tests.conftest import TINY_SEQ

SHORT = SamplingSettings(max_new_tokens=8)


def test_a_reply_streams_text_and_ends_with_stats(tiny_model):
    events = list(tiny_model.stream([], "Hello", SHORT))
    done = events[-1]
    assert isinstance(done, Done)
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert done.answer == streamed.strip()
    assert done.new_tokens == 8 and done.finish_reason == "length"
    assert done.prompt_tokens == len(tiny_model.family.encode([], "Hello").ids)
    assert 0 < done.first_token_s < 60 and done.decode_tokens_per_s > 0
    start = time.perf_counter()
    again = tiny_model.reply([], "Hello", SHORT)
    took = time.perf_counter() - start
    assert again.first_token_s <= took  # measured within the call, from the request
    assert (again.new_tokens - 1) / again.decode_tokens_per_s <= took - again.first_token_s + 0.05


def test_max_new_tokens_caps_the_answer(tiny_model):
    for cap in (1, 5):
        done = tiny_model.reply([], "Hello", SamplingSettings(max_new_tokens=cap))
        assert done.new_tokens == cap


def test_the_oldest_turns_are_dropped_with_a_notice(tiny_model):
    history = [Turn(f"question number {i}", f"answer number {i}") for i in range(12)]
    full = tiny_model.family.encode(history, "And now?").ids
    assert len(full) > TINY_SEQ  # the whole conversation cannot fit
    prompt, dropped = tiny_model.fit(history, "And now?", SHORT.max_new_tokens)
    ids = prompt.ids
    assert 0 < dropped < len(history)
    assert ids == tiny_model.family.encode(history[dropped:], "And now?").ids
    assert len(ids) + SHORT.max_new_tokens <= TINY_SEQ
    events = list(tiny_model.stream(history, "And now?", SHORT))
    notices = [e for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and f"oldest {dropped} turn" in notices[0].message
    assert events[-1].dropped_turns == dropped


def test_a_question_longer_than_the_context_is_refused_clearly(tiny_model):
    with pytest.raises(ContextOverflow, match="too long"):
        list(tiny_model.stream([], "word " * 200, SHORT))
    assert tiny_model.reply([], "Still there?", SHORT).new_tokens == 8  # the model is still usable


def test_an_empty_question_is_refused(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        list(tiny_model.stream([], "   ", SHORT))


def test_generation_stops_when_the_context_is_full(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model.family, "stop_ids", frozenset())  # only the context can end it
    question = "word " * 60
    done = tiny_model.reply([], question, SamplingSettings(max_new_tokens=500))
    assert done.finish_reason == "context"
    assert tiny_model.generator.slot(0).filled == TINY_SEQ
    assert done.prompt_tokens + done.new_tokens == TINY_SEQ + 1  # the last token needs no cache row


def test_an_abandoned_stream_frees_the_model(tiny_model):
    events = tiny_model.stream([], "Hello", SamplingSettings(max_new_tokens=50))
    next(e for e in events if isinstance(e, TextDelta))
    events.close()  # a user pressing Stop
    assert tiny_model.reply([], "Hello again", SHORT).new_tokens == 8


def test_a_system_prompt_goes_where_the_chat_template_puts_it(tiny_model):
    family = tiny_model.family
    plain, told = family.encode([], "Hello"), family.encode([], "Hello", system="Answer in French.")
    text = family.tokenizer.decode(told.ids)
    assert "Answer in French." in text and text.index("Answer in French.") < text.index("Hello")
    assert "Answer in French." not in family.tokenizer.decode(plain.ids)
    with_image = family.encode([], "Hello", image_tokens=4, system="Answer in French.")
    assert with_image.image_start > len(family.tokenizer.encode("Answer in French.", add_special_tokens=False))


def test_a_lone_surrogate_in_a_question_is_answered_not_failed(tiny_model):
    done = tiny_model.reply([Turn("A \ud800 B", "Sure.")], "What is \udfff this? 🙂", SHORT)
    assert done.new_tokens == 8


def test_settings_that_are_not_finite_numbers_are_refused_by_name():
    import math

    for field, value in (("temperature", math.nan), ("top_p", math.inf), ("repetition_penalty", math.nan),
                         ("max_new_tokens", 5.5), ("top_k", "40"), ("temperature", None)):
        with pytest.raises(ValueError, match=field):
            SamplingSettings(**{field: value})
