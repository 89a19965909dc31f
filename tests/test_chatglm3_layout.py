"""Sophgo's prebuilt ChatGLM3 layout: a right-aligned KV cache that block_cache shifts itself,
and an lm_head that returns the argmax token.

A tiny random ChatGLM3 is exported in that layout (export/chatglm3_layout.py) and run by
language/shifted_generate.py on ONNX Runtime; a numpy reference that recomputes the whole
sequence every step (tests/fixtures/tiny_chatglm3.py) gives the expected greedy tokens and logits.
Where tpu-mlir is installed, the same nets are also compiled to a bmodel and run on its chip
simulator through the sail backend.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from language.chat import ChatModel, Notice
from language.families import Turn, load_family
from language.families.chatglm3 import (ASSISTANT_ID, EOS_ID, GMASK_ID, OBSERVATION_ID, SOP_ID, SYSTEM_ID, USER_ID,
                                        Chatglm3Family, process_response)
from language.generate import ContextOverflow, Generator
from language.sampling import Sampler, SamplingSettings
from language.shifted_generate import (APPENDED, GREEDY_NOTICE, SHIFTED, ShiftedGenerator, detect_layout,
                                       make_generator, right_aligned)
from tests.fixtures.tiny_chatglm3 import TINY_CHATGLM3, export_tiny_chatglm3, greedy_reference, reference_logits, \
    stand_in_tokenizer
from runtime import open_backend
from runtime.backend import ModelFileError

SEQ = 64
NEW_TOKENS = 8
GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=NEW_TOKENS)
CONVERSATIONS = [([], "What is in the picture?"),
                 ([Turn("Hi", "Hello!"), Turn("Colour?", "Red.")], "Shape?"),
                 ([Turn("你好", "你好！")], "介绍一下你自己")]


@pytest.fixture(scope="module")
def tokenizer():
    return stand_in_tokenizer()


@pytest.fixture(scope="module")
def family(tokenizer):
    return Chatglm3Family(tokenizer)


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    """(model directory, weights): lm_head returns the token, as in sophon-demo's bmodels."""
    out = tmp_path_factory.mktemp("tiny-chatglm3")
    return out, export_tiny_chatglm3(out, seq_len=SEQ)


@pytest.fixture(scope="module")
def logits_dir(tmp_path_factory):
    """The same model with an lm_head that returns logits, as in LLM-TPU's ChatGLM3."""
    out = tmp_path_factory.mktemp("tiny-chatglm3-logits")
    return out, export_tiny_chatglm3(out, seq_len=SEQ, token_head=False)


def _generator(model_dir, family) -> ShiftedGenerator:
    return make_generator(open_backend("onnx", model_dir, threads=1), family)


# ---------------------------------------------------------------- the family

def test_prompt_layout_follows_build_chat_input(family, tokenizer):
    text = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    ids = family.encode([Turn("Hi", "Hello!")], "Shape?").ids
    assert ids == [GMASK_ID, SOP_ID, USER_ID, *text("\n"), *text("Hi"), ASSISTANT_ID, *text("\n"), *text("Hello!"),
                   USER_ID, *text("\n"), *text("Shape?"), ASSISTANT_ID]
    assert (GMASK_ID, SOP_ID, USER_ID, ASSISTANT_ID) == (64790, 64792, 64795, 64796)
    assert family.encode([], "Hi").ids == [64790, 64792, 64795, *text("\n"), *text("Hi"), 64796]
    with_system = Chatglm3Family(tokenizer, system="Be brief.").encode([], "Hi").ids
    assert with_system[:3] == [64790, 64792, SYSTEM_ID] and SYSTEM_ID == 64794
    assert with_system[3:] == [*text("\n"), *text("Be brief."), 64795, *text("\n"), *text("Hi"), 64796]
    assert family.encode([], "Hi", system="Be brief.").ids == with_system  # a request's system prompt
    assert Chatglm3Family(tokenizer, system="Be brief.").encode([], "Hi", system="").ids == ids_without_system(text)
    assert family.stop_ids == {EOS_ID, USER_ID, OBSERVATION_ID} == {2, 64795, 64797}
    assert load_family("chatglm3", tokenizer).name == "chatglm3"


def ids_without_system(text) -> list[int]:
    return [64790, 64792, 64795, *text("\n"), *text("Hi"), 64796]


