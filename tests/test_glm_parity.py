"""The glm family's split nets against a full-sequence reference of ChatGLM-6B (GLM v1).

The reference below is written in PyTorch from the published modeling_chatglm.py's math
(2-D rotary over the two halves of each head, LayerNorm-output residuals scaled by
sqrt(2 * 28) whatever the depth, the layer-scaled attention scores, the bidirectional
context mask, tanh GELU) and recomputes the whole sequence at every step, with positions and
mask derived from the ids the way get_position_ids / get_masks do. Its rotary tables are
computed as the published RotaryEmbedding does once the model is cast with `.half()` or
`.float()`; everything else runs in float32, as the nets do (a `.half()` model also rounds
every activation to float16, which no float32 net reproduces: only the tables are a choice
of the export). The split nets run through the shared Generator (prefill, then decode over
the KV cache) on ONNX Runtime, exported in both rotary modes, with prompts reaching past
position 1024, where the two modes' angles differ most.
"""
import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from export.glm import ROTARY_ANGLES, GlmArch, rotary_tables
from language.embedding import read_table
from language.families import Turn, load_family
from language.families.base import MASKED
from language.families.glm import EOP_ID, GMASK_ID, SOP_ID, GlmFamily, process_response
from language.generate import Generator, ImageRows
from language.sampling import Sampler, SamplingSettings
from models.store import read_config
from tests.fixtures.tiny_glm import TINY_GLM, export_tiny_glm, stand_in_tokenizer
from runtime import open_backend

SEQ = 2048  # the published max_sequence_length: room for the long prompt
NEW_TOKENS = 8
GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=NEW_TOKENS)
LONG_HISTORY = [Turn("Tell me a story.", "Once upon a time, " * 60)]  # positions past 1100
QUESTIONS = [([], "What is in the picture?"), ([Turn("你好", "你好！")], "介绍一下你自己"),
             ([Turn("Hi", "Hello!"), Turn("Colour?", "Red.")], "Shape?"), (LONG_HISTORY, "And then?")]
PUBLISHED_NUM_LAYERS = 28  # GLMBlock.__init__'s default; ChatGLMModel.get_layer does not pass its depth
MATCH = 2e-5  # largest relative_difference of the nets from the reference


# ---------------------------------------------------------------- reference (full sequence, no cache)

