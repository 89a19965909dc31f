"""The ChatGLM-6B (v1) and ChatGLM3-6B tokenizer wrappers over tiny sentencepiece models
trained here, laid out like the real ones:

- v1: the pieces the real ice_text.model carries ("<n>", "<|tab|>", "<|blank_2|>".."<|blank_80|>",
  byte fallback), unused filler pieces, then the eight special pieces as control pieces at
  130000..130007 -- so with THUDM/visualglm-6b's tokenizer_config.json (num_image_tokens 0)
  [gMASK] is 130001, <sop> 130004, <eop> 130005, as in its config.json.
- v3: a byte-fallback model padded to 64789 pieces, so the appended specials get ChatGLM3's
  ids ([gMASK] 64790 ...).

The padding is appended to the serialized model as extra `pieces` entries (protobuf
concatenates repeated fields), so no protobuf package is needed.
"""
from __future__ import annotations

import io
import json
import random
import struct

import numpy as np
import pytest
import sentencepiece

from language import tokenizers
from language.families.base import Turn
from language.families.chatglm3 import SPECIAL_IDS as V3_IDS
from language.families.chatglm3 import Chatglm3Family
from language.families.glm import GlmFamily
from language.streaming import TextStream
from language.tokenizers import load_tokenizer
from language.tokenizers.sentencepiece_chatglm import (V1_SPECIAL_TOKENS, Chatglm3Tokenizer, GlmV1Tokenizer, blank_piece,
                                                chatglm_kind, load_chatglm_tokenizer)

UNUSED, CONTROL = 5, 3  # sentencepiece ModelProto.SentencePiece.Type
V1_SPECIALS_AT = 130000  # [MASK] in the real ice_text.model; [gMASK] = 130001
V3_PIECES = 64789  # ChatGLM3's tokenizer.model

# THUDM/visualglm-6b's tokenizer_config.json (huggingface.co/THUDM/visualglm-6b, "Update names").
VISUALGLM_CONFIG = {
    "name_or_path": "THUDM/visualglm-6b", "bos_token": "<sop>", "eos_token": "<eop>", "end_token": "</s>",
    "gmask_token": "[gMASK]", "mask_token": "[MASK]", "pad_token": "<pad>", "unk_token": "<unk>",
    "remove_space": False, "do_lower_case": False, "tokenizer_class": "ChatGLMTokenizer", "num_image_tokens": 0,
    "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
}
CHATGLM3_CONFIG = {"tokenizer_class": "ChatGLMTokenizer", "padding_side": "left", "remove_space": False,
                   "do_lower_case": False, "clean_up_tokenization_spaces": False,
                   "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}

ROUND_TRIPS = [
    "hello world",
    "the cat sat on the mat.\nA second line\n\nand a third after an empty one\n",
    "def f(x):\n\treturn x\n\t\tdeeper",
    "two  three   seventy-nine" + " " * 79 + "eighty" + " " * 80 + "eighty-one" + " " * 81 + "two hundred" + " " * 200 + "end",
    "你好，世界！这是一张图片。\n图片里有一只猫。",
    "emoji 😀 and 🐱🐶 mixed with 中文 and a flag 🇨🇳 ok",
    "Q:What colour is the sky?\nA:blue  and\tgrey ✓",
    "rare chars ß Ω ж 한국어 ǅ",
]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _piece(text: str, kind: int) -> bytes:
    """One ModelProto `pieces` entry (field 1): SentencePiece{piece: 1, score: 2, type: 3}."""
    raw = text.encode()
    body = b"\x0a" + _varint(len(raw)) + raw + b"\x15" + struct.pack("<f", 0.0) + b"\x18" + _varint(kind)
    return b"\x0a" + _varint(len(body)) + body


def _corpus() -> list[str]:
    rng = random.Random(0)
    words = ("the a picture of cat dog sky blue red green what colour is in this image there are two "
             "hello world model answer question shape circle square triangle small large").split()
    chinese = "你好世界这是一张图片里有只猫狗天空蓝色红色绿色什么颜色形状圆形方形三角小大问答模型的了吗"
    lines = []
    for _ in range(400):
        english = " ".join(rng.choice(words) for _ in range(rng.randint(3, 10)))
        han = "".join(rng.choice(chinese) for _ in range(rng.randint(2, 8)))
        lines.append(f"{english}, {han}。" if rng.random() < 0.5 else f"{han}：{english}?")
    return lines


def _train(vocab_size: int, **options) -> bytes:
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        minloglevel=2, num_threads=1, **options)
    return model.getvalue()


