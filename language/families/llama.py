"""The `llama` family: chat-template prompts, 1-D positions, causal attention."""
from __future__ import annotations

import numpy as np

from language.families.base import Turn, causal_mask, decode_mask


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

    def encode(self, history: list[Turn], question: str) -> list[int]:
        messages = []
        for turn in history:
            messages += [{"role": "user", "content": turn.question},
                         {"role": "assistant", "content": turn.answer}]
        messages.append({"role": "user", "content": question})
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

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
