"""The `glm` family: ChatGLM-6B (GLM v1) and VisualGLM-6B prompts, 2-D positions, a
bidirectional prompt.

Prompt (VisualGLM-6B's chat, THUDM/VisualGLM-6B model/chat.py and the HF visualglm-6b
`build_inputs_with_image`):

    [<img> Q placeholder rows </img>] 问：{q1}\n答：{a1}\n ... 问：{query}\n答： [gMASK] <sop>

with `Q:` / `A:` instead of `问：` / `答：` when the question has no Chinese character (the
published web demo's `is_chinese` switch). Without an image there is no `<img></img>`
(the HF chat). "<img>" and the rest are tokenized separately, as published, with the
image's placeholder rows between them; the vision net's output overwrites those rows.

Positions and mask (modeling_chatglm.py get_position_ids / get_masks): the context is
every token before <sop>, [gMASK] included. Context tokens see the whole context (not
<sop> or later); <sop> and the answer are causal. Position ids are 2-D, [1,2,L]:
row 0 counts 0..ctx-1 over the context, then stays at the [gMASK] position for <sop> and
every generated token; row 1 is 0 over the context, then 1 (<sop>), 2, 3, ...

The tokenizer is anything with encode(text, add_special_tokens=False) / decode; the
special ids are ChatGLM-6B's own (config.json: gmask 130001, bos <sop> 130004,
eos <eop> 130005), so a stand-in tokenizer without those tokens works too; see GlmFamily
for the real one.
"""
from __future__ import annotations

import re

import numpy as np

from language.families.base import Prompt, Turn, causal_mask, decode_mask

GMASK_ID = 130001
SOP_ID = 130004  # bos
EOP_ID = 130005  # eos: the end of an answer
CJK = re.compile("[\u4e00-\u9fa5]")  # VisualGLM-6B infer_util.is_chinese
IMAGE_OPEN, IMAGE_CLOSE = "<img>", "</img>"


def is_chinese(text: str) -> bool:
    return CJK.search(text) is not None


def glm_positions(length: int, width: int) -> np.ndarray:
    """[1,2,width] position ids for a prompt of `length` tokens ending in [gMASK] <sop>."""
    ctx, mask_position = length - 1, length - 2
    rows = np.zeros((2, width), dtype=np.int32)
    rows[0, :ctx] = np.arange(ctx)
    rows[0, ctx:length] = mask_position
    rows[1, ctx:length] = np.arange(1, length - ctx + 1)
    return rows[None]  # padding columns stay 0: any valid position, never attended


def glm_mask(length: int, width: int) -> np.ndarray:
    """Additive [1,1,width,width]: everyone sees the context (tokens before <sop>), the rest is
    causal, padding columns are never seen."""
    return causal_mask(length, width, seen_by_all=length - 1)


class GlmFamily:
    """ChatGLM-6B / VisualGLM-6B.

    The real tokenizer is the checkpoint's `ice_text.model` (sentencepiece), loaded without
    remote code by language/tokenizers/sentencepiece_chatglm.py (GlmV1Tokenizer); any tokenizer with
    `encode(text, add_special_tokens=False)` / `decode` works, as long as its "[gMASK]" /
    "<sop>" / "<eop>" map to the ids below (checked when it knows them).
    """

    name = "glm"

    def __init__(self, tokenizer, gmask_id: int = GMASK_ID, sop_id: int = SOP_ID, eop_id: int = EOP_ID):
        self.tokenizer = tokenizer
        self.gmask_id, self.sop_id, self.eop_id = gmask_id, sop_id, eop_id
        for token, expected in (("[gMASK]", gmask_id), ("<sop>", sop_id), ("<eop>", eop_id)):
            found = _token_id(tokenizer, token)
            if found is not None and found != expected:
                raise ValueError(f"the tokenizer maps {token} to {found}, the GLM model expects {expected}: "
                                 "wrong tokenizer for this model")
        self.stop_ids = frozenset({eop_id})
        unk = getattr(tokenizer, "unk_token_id", None)
        self.placeholder_id = unk if isinstance(unk, int) else 0  # HF visualglm uses <unk>; overwritten anyway

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def render(self, history: list[Turn], question: str, system: str | None = None) -> str:
        """The conversation as text, without the image and the special tokens.

        GLM v1 has no system role: a system prompt is a plain first line, before the rounds."""
        q, a = ("问：", "答：") if is_chinese(question) else ("Q:", "A:")
        text = f"{system}\n" if system else ""
        text += "".join(f"{q}{turn.question}\n{a}{turn.answer}\n" for turn in history)
        return text + f"{q}{question}\n{a}"

    def encode(self, history: list[Turn], question: str, image_tokens: int = 0, system: str | None = None) -> Prompt:
        text = self.render(history, question, system)
        tail = [self.gmask_id, self.sop_id]
        if not image_tokens:
            return Prompt(self._encode(text) + tail)
        ids = self._encode(IMAGE_OPEN)
        start = len(ids)
        ids += [self.placeholder_id] * image_tokens + self._encode(IMAGE_CLOSE + text) + tail
        return Prompt(ids, start)

    def prefill_positions(self, length: int, width: int) -> np.ndarray:
        return glm_positions(length, width)

    def prefill_mask(self, length: int, width: int) -> np.ndarray:
        return glm_mask(length, width)

    def decode_position(self, index: int, prompt_length: int) -> np.ndarray:
        """Token at absolute `index` after a prompt ending in [gMASK] <sop>: row 0 stays at the
        [gMASK] position, row 1 counts on from <sop>'s 1."""
        return np.array([[[prompt_length - 2], [index - prompt_length + 2]]], dtype=np.int32)

    def decode_mask(self, filled: int, cache_length: int) -> np.ndarray:
        return decode_mask(filled, cache_length)

    def postprocess(self, text: str) -> str:
        return process_response(text)


_PUNCTUATION = [(",", "，"), ("!", "！"), (":", "："), (";", "；"), ("?", "？")]


def process_response(text: str) -> str:
    """ChatGLM-6B's process_response: strip, fill in the training date, and full-width
    punctuation where an ASCII mark touches a Chinese character."""
    text = text.strip().replace("[[训练时间]]", "2023年")
    for ascii_mark, wide in _PUNCTUATION:
        mark = re.escape(ascii_mark)
        text = re.sub(r"([\u4e00-\u9fff])" + mark, r"\g<1>" + wide, text)
        text = re.sub(mark + r"([\u4e00-\u9fff])", wide + r"\g<1>", text)
    return text


def _token_id(tokenizer, token: str) -> int | None:
    """The tokenizer's id for a special token, or None when it does not know it."""
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is None:
        return None
    try:
        found = convert(token)
    except (KeyError, ValueError, TypeError):
        return None
    if not isinstance(found, int) or found == getattr(tokenizer, "unk_token_id", None):
        return None
    return found