def _piece_count(model: bytes) -> int:
    return sentencepiece.SentencePieceProcessor(model_proto=model).get_piece_size()


V1_WHITESPACE_PIECES = ["<n>", "<|tab|>"] + [blank_piece(n) for n in range(2, 81)]


@pytest.fixture(scope="module")
def v1_model() -> bytes:
    """Real layout: text pieces, filler up to 130000, the eight special pieces (control)."""
    model = _train(700, user_defined_symbols=V1_WHITESPACE_PIECES)
    filler = b"".join(_piece(f"<filler_{i}>", UNUSED) for i in range(_piece_count(model), V1_SPECIALS_AT))
    return model + filler + b"".join(_piece(token, CONTROL) for token in V1_SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def v1_small_model() -> bytes:
    """No filler: the special pieces sit wherever training put them (right after <pad>)."""
    return _train(700, control_symbols=list(V1_SPECIAL_TOKENS), user_defined_symbols=V1_WHITESPACE_PIECES)


@pytest.fixture(scope="module")
def v3_model() -> bytes:
    model = _train(600)
    return model + b"".join(_piece(f"<filler_{i}>", UNUSED) for i in range(_piece_count(model), V3_PIECES))


def _folder(root, name: str, files: dict[str, bytes], config: dict | None):
    folder = root / name
    folder.mkdir()
    for file, data in files.items():
        (folder / file).write_bytes(data)
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory, v1_model, v3_model):
    root = tmp_path_factory.mktemp("token_config")
    return {"v1": _folder(root, "visualglm-6b", {"ice_text.model": v1_model}, VISUALGLM_CONFIG),
            "v3": _folder(root, "chatglm3-6b", {"tokenizer.model": v3_model}, CHATGLM3_CONFIG),
            "root": root}


@pytest.fixture(scope="module")
def v1(folders) -> GlmV1Tokenizer:
    return GlmV1Tokenizer.from_folder(folders["v1"])


@pytest.fixture(scope="module")
def v3(folders) -> Chatglm3Tokenizer:
    return Chatglm3Tokenizer.from_folder(folders["v3"])


# ------------------------------------------------------------------ ChatGLM-6B (v1)

@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_v1_round_trip(v1, text):
    ids = v1.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert v1.decode(ids) == text
    assert v1.decode(ids, skip_special_tokens=True) == text


def test_v1_whitespace_becomes_its_pieces(v1):
    piece = v1.convert_tokens_to_ids
    assert piece("<n>") in v1.encode("a\nb") and "\n" not in "".join(v1.tokenize("a\nb"))
    assert piece("<|tab|>") in v1.encode("a\tb")
    assert v1.tokenize("a     b").count("<|blank_5|>") == 1
    # longest first, at most 80: 81 spaces are <|blank_80|> and one plain space
    tokens = v1.tokenize("a" + " " * 81 + "b")
    assert "<|blank_80|>" in tokens and not any(t.startswith("<|blank_") and t != "<|blank_80|>" for t in tokens)
    assert v1.decode([piece("<n>"), piece("<|tab|>"), piece("<|blank_3|>")]) == "\n\t   "


def test_v1_dummy_prefix(v1):
    with_prefix = v1.tokenize("hello world")
    without = v1.tokenize("hello world", add_dummy_prefix=False)
    assert with_prefix[0].startswith("▁") and not without[0].startswith("▁")
    assert v1.decode(v1.encode("hello world", add_dummy_prefix=False)) == "hello world"
    assert v1.encode("\nx", add_dummy_prefix=False)[0] == v1.convert_tokens_to_ids("<n>")


def test_v1_special_ids_are_the_real_ones(v1):
    ids = {token: v1.convert_tokens_to_ids(token) for token in V1_SPECIAL_TOKENS}
    assert ids == {token: V1_SPECIALS_AT + i for i, token in enumerate(V1_SPECIAL_TOKENS)}
    assert (v1.gmask_token_id, v1.bos_token_id, v1.eos_token_id, v1.mask_token_id) == (130001, 130004, 130005, 130000)
    assert v1.unk_token_id == 0 and v1.pad_token_id == 3 and v1.end_token_id == 2
    assert v1.vocab_size == len(v1) == 130008
    assert v1.encode("hi", add_special_tokens=True)[-2:] == [130001, 130004]
    assert v1.convert_ids_to_tokens([130001, 130004]) == ["[gMASK]", "<sop>"]


