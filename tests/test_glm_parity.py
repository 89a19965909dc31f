"""The glm family's split nets against a full-sequence reference of ChatGLM-6B (GLM v1).

The reference below is written in PyTorch from the published modeling_chatglm.py's math
(2-D rotary over the two halves of each head, LayerNorm-output residuals scaled by
sqrt(2 * layers), the layer-scaled attention scores, the bidirectional context mask, tanh
GELU) and recomputes the whole sequence at every step, with positions and mask derived
from the ids the way get_position_ids / get_masks do. The split nets run through the
shared Generator (prefill, then decode over the KV cache) on ONNX Runtime.
"""
import dataclasses
import math

import numpy as np
import pytest
import torch

from language.embedding import read_table
from language.families import Turn, load_family
from language.families.base import MASKED
from language.families.glm import EOP_ID, GMASK_ID, SOP_ID, GlmFamily, process_response
from language.generate import Generator, ImageRows
from language.sampling import Sampler, SamplingSettings
from models.tiny_glm import TINY_GLM, export_tiny_glm, stand_in_tokenizer
from runtime import open_backend

SEQ = 128
NEW_TOKENS = 8
GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=NEW_TOKENS)
QUESTIONS = [([], "What is in the picture?"), ([Turn("你好", "你好！")], "介绍一下你自己"),
             ([Turn("Hi", "Hello!"), Turn("Colour?", "Red.")], "Shape?")]


# ---------------------------------------------------------------- reference (full sequence, no cache)