def test_positions_masks_and_answers(family):
    assert family.prefill_positions(3, 5).tolist() == [[0, 1, 2, 0, 0]]
    mask = family.prefill_mask(3, 4)[0, 0]
    assert (mask[:3, :3] == np.where(np.tri(3) > 0, 0, mask.min())).all() and (mask[:, 3] < 0).all()
    assert family.decode_position(7, 5).tolist() == [[7]]
    assert process_response("\nA red circle. ") == "A red circle."
    assert process_response("It was [[训练时间]].") == "It was 2023年."
    assert process_response("weather\n tool_call(city='Paris')") == "weather\n tool_call(city='Paris')"


def test_text_only_and_wrong_tokenizer_refused(family, tokenizer):
    with pytest.raises(ValueError, match="text-only"):
        family.encode([], "What is this?", image_tokens=4)
    from tests.fixtures.tiny_glm import stand_in_tokenizer as glm_tokenizer

    with pytest.raises(ValueError, match="wrong tokenizer"):
        Chatglm3Family(glm_tokenizer())  # ChatGLM-6B's [gMASK] is 130001


# ---------------------------------------------------------------- the nets and the loop

def test_layout_detection(token_dir, logits_dir, tiny_dir):
    token_nets = open_backend("onnx", token_dir[0], threads=1).nets()
    assert detect_layout(token_nets).cache == SHIFTED and detect_layout(token_nets).token_head
    assert token_nets["lm_head"].outputs[0].shape == (1, 1)
    assert token_nets["block_cache_0"].outputs[1].shape == (SEQ, 1, 2, 16)  # the whole cache, sequence first
    logits_nets = open_backend("onnx", logits_dir[0], threads=1).nets()
    assert detect_layout(logits_nets).cache == SHIFTED and not detect_layout(logits_nets).token_head
    llama_nets = open_backend("onnx", tiny_dir[0], threads=1).nets()
    assert detect_layout(llama_nets).cache == APPENDED and not detect_layout(llama_nets).token_head


def test_loader_picks_the_generator_from_the_nets(token_dir, tiny_model, tokenizer, monkeypatch):
    import models.loader

    assert type(tiny_model.generator) is Generator  # the project's own nets
    monkeypatch.setattr(models.loader, "load_tokenizer", lambda name: tokenizer)  # the stand-in has no folder
    model = models.loader.load_chat_model(token_dir[0], threads=1)
    assert isinstance(model.generator, ShiftedGenerator) and model.generator.greedy_only
    assert model.family.name == "chatglm3" and model.context_length == SEQ
    done = model.reply([Turn("Hi", "Hello!")], "Shape?", GREEDY)
    assert done.new_tokens > 0 and done.prompt_tokens == len(model.family.encode([Turn("Hi", "Hello!")], "Shape?").ids)


def test_greedy_tokens_match_the_reference(token_dir, family):
    gen = _generator(token_dir[0], family)
    assert isinstance(gen, ShiftedGenerator) and gen.token_head
    for history, question in CONVERSATIONS * 2:  # twice: a used cache must not leak into the next answer
        prompt = family.encode(history, question).ids
        generation = gen.generate(prompt, Sampler(GREEDY), NEW_TOKENS)
        ours = list(generation)
        theirs, margins = greedy_reference(TINY_CHATGLM3, token_dir[1], prompt, NEW_TOKENS, family.stop_ids)
        assert len(ours) > 0 and ours == theirs
        assert min(margins) > 0.05  # each choice wins clearly: equality is not luck
        assert generation.finish_reason == ("length" if len(ours) == NEW_TOKENS else "stop")


def test_logits_head_matches_the_reference_under_teacher_forcing(logits_dir, family):
    gen = _generator(logits_dir[0], family)
    assert not gen.token_head and gen.notice is None
    ids = family.encode(*CONVERSATIONS[1]).ids + [70, 71, 72, 73, 74, 75]
    cut = len(ids) - 8
    ours = np.stack([gen.prefill(ids[:cut])] + [gen.decode(token) for token in ids[cut:-1]])
    theirs = reference_logits(TINY_CHATGLM3, logits_dir[1], ids, slice(cut - 1, -1))
    assert ours.shape == theirs.shape == (8, TINY_CHATGLM3.vocab_size)
    assert np.abs(ours - theirs).max() < 1e-3
    # With logits the host sampler runs: greedy equals the reference, and sampling is seeded.
    prompt = family.encode(*CONVERSATIONS[0]).ids
    expected, _ = greedy_reference(TINY_CHATGLM3, logits_dir[1], prompt, NEW_TOKENS, family.stop_ids)
    assert list(gen.generate(prompt, Sampler(GREEDY), NEW_TOKENS)) == expected
    warm = SamplingSettings(temperature=1.0, top_k=5, seed=3)
    assert list(gen.generate(prompt, Sampler(warm), 6)) == list(gen.generate(prompt, Sampler(warm), 6))


