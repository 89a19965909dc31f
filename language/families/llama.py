"""The `llama` family: chat-template prompts, 1-D positions, causal attention."""
from __future__ import annotations

import numpy as np

from language.families.base import Prompt, Turn, causal_mask, decode_mask

IMAGE_MARK = "\x00<image>\x00"  # split point in the rendered template; never reaches the tokenizer
IMAGE_PLACEHOLDER_ID = 0  # any id: these rows are overwritten by the image's embeddings


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
        """The chat template; an image goes at the start of the latest user message, then a newline.

        The latest, not the first: the question then sits right after the picture, as in
        training, whatever came before (measured on the default model: yes/no follow-ups after
        one turn were answered "yes" every time with the picture in the first message)."""
        messages = [] if system is None else [{"role": "system", "content": system}]
        for turn in history:
            messages += [{"role": "user", "content": turn.question},
                         {"role": "assistant", "content": turn.answer}]
        messages.append({"role": "user", "content": question})
        if image_tokens:
            messages[-1] = {"role": "user", "content": IMAGE_MARK + "\n" + question}
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        before, *after = text.split(IMAGE_MARK)
        ids = self.tokenizer.encode(before, add_special_tokens=False)
        if not after:
            return Prompt(ids)
        start = len(ids)
        ids += [IMAGE_PLACEHOLDER_ID] * image_tokens + self.tokenizer.encode(after[0], add_special_tokens=False)
        return Prompt(ids, start)

    def prefill_positions(self, length: int, width: int) -> np.ndarray:
        return np.arange(width, dtype=np.int32)[None]

    def prefill_mask(self, length: int, width: int) -> np.ndarray:
        return causal_mask(length, width)

    def decode_position(self, index: int, prompt_length: int) -> np.ndarray:
        return np.array([[index]], dtype=np.int32)

    def decode_mask(self, filled: int, cache_length: int) -> np.ndarray:
        return decode_mask(filled, cache_length)

    def postprocess(self, text: str) -> str:
        return text.strip()
