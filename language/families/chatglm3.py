"""The `chatglm3` family: ChatGLM3-6B prompts, 1-D positions, causal attention, text only.

Prompt (THUDM/chatglm3-6b tokenization_chatglm.py, `build_chat_input`; the same file ships
in Sophgo's LLM-TPU models/ChatGLM3/support/token_config/):

    [gMASK] sop  {<|role|> "\\n" content}...  <|user|> "\\n" {question}  <|assistant|>

Every message is its role token, then `encode(metadata + "\\n")` (metadata is empty in plain
chat), then `encode(content)` -- the two pieces tokenized separately, as published. Earlier
turns are a <|user|> and an <|assistant|> message each; an optional system prompt comes first
as a <|system|> message. The answer starts with the assistant's metadata line (empty: the
model writes "\\n" first), which `postprocess` removes, as `process_response` does.

Special ids (SPTokenizer appends them after the sentencepiece vocabulary of 64789 pieces):
[MASK] 64789, [gMASK] 64790, [sMASK] 64791, sop 64792, eop 64793, <|system|> 64794,
<|user|> 64795, <|assistant|> 64796, <|observation|> 64797. A published encoding,
build_chat_input("如何准备数据分析师面试？") = [64790, 64792, 64795, 30910, 13, ..., 64796],
shows the order and "\\n" = [30910, 13]. Generation stops at </s> (2), <|user|> or
<|observation|> (modeling_chatglm.py `chat`: eos_token_id list).

Positions are 0..L-1 (get_position_ids) and the mask is causal (get_masks): the llama
layout. ChatGLM3's rotary embedding covers only the first half of each head, interleaved in
pairs -- that lives in the nets (export/chatglm3_layout.py), not here.

The tokenizer is anything with encode(text, add_special_tokens=False) and decode(ids, ...):
THUDM's ChatGLMTokenizer (sentencepiece `tokenizer.model`, loaded with trust_remote_code) or
a stand-in (tests/fixtures/tiny_chatglm3.py). When it knows the special tokens, their ids are
checked against the ones above.
"""
from __future__ import annotations

import numpy as np

from language.families.base import Prompt, Turn, causal_mask, decode_mask
from language.families.glm import _token_id

SPECIAL_IDS = {"[MASK]": 64789, "[gMASK]": 64790, "[sMASK]": 64791, "sop": 64792, "eop": 64793,
               "<|system|>": 64794, "<|user|>": 64795, "<|assistant|>": 64796, "<|observation|>": 64797}
EOS_ID = 2  # </s>
GMASK_ID, SOP_ID = SPECIAL_IDS["[gMASK]"], SPECIAL_IDS["sop"]
SYSTEM_ID, USER_ID = SPECIAL_IDS["<|system|>"], SPECIAL_IDS["<|user|>"]
ASSISTANT_ID, OBSERVATION_ID = SPECIAL_IDS["<|assistant|>"], SPECIAL_IDS["<|observation|>"]
STOP_IDS = frozenset({EOS_ID, USER_ID, OBSERVATION_ID})


class Chatglm3Family:
    """ChatGLM3-6B chat, text only."""

    name = "chatglm3"

    def __init__(self, tokenizer, system: str | None = None):
        self.tokenizer = tokenizer
        self.system = system
        for token, expected in SPECIAL_IDS.items():
            found = _token_id(tokenizer, token)
            if found is not None and found != expected:
                raise ValueError(f"the tokenizer maps {token} to {found}, ChatGLM3 expects {expected}: "
                                 "wrong tokenizer for this model")
        eos = getattr(tokenizer, "eos_token_id", None)
        if isinstance(eos, int) and eos != EOS_ID:
            raise ValueError(f"the tokenizer's end of text is {eos}, ChatGLM3's is {EOS_ID}: wrong tokenizer")
        self.stop_ids = STOP_IDS

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _message(self, role_id: int, content: str, metadata: str = "") -> list[int]:
        return [role_id] + self._encode(metadata + "\n") + self._encode(content)

    def encode(self, history: list[Turn], question: str, image_tokens: int = 0, system: str | None = None) -> Prompt:
        if image_tokens:
            raise ValueError("ChatGLM3 is a text-only model: it has no place for image rows "
                             f"(asked for {image_tokens})")
        ids = [GMASK_ID, SOP_ID]
        system = self.system if system is None else system
        if system:
            ids += self._message(SYSTEM_ID, system)
        for turn in history:
            ids += self._message(USER_ID, turn.question) + self._message(ASSISTANT_ID, turn.answer)
        ids += self._message(USER_ID, question) + [ASSISTANT_ID]
        return Prompt(ids)

    def prefill_positions(self, length: int, width: int) -> np.ndarray:
        positions = np.zeros((1, width), dtype=np.int32)  # padding at 0, as the vendor demos do
        positions[0, :length] = np.arange(length)
        return positions

    def prefill_mask(self, length: int, width: int) -> np.ndarray:
        return causal_mask(length, width)

    def decode_position(self, index: int, prompt_length: int) -> np.ndarray:
        return np.array([[index]], dtype=np.int32)

    def decode_mask(self, filled: int, cache_length: int) -> np.ndarray:
        return decode_mask(filled, cache_length)

    def postprocess(self, text: str) -> str:
        return process_response(text)


def process_response(text: str) -> str:
    """ChatGLM3's process_response for plain chat: the first line is the assistant's metadata
    (empty in chat); drop it, strip, fill in the training date. An answer whose metadata line
    is not empty (a tool call) is returned stripped, metadata included."""
    metadata, content = text.split("\n", 1) if "\n" in text else ("", text)
    if metadata.strip():
        return text.strip()
    return content.strip().replace("[[训练时间]]", "2023年")