def test_the_token_head_is_greedy_and_says_so(token_dir, family, caplog):
    gen = _generator(token_dir[0], family)
    prompt = family.encode(*CONVERSATIONS[0]).ids
    greedy = list(gen.generate(prompt, Sampler(GREEDY), NEW_TOKENS))
    with caplog.at_level(logging.WARNING, logger="language.shifted_generate"):
        warm = list(gen.generate(prompt, Sampler(SamplingSettings(temperature=1.5, seed=1)), NEW_TOKENS))
    assert warm == greedy and gen.notice == GREEDY_NOTICE
    assert any("greedy" in record.message for record in caplog.records)
    scores = gen.prefill(prompt)  # callers that argmax (bench, teacher forcing) get the chosen token
    assert int(np.argmax(scores)) == greedy[0]
    events = list(ChatModel(gen, family, family.tokenizer).stream([], "hi", SamplingSettings(temperature=1.0)))
    assert any(isinstance(e, Notice) and e.message == GREEDY_NOTICE for e in events)


def test_the_context_is_used_to_the_last_row_then_refused(token_dir, family, tokenizer):
    gen = _generator(token_dir[0], family)
    prompt = family.encode([], "x" * (SEQ - 7)).ids
    assert len(prompt) == SEQ - 2
    generation = gen.generate(prompt, Sampler(GREEDY), NEW_TOKENS)
    ours = list(generation)
    theirs, _ = greedy_reference(TINY_CHATGLM3, token_dir[1], prompt, NEW_TOKENS, family.stop_ids, context=SEQ)
    assert ours == theirs and len(ours) == 3  # the last two rows of the cache, then the token after them
    assert generation.finish_reason == "context" and gen.filled == SEQ
    with pytest.raises(ContextOverflow, match="full"):
        gen.decode(ours[-1])
    with pytest.raises(ContextOverflow, match=f"{SEQ + 1} tokens does not fit the model's context of {SEQ}"):
        list(gen.generate(list(range(5, SEQ + 6)), Sampler(GREEDY), NEW_TOKENS))
    model = ChatModel(gen, family, tokenizer)
    with pytest.raises(ContextOverflow, match="too long"):
        model.reply([], "y" * SEQ, GREEDY)
    with pytest.raises(ValueError, match="text-only"):
        list(gen.generate(prompt, Sampler(GREEDY), NEW_TOKENS, image=object()))


def test_right_aligned_decode_mask():
    left = np.array([[[[0, 0, 0, -1, -1, 0]]]], np.float32)  # 3 rows filled, cache of 5, then the token
    assert right_aligned(left, 3, 5).tolist() == [[[[-10000, -10000, 0, 0, 0, 0]]]]


def test_mixed_layout_is_refused(tiny_dir, family):
    nets = open_backend("onnx", tiny_dir[0], threads=1).nets()
    with pytest.raises(ModelFileError, match="one new KV row"):
        ShiftedGenerator(type("B", (), {"nets": lambda self: nets})(), family)


# ---------------------------------------------------------------- on tpu-mlir's chip simulator

@pytest.mark.simulator
def test_the_prebuilt_layout_runs_on_the_simulator(toolchain, token_dir, family, tmp_path):
    from compile.bmodel import compile_model

    bmodel = compile_model(token_dir[0], tmp_path, quantize="F16", prefill_widths=[SEQ], progress=lambda *_: None)
    backend = open_backend("sail-simulator", bmodel)
    head = backend.nets()["lm_head"].outputs[0]
    assert head.dtype == np.int32 and head.shape == (1, 1)
    chip, cpu = make_generator(backend, family), _generator(token_dir[0], family)
    assert isinstance(chip, ShiftedGenerator)
    prompt = family.encode(*CONVERSATIONS[1]).ids  # one conversation: the simulator takes ~2 s a token
    ours = list(chip.generate(prompt, Sampler(GREEDY), NEW_TOKENS))
    assert len(ours) > 0 and ours == list(cpu.generate(prompt, Sampler(GREEDY), NEW_TOKENS))
