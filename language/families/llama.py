"""The `llama` family: chat-template prompts, 1-D positions, causal attention."""
from __future__ import annotations

import re

import numpy as np

from language.families.base import Prompt, Turn, causal_mask, decode_mask, history_mask

IMAGE_PLACEHOLDER_ID = 0  # any id: these rows are overwritten by the image's embeddings


def _marks(count: int, contents: list[str]) -> list[str]:
    """`count` distinct place-holders, none of which occurs in any message: split points in the
    rendered template that never reach the tokenizer."""
    salt = 0
    while True:
        marks = [f"\x00mark{salt}.{n}\x00" for n in range(count)]
        if not any(mark in text for mark in marks for text in contents):
            return marks
        salt += 1


class LlamaFamily:
    name = "llama"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        stops = {tokenizer.eos_token_id}
        for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != tokenizer.unk_token_id:
                stops.add(token_id)
        stops.discard(None)
        self.stop_ids = frozenset(stops)

    def encode(self, history: list[Turn], question: str, image_tokens: int = 0, system: str | None = None) -> Prompt:
        """The chat template; an image goes at the start of the first user message, then a newline.

        The first, and it stays there: a follow-up's prompt then begins with the earlier
        conversation unchanged, so the KV rows of a conversation (picture included) serve its
        next turn. (The shipped default tower was trained on single questions only, with the
        picture and the question in the same message; training/train_vision.py now lays out
        its conversations this way.)

        What people wrote is encoded as text only: a chat-template token or the image marker
        typed into a question stays plain text (the template is rendered with a mark in place of
        each message, and only the template around them is read for special tokens)."""
        contents = ([] if system is None else [system]) + [text for turn in history
                                                            for text in (turn.question, turn.answer)] + [question]
        *marks, image_mark = _marks(len(contents) + 1, contents)
        roles = (["system"] if system is not None else []) + ["user", "assistant"] * len(history) + ["user"]
        messages = [{"role": role, "content": mark} for role, mark in zip(roles, marks)]
        if image_tokens:
            first = roles.index("user")
            messages[first]["content"] = image_mark + "\n" + marks[first]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids, image_start = [], None
        for piece in re.split(f"({'|'.join(map(re.escape, [image_mark, *marks]))})", text):
            if piece == image_mark:
                image_start = len(ids)
                ids += [IMAGE_PLACEHOLDER_ID] * image_tokens
            elif piece in marks:
                ids += self.tokenizer.encode(contents[marks.index(piece)], add_special_tokens=False,
                                             split_special_tokens=True)
            elif piece:
                ids += self.tokenizer.encode(piece, add_special_tokens=False)
        return Prompt(ids, image_start)

    def prefill_positions(self, length: int, width: int) -> np.ndarray:
        return np.arange(width, dtype=np.int32)[None]

    def prefill_mask(self, length: int, width: int) -> np.ndarray:
        return causal_mask(length, width)

    def history_prefill_positions(self, start: int, width: int) -> np.ndarray:
        return np.arange(start, start + width, dtype=np.int32)[None]

    def history_prefill_mask(self, filled: int, history_rows: int, length: int, width: int) -> np.ndarray:
        return history_mask(filled, history_rows, length, width)

    def decode_position(self, index: int, prompt_length: int) -> np.ndarray:
        return np.array([[index]], dtype=np.int32)

    def decode_mask(self, filled: int, cache_length: int) -> np.ndarray:
        return decode_mask(filled, cache_length)

    def postprocess(self, text: str) -> str:
        return text.strip()