def glm_reference(arch, tensors: dict, ids: list[int], rows: slice = slice(None),
                  image: tuple[int, np.ndarray] | None = None) -> np.ndarray:
    """Logits [len(ids[rows]), V] of ChatGLM-6B v1 on `ids` (which hold [gMASK] and <sop>);
    `image` = (first row, embeddings [Q,H]) replaces those rows' word embeddings."""
    t = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in tensors.items()}
    n, nh, d = len(ids), arch.num_heads, arch.head_dim
    # get_position_ids: context = everything before <sop>; row 0 frozen at [gMASK] after it.
    mask_position, context = ids.index(GMASK_ID), ids.index(SOP_ID)
    position = torch.arange(n)
    position[context:] = mask_position
    block_position = torch.cat([torch.zeros(context, dtype=torch.long), torch.arange(1, n - context + 1)])
    # get_masks: lower triangle plus every column of the context; True = masked.
    visible = torch.ones(n, n).tril()
    visible[:, :context] = 1
    masked = visible < 0.5
    # RotaryEmbedding(dim = D/2, base 10000), inv_freq rounded to half as published.
    dim = d // 2
    inv_freq = (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).half().float()
    freqs = torch.outer(torch.arange(max(n, 1)).float(), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat([-x2, x1], dim=-1)

    def rope(x, pos):  # x [n, nh, dim]
        c, s = cos[pos][:, None, :], sin[pos][:, None, :]
        return x * c + rotate_half(x) * s

    def layer_norm(x, name):
        return torch.nn.functional.layer_norm(x, (arch.hidden_size,), t[name + ".weight"], t[name + ".bias"],
                                              arch.layernorm_eps)

    def linear(x, name):
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    def gelu(x):
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))

    alpha = (2 * arch.num_layers) ** 0.5
    x = t["transformer.word_embeddings.weight"][torch.tensor(ids)]
    if image is not None:
        start, rows_embeds = image
        x = x.clone()
        x[start:start + len(rows_embeds)] = torch.from_numpy(rows_embeds)
    with torch.no_grad():
        for i in range(arch.num_layers):
            p = f"transformer.layers.{i}."
            a = layer_norm(x, p + "input_layernorm")
            mixed = linear(a, p + "attention.query_key_value").view(n, nh, 3 * d)
            q, k, v = mixed.split(d, dim=-1)
            q1, q2 = q.chunk(2, dim=-1)
            k1, k2 = k.chunk(2, dim=-1)
            q = torch.cat([rope(q1, position), rope(q2, block_position)], dim=-1)
            k = torch.cat([rope(k1, position), rope(k2, block_position)], dim=-1)
            coeff = float(i + 1)  # query_key_layer_scaling_coeff
            scores = torch.einsum("qhd,khd->hqk", q / (math.sqrt(d) * coeff), k)
            scores = scores.masked_fill(masked, -10000.0) * coeff
            probs = torch.softmax(scores, dim=-1)
            context_layer = torch.einsum("hqk,khd->qhd", probs, v).reshape(n, arch.hidden_size)
            h = a * alpha + linear(context_layer, p + "attention.dense")
            m = layer_norm(h, p + "post_attention_layernorm")
            x = m * alpha + linear(gelu(linear(m, p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
        x = layer_norm(x[rows], "transformer.final_layernorm")
        return (x @ t["lm_head.weight"].T).numpy()


def reference_greedy(tensors, prompt: list[int], new_tokens: int, image=None) -> list[int]:
    """Greedy decoding that recomputes the whole sequence for every new token."""
    ids = list(prompt)
    for _ in range(new_tokens):
        token = int(glm_reference(TINY_GLM, tensors, ids, slice(-1, None), image)[0].argmax())
        if token == EOP_ID:
            break
        ids.append(token)
    return ids[len(prompt):]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tokenizer():
    return stand_in_tokenizer()


@pytest.fixture(scope="module")
def family(tokenizer):
    return load_family("glm", tokenizer)


@pytest.fixture(scope="module")
def glm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-glm")
    return out, export_tiny_glm(out, seq_len=SEQ)


@pytest.fixture(scope="module")
def generator(glm_dir, family):
    return Generator(open_backend("onnx", glm_dir[0], threads=1), family, read_table(glm_dir[0]))


def split_net_logits(gen: Generator, prompt: list[int], answer: list[int], image=None) -> np.ndarray:
    """Prefill the prompt, then decode the answer token by token (teacher forcing).
    Row r holds the logits that predict answer[r] (and, for the last row, what follows)."""
    rows = [gen.prefill(prompt, image)]
    for token in answer[:-1]:
        rows.append(gen.decode(token))
    return np.stack(rows)


def image_rows(gen: Generator, count: int, seed: int = 1) -> tuple[np.ndarray, object]:
    embeds = np.random.default_rng(seed).standard_normal((1, count, TINY_GLM.hidden_size)).astype(np.float32)
    tensor = gen.backend.alloc(embeds.shape, np.float32)
    gen.backend.write(tensor, embeds)
    return embeds[0], tensor


def top_margin(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


# ---------------------------------------------------------------- (a) greedy tokens, (b) teacher-forced logits

@pytest.mark.parametrize("case", range(len(QUESTIONS)))
def test_greedy_tokens_and_logits_match_reference(glm_dir, family, generator, case):
    tensors = glm_dir[1]
    history, question = QUESTIONS[case]
    prompt = family.encode(history, question).ids
    ours = list(generator.generate(prompt, Sampler(GREEDY), NEW_TOKENS))
    theirs = reference_greedy(tensors, prompt, NEW_TOKENS)
    assert len(ours) == NEW_TOKENS
    assert ours == theirs

    # Teacher forcing along that path: every row close, every greedy choice won by far more.
    ref = glm_reference(TINY_GLM, tensors, prompt + ours, slice(len(prompt) - 1, None))
    our = split_net_logits(generator, prompt, ours + [0])
    assert our.shape == ref.shape == (NEW_TOKENS + 1, TINY_GLM.vocab_size)
    difference, scale = np.abs(our - ref).max(), max(1.0, np.abs(ref).max())
    assert difference < 1e-3 * scale, difference
    # Measured ~1e-6 x scale. Tanh vs erf GELU, or an inv_freq not rounded to half, each
    # move these logits by ~3e-4 x scale: the tighter bound tells those apart.
    assert difference < 2e-5 * scale, difference
    assert top_margin(ref).min() > 100 * difference


def test_image_rows_match_reference(glm_dir, family, generator):
    tensors, count = glm_dir[1], 4
    prompt = family.encode([], "描述一下图片", image_tokens=count)
    embeds, tensor = image_rows(generator, count)
    image = ImageRows(tensor, prompt.image_start)
    ours = list(generator.generate(prompt.ids, Sampler(GREEDY), NEW_TOKENS, image))
    theirs = reference_greedy(tensors, prompt.ids, NEW_TOKENS, (prompt.image_start, embeds))
    assert ours == theirs and len(ours) == NEW_TOKENS
    # The picture's rows, not the placeholder ids, decide the answer.
    assert ours != reference_greedy(tensors, prompt.ids, NEW_TOKENS)
    ref = glm_reference(TINY_GLM, tensors, prompt.ids + ours, slice(len(prompt.ids) - 1, None),
                        (prompt.image_start, embeds))
    our = split_net_logits(generator, prompt.ids, ours + [0], image)
    assert np.abs(our - ref).max() < 2e-5 * max(1.0, np.abs(ref).max())


def test_padded_prefill_gives_the_same_logits(generator, family):
    """A fixed-width prefill (as a static TPU compile has) pads ids, positions and mask."""
    prompt = family.encode([Turn("Hi", "Hello!")], "Why?").ids
    answer = [11, 12, 13]
    plain = split_net_logits(generator, prompt, answer)
    layout = generator.layout
    try:
        generator.layout = dataclasses.replace(layout, prefill_widths=(len(prompt) + 7,))
        padded = split_net_logits(generator, prompt, answer)
    finally:
        generator.layout = layout
    assert np.abs(plain - padded).max() < 1e-4


def test_chat_turn_runs_end_to_end(generator, family, tokenizer):
    """ChatModel (prompt fitting, streaming, postprocess) over the glm nets and family."""
    from language.chat import ChatModel

    chat = ChatModel(generator, family, tokenizer, name="tiny-glm")
    settings = dataclasses.replace(GREEDY, max_new_tokens=5)
    done = chat.reply([Turn("你好", "你好！")], "介绍一下你自己", settings)
    assert done.prompt_tokens == len(family.encode([Turn("你好", "你好！")], "介绍一下你自己").ids)
    assert done.new_tokens == 5 and done.finish_reason == "length"


# ---------------------------------------------------------------- (c) the family's prompt layout, positions, mask

def test_prompt_layout(family, tokenizer):
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731

    zh = family.encode([Turn("你好", "你好！")], "这是什么？")
    assert zh.image_start is None
    assert zh.ids == enc("问：你好\n答：你好！\n问：这是什么？\n答：") + [GMASK_ID, SOP_ID]

    en = family.encode([Turn("Hi", "Hello!"), Turn("你好", "好")], "What is it?")
    assert en.ids == enc("Q:Hi\nA:Hello!\nQ:你好\nA:好\nQ:What is it?\nA:") + [GMASK_ID, SOP_ID]

    seeing = family.encode([], "What colour?", image_tokens=32)
    head = enc("<img>")
    assert seeing.image_start == len(head) and seeing.ids[:len(head)] == head
    rows = seeing.ids[seeing.image_start:seeing.image_start + 32]
    assert rows == [family.placeholder_id] * 32 == [tokenizer.unk_token_id] * 32
    assert seeing.ids[seeing.image_start + 32:] == enc("</img>Q:What colour?\nA:") + [GMASK_ID, SOP_ID]
    assert family.stop_ids == {EOP_ID}


def test_positions_and_masks_small_example(family):
    # 4 context tokens (the last one [gMASK]), <sop>, padded to 7.
    positions = family.prefill_positions(5, 7)
    assert positions.shape == (1, 2, 7) and positions.dtype == np.int32
    assert positions[0].tolist() == [[0, 1, 2, 3, 3, 0, 0], [0, 0, 0, 0, 1, 0, 0]]
    visible = family.prefill_mask(5, 7)[0, 0] == 0
    assert family.prefill_mask(5, 7).shape == (1, 1, 7, 7)
    assert set(np.unique(family.prefill_mask(5, 7))) == {0.0, MASKED}
    expected = np.array([[1, 1, 1, 1, 0, 0, 0]] * 4 + [[1, 1, 1, 1, 1, 0, 0]] * 3, bool)
    assert (visible == expected).all()
    # The tokens after the prompt: row 0 stays at [gMASK] (3), row 1 counts on from <sop>'s 1.
    assert family.decode_position(5, 5).tolist() == [[[3], [2]]]
    assert family.decode_position(7, 5).tolist() == [[[3], [4]]]
    assert family.decode_mask(6, 8).tolist() == [[[[0, 0, 0, 0, 0, 0, MASKED, MASKED, 0]]]]


def test_incremental_positions_follow_the_full_sequence_rule(family):
    """Prefill + decode positions equal get_position_ids over the whole grown sequence."""
    prompt = family.encode([], "Hi").ids
    n = len(prompt)
    full = np.concatenate([family.prefill_positions(n, n)[0]] +
                          [family.decode_position(i, n)[0] for i in range(n, n + 5)], axis=1)
    ids = prompt + [7] * 5
    context, mask_position = ids.index(SOP_ID), ids.index(GMASK_ID)
    rule0 = np.arange(len(ids))
    rule0[context:] = mask_position
    rule1 = np.concatenate([np.zeros(context, int), np.arange(1, len(ids) - context + 1)])
    assert full.tolist() == [rule0.tolist(), rule1.tolist()]


def test_family_rejects_a_tokenizer_with_other_special_ids(tokenizer):
    with pytest.raises(ValueError, match="wrong tokenizer"):
        GlmFamily(tokenizer, gmask_id=5)


# ---------------------------------------------------------------- (d) postprocess

def test_postprocess_punctuation():
    assert process_response("  你好,世界!今天:晴;好吗? \n") == "你好，世界！今天：晴；好吗？"
    assert process_response("Hello, world! a:b; ok?") == "Hello, world! a:b; ok?"
    assert process_response("答案是,42") == "答案是，42"
    assert process_response("42,是答案") == "42，是答案"
    assert process_response("截至[[训练时间]]。") == "截至2023年。"
    assert GlmFamily(stand_in_tokenizer()).postprocess(" ok ") == "ok"
