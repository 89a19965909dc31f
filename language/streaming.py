"""Turning a growing list of token ids into text deltas without splitting a character."""
from __future__ import annotations

REPLACEMENT = "\ufffd"


class TextStream:
    """Decodes all tokens so far and emits only the new, complete part.

    Byte-level tokenizers can cut a multi-byte character across tokens; the decoded text
    then ends in U+FFFD until the rest arrives, so that tail is held back.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith(REPLACEMENT) or not text.startswith(self.text):
            return ""
        delta, self.text = text[len(self.text):], text
        return delta

    def flush(self) -> str:
        """Whatever is left at the end, even an incomplete character."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        delta = text[len(self.text):] if text.startswith(self.text) else ""
        self.text = text
        return delta