def test_v1_decode_leaves_out_special_and_foreign_ids(v1):
    text = "图片里有一只猫"
    ids = v1.encode(text)
    noisy = [130001, 130004] + ids + [130005, 3, 130400, 130527]  # specials, <pad>, padded rows of the nets
    assert v1.decode(noisy) == text
    assert v1.decode(np.array(noisy, dtype=np.int64)) == text
    assert v1.decode([0]) != "" and v1.decode([0], skip_special_tokens=True) == ""  # <unk> only when skipping
    assert v1.decode([]) == "" and v1.decode(ids[0]) == v1.decode(ids[:1])
    assert v1.decode(v1.encode("yes , no .")) == "yes , no ."
    assert v1.decode(v1.encode("yes , no ."), clean_up_tokenization_spaces=True) == "yes, no."


def test_v1_special_names_in_text_stay_text(v1):
    """Special pieces are control pieces: "[gMASK]" typed by a user is plain text, as published."""
    ids = v1.encode("say [gMASK] <sop>")
    assert 130001 not in ids and 130004 not in ids
    assert v1.decode(ids) == "say [gMASK] <sop>"


def test_v1_image_offset(v1_small_model, tmp_path):
    """num_image_tokens shifts every text id; lower ids are <image_N> (the first ChatGLM-6B
    release, 20000 icetk image ids); the special ids come from the model's pieces."""
    (tmp_path / "ice_text.model").write_bytes(v1_small_model)
    sp = sentencepiece.SentencePieceProcessor(model_proto=v1_small_model)
    plain, shifted = GlmV1Tokenizer(tmp_path / "ice_text.model"), GlmV1Tokenizer(tmp_path / "ice_text.model", 20000)
    assert plain.gmask_token_id == sp.piece_to_id("[gMASK]") and shifted.gmask_token_id == 20000 + plain.gmask_token_id
    assert shifted.eos_token_id - shifted.gmask_token_id == 4  # [gMASK] [sMASK] <unused_0> <sop> <eop>
    text = ROUND_TRIPS[1]
    assert shifted.encode(text) == [i + 20000 for i in plain.encode(text)]
    assert shifted.decode([5, 19999] + shifted.encode(text)) == text  # image ids read as nothing
    assert shifted.convert_tokens_to_ids("<image_5>") == 5 and shifted.convert_ids_to_tokens(5) == "<image_5>"
    assert shifted.vocab_size == 20000 + sp.get_piece_size()


# ------------------------------------------------------------------ ChatGLM3-6B

@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_v3_round_trip(v3, text):
    ids = v3.encode(text)
    assert v3.decode(ids) == text
    assert max(ids) < V3_PIECES


def test_v3_special_ids_are_the_real_ones(v3):
    assert {token: v3.convert_tokens_to_ids(token) for token in V3_IDS} == V3_IDS
    assert v3.special_tokens == V3_IDS and v3.gmask_token_id == 64790
    assert (v3.unk_token_id, v3.pad_token_id, v3.bos_token_id, v3.eos_token_id) == (0, 0, 1, 2)
    assert v3.vocab_size == len(v3) == 64798
    assert v3.get_command("<|user|>") == 64795 and v3.get_command("<eos>") == 2
    assert v3.encode("hi", add_special_tokens=True)[:2] == [64790, 64792]
    # "\n" is the dummy-prefix piece and a byte piece, as in the published [30910, 13]
    assert v3.tokenize("\n") == ["▁", "<0x0A>"]


def test_v3_decode_specials(v3):
    hi, there = v3.encode("hi"), v3.encode("there")
    ids = [64795] + hi + [64796] + there + [2, 65000]
    assert v3.decode(ids) == "<|user|>hi<|assistant|>there"  # each run decoded alone, as published
    assert v3.decode(ids, skip_special_tokens=True) == "hi there"  # one run: "▁there" keeps its space
    assert v3.convert_ids_to_tokens([64790, 64797]) == ["[gMASK]", "<|observation|>"]
    # role names typed in text are not special tokens (published default: encode_special_tokens=False)
    assert 64795 not in v3.encode("<|user|>")


# ------------------------------------------------------------------ streaming

@pytest.mark.parametrize("which", ["v1", "v3"])
def test_streaming_gives_the_text_once(which, v1, v3):
    tokenizer = v1 if which == "v1" else v3
    text = "第一行 😀\n\tsecond  line 🐱🐶 end"
    stream, deltas = TextStream(tokenizer), []
    for token in tokenizer.encode(text):
        delta = stream.push(token)
        assert "\ufffd" not in delta
        deltas.append(delta)
    deltas.append(stream.flush())
    assert "".join(deltas) == text


# ------------------------------------------------------------------ folders