def published_rotary(dim: int, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [seq_len, dim] as the published RotaryEmbedding makes them in a model cast to
    `dtype`: inv_freq made in float32 and rounded to half at init, then cast with the model
    (a buffer); t, the einsum'd angles and cos/sin in that dtype. Torch's CPU half einsum and
    cos compute in float32 and round to half, as the GPU's do."""
    inv_freq = (1. / (10000 ** (torch.arange(0, dim, 2).float() / dim))).half().to(dtype)
    t = torch.arange(seq_len, dtype=inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def deployed_dtype(arch: GlmArch) -> torch.dtype:
    """The dtype of the published model whose rotary tables the nets of `arch` hold."""
    return getattr(torch, arch.rotary_angles)


def glm_reference(arch: GlmArch, tensors: dict, ids: list[int], rows: slice = slice(None),
                  image: tuple[int, np.ndarray] | None = None, *, rotary_dtype: torch.dtype = torch.float16,
                  block_num_layers: int = PUBLISHED_NUM_LAYERS) -> np.ndarray:
    """Logits [len(ids[rows]), V] of ChatGLM-6B v1 on `ids` (which hold [gMASK] and <sop>);
    `image` = (first row, embeddings [Q,H]) replaces those rows' word embeddings. The rotary
    tables are those of the model in `rotary_dtype`; `block_num_layers` sets alpha (only the
    tests that must tell a wrong alpha apart change it)."""
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
    # RotaryEmbedding(dim = D/2), called with seq_len = position_ids.max() + 1.
    seq_len = int(max(position.max(), block_position.max())) + 1
    cos, sin = (table.float() for table in published_rotary(d // 2, seq_len, rotary_dtype))

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

    alpha = (2 * block_num_layers) ** 0.5  # GLMBlock: self.num_layers, 28 unless passed
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


def reference_greedy(tensors, prompt: list[int], new_tokens: int, image=None, arch: GlmArch = TINY_GLM) -> list[int]:
    """Greedy decoding that recomputes the whole sequence for every new token."""
    ids = list(prompt)
    for _ in range(new_tokens):
        logits = glm_reference(arch, tensors, ids, slice(-1, None), image, rotary_dtype=deployed_dtype(arch))
        token = int(logits[0].argmax())
        if token == EOP_ID:
            break
        ids.append(token)
    return ids[len(prompt):]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The reference's tensors are tiny: handing them to a second thread costs more than the math."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Exported(NamedTuple):
    arch: GlmArch
    directory: Path
    tensors: dict


@pytest.fixture(scope="module")
def tokenizer():
    return stand_in_tokenizer()


@pytest.fixture(scope="module")
def family(tokenizer):
    return load_family("glm", tokenizer)


@pytest.fixture(scope="module", params=ROTARY_ANGLES)
def model(request, tmp_path_factory) -> Exported:
    """The tiny GLM exported with the rotary tables of the `.half()` or of the `.float()` model."""
    arch = dataclasses.replace(TINY_GLM, max_positions=SEQ, rotary_angles=request.param)
    out = tmp_path_factory.mktemp(f"tiny-glm-{request.param}")
    return Exported(arch, out, export_tiny_glm(out, seq_len=SEQ, arch=arch))


@pytest.fixture(scope="module")
def generator(model, family):
    return Generator(open_backend("onnx", model.directory, threads=1), family, read_table(model.directory))


def split_net_logits(gen: Generator, prompt: list[int], answer: list[int], image=None) -> np.ndarray:
    """Prefill the prompt, then decode the answer token by token (teacher forcing).
    Row r holds the logits that predict answer[r] (and, for the last row, what follows)."""
    rows = [gen.prefill(prompt, image)]
    for token in answer[:-1]:
        rows.append(gen.decode(token))
    return np.stack(rows)


def teacher_forced_reference(model: Exported, prompt: list[int], answer: list[int],
                             image: tuple[int, np.ndarray] | None = None, **changes) -> np.ndarray:
    """The reference's rows for split_net_logits(prompt, answer + [any token]); `changes` go
    to glm_reference (a rotary_dtype, a block_num_layers)."""
    settings = {"rotary_dtype": deployed_dtype(model.arch), **changes}
    return glm_reference(model.arch, model.tensors, prompt + answer, slice(len(prompt) - 1, None), image,
                         **settings)


def relative_difference(ours: np.ndarray, ref: np.ndarray) -> float:
    """Largest |ours - ref|, over the larger of 1 and the largest |ref|."""
    return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def image_rows(gen: Generator, count: int, seed: int = 1) -> tuple[np.ndarray, object]:
    embeds = np.random.default_rng(seed).standard_normal((1, count, TINY_GLM.hidden_size)).astype(np.float32)
    tensor = gen.backend.alloc(embeds.shape, np.float32)
    gen.backend.write(tensor, embeds)
    return embeds[0], tensor


def top_margin(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


# ---------------------------------------------------------------- the published choices: rotary tables, alpha

@pytest.mark.parametrize("mode", ROTARY_ANGLES)
@pytest.mark.parametrize("arch", [TINY_GLM, GlmArch()], ids=["tiny", "chatglm-6b"])
def test_rotary_tables_match_the_published_module(arch, mode):
    """All 2048 positions, to one unit in the last place of the mode's precision: cos/sin are
    correctly rounded here, float32 cos/sin rounded there."""
    arch = dataclasses.replace(arch, rotary_angles=mode)
    theirs = published_rotary(arch.head_dim // 2, SEQ, deployed_dtype(arch))
    for our, their in zip(rotary_tables(arch, SEQ), theirs):
        their = their.numpy()
        assert our.shape == their.shape == (SEQ, arch.head_dim // 2)
        assert (np.abs(our - their) <= np.spacing(np.abs(their))).all()


def test_config_records_both_choices(model):
    recorded = read_config(model.directory)["architecture"]
    assert recorded["rotary_angles"] == model.arch.rotary_angles
    assert recorded["alpha_layers"] == PUBLISHED_NUM_LAYERS != model.arch.num_layers
    assert model.arch.alpha == math.sqrt(2 * PUBLISHED_NUM_LAYERS)


# ---------------------------------------------------------------- (a) greedy tokens, (b) teacher-forced logits

@pytest.mark.parametrize("case", range(len(QUESTIONS)))
def test_greedy_tokens_and_logits_match_reference(model, family, generator, case):
    history, question = QUESTIONS[case]
    prompt = family.encode(history, question).ids
    ours = list(generator.generate(prompt, Sampler(GREEDY), NEW_TOKENS))
    theirs = reference_greedy(model.tensors, prompt, NEW_TOKENS, arch=model.arch)
    assert len(ours) == NEW_TOKENS
    assert ours == theirs

    # Teacher forcing along that path: every row close, every greedy choice won by far more.
    ref = teacher_forced_reference(model, prompt, ours)
    our = split_net_logits(generator, prompt, ours + [0])
    assert our.shape == ref.shape == (NEW_TOKENS + 1, TINY_GLM.vocab_size)
    # Measured ~1e-6. Tanh vs erf GELU, or an inv_freq not rounded to half, each move these
    # logits by ~3e-4: the bound tells those apart.
    difference = relative_difference(our, ref)
    assert difference < MATCH, difference
    assert top_margin(ref).min() > 100 * np.abs(our - ref).max()


@pytest.mark.parametrize("history", [[], LONG_HISTORY], ids=["short", "long"])
def test_image_rows_match_reference(model, family, generator, history):
    count = 4
    prompt = family.encode(history, "描述一下图片", image_tokens=count)
    embeds, tensor = image_rows(generator, count)
    image = ImageRows(tensor, prompt.image_start)
    ours = list(generator.generate(prompt.ids, Sampler(GREEDY), NEW_TOKENS, image))
    theirs = reference_greedy(model.tensors, prompt.ids, NEW_TOKENS, (prompt.image_start, embeds), model.arch)
    assert ours == theirs and len(ours) == NEW_TOKENS
    ref = teacher_forced_reference(model, prompt.ids, ours, (prompt.image_start, embeds))
    our = split_net_logits(generator, prompt.ids, ours + [0], image)
    assert relative_difference(our, ref) < MATCH
    # The picture's rows, not the placeholder ids, make these logits (measured: 0.2 apart
    # after a short history, 0.02 after the long one).
    blind = teacher_forced_reference(model, prompt.ids, ours)
    assert relative_difference(our, blind) > 100 * MATCH, relative_difference(our, blind)


def test_the_other_rotary_mode_or_a_depth_alpha_is_told_apart(model, family, generator, tokenizer):
    """Past position 1024 the nets match the reference of their own mode, and neither the other
    mode's reference nor one with alpha = sqrt(2 x depth): the parity above is no accident."""
    prompt = family.encode(*QUESTIONS[-1]).ids
    assert len(prompt) > 1024
    answer = tokenizer.encode("The end.", add_special_tokens=False)
    our = split_net_logits(generator, prompt, answer)
    other = next(mode for mode in ROTARY_ANGLES if mode != model.arch.rotary_angles)
    variants = {"own": {}, "other rotary": {"rotary_dtype": getattr(torch, other)},
                "depth alpha": {"block_num_layers": model.arch.num_layers}}
    differences = {name: relative_difference(our, teacher_forced_reference(model, prompt, answer[:-1], **change))
                   for name, change in variants.items()}
    # Measured: own ~5e-7, other rotary ~1e-3 (the tiny head's angles differ between the modes
    # by at most 0.06 rad, ChatGLM-6B's by up to 0.5), depth alpha ~1.
    assert differences["own"] < MATCH, differences
    assert min(differences["other rotary"], differences["depth alpha"]) > 25 * MATCH, differences


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
    # GLM v1 has no system role: a system prompt is a first line before the rounds, after the picture
    told = family.encode([], "What colour?", image_tokens=32, system="Be brief.")
    assert told.ids[told.image_start + 32:] == enc("</img>Be brief.\nQ:What colour?\nA:") + [GMASK_ID, SOP_ID]


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