def test_load_tokenizer_picks_the_wrapper(folders, monkeypatch):
    assert isinstance(load_tokenizer(str(folders["v1"])), GlmV1Tokenizer)  # a folder path
    assert isinstance(load_tokenizer(str(folders["v3"])), Chatglm3Tokenizer)
    monkeypatch.setattr(tokenizers, "TOKEN_CONFIG_DIR", folders["root"])  # a name under token_config/
    assert isinstance(load_tokenizer("visualglm-6b"), GlmV1Tokenizer)
    assert isinstance(load_tokenizer("chatglm3-6b"), Chatglm3Tokenizer)
    with pytest.raises(FileNotFoundError, match="no tokenizer 'nope'.*chatglm3-6b"):
        load_tokenizer("nope")


def test_other_folders_keep_the_transformers_path():
    folder = tokenizers.TOKEN_CONFIG_DIR / "smollm2-135m-instruct"
    assert chatglm_kind(folder) is None and load_chatglm_tokenizer(folder) is None


def test_wrong_folders_fail_clearly(tmp_path, v1_model, v3_model):
    bare = _folder(tmp_path, "bare", {}, VISUALGLM_CONFIG)
    with pytest.raises(FileNotFoundError, match="neither ice_text.model .* nor tokenizer.model"):
        load_tokenizer(str(bare))
    placeholder = _folder(tmp_path, "placeholder", {"ice_text.model": b"placeholder\n"}, VISUALGLM_CONFIG)
    with pytest.raises(ValueError, match="is not a sentencepiece model"):
        load_tokenizer(str(placeholder))
    other = _folder(tmp_path, "other", {"ice_text.model": v3_model}, VISUALGLM_CONFIG)  # no special pieces
    with pytest.raises(ValueError, match=r"not ChatGLM-6B's ice_text.model.*\[gMASK\]"):
        load_tokenizer(str(other))
    swapped = _folder(tmp_path, "swapped", {"tokenizer.model": v1_model}, CHATGLM3_CONFIG)  # has [gMASK] inside
    with pytest.raises(ValueError, match=r"already has \[gMASK\].*not ChatGLM3's"):
        load_tokenizer(str(swapped))


# ------------------------------------------------------------------ families

def test_glm_family_takes_the_v1_wrapper(v1):
    family = GlmFamily(v1)  # checks [gMASK] / <sop> / <eop> against 130001 / 130004 / 130005
    history = [Turn("图片里有什么？", "一只猫。")]
    prompt = family.encode(history, "它是什么颜色？", image_tokens=4)
    ids = prompt.ids
    assert ids[-2:] == [130001, 130004]
    assert ids[:prompt.image_start] == v1.encode("<img>")
    assert ids[prompt.image_start:prompt.image_start + 4] == [v1.unk_token_id] * 4
    text = v1.decode(ids[prompt.image_start + 4:])
    assert text == "</img>问：图片里有什么？\n答：一只猫。\n问：它是什么颜色？\n答："
    assert family.stop_ids == {v1.eos_token_id}


def test_chatglm3_family_takes_the_v3_wrapper(v3):
    family = Chatglm3Family(v3)  # checks all nine special ids and eos 2
    ids = family.encode([Turn("hi", "hello")], "what is this?").ids
    newline = v3.encode("\n")
    assert ids == ([64790, 64792, 64795] + newline + v3.encode("hi") + [64796] + newline + v3.encode("hello")
                   + [64795] + newline + v3.encode("what is this?") + [64796])
    # "\n" and the content are encoded apart, each with its dummy-prefix "▁": one run per role
    assert v3.decode(ids) == "[gMASK]sop<|user|>\n hi<|assistant|>\n hello<|user|>\n what is this?<|assistant|>"


def test_families_refuse_the_wrong_tokenizer(v1, v3, folders, tmp_path):
    with pytest.raises(ValueError, match="wrong tokenizer"):
        GlmFamily(v3)  # [gMASK] is 64790
    with pytest.raises(ValueError, match="wrong tokenizer"):
        Chatglm3Family(v1)  # [gMASK] is 130001
    # the first ChatGLM-6B release's offset does not fit VisualGLM-6B's ids
    first_release = _folder(tmp_path, "chatglm-6b-first", {"ice_text.model": (folders["v1"] / "ice_text.model").read_bytes()},
                            VISUALGLM_CONFIG | {"num_image_tokens": 20000})
    with pytest.raises(ValueError, match="maps \\[gMASK\\] to 150001"):
        GlmFamily(load_tokenizer(str(first_release)))
