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


class StopAt:
    """A TextStream that ends before the first of some stop strings.

    Text that could still turn into a stop string is held back, so no part of one is ever
    emitted; `stopped` turns true once one is found.
    """

    def __init__(self, stream: TextStream, stops: tuple[str, ...] = ()):
        self.stream, self.stops = stream, tuple(s for s in stops if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.emitted = 0
        self.stopped = False

    @property
    def text(self) -> str:
        return self._cut(self.stream.text)

    def _cut(self, text: str) -> str:
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            return text[:min(found)]
        return text

    def _emit(self, upto: int) -> str:
        text = self.text
        upto = len(text) if self.stopped else max(upto, self.emitted)
        delta, self.emitted = text[self.emitted:upto], upto
        return delta

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.stream.push(token_id)
        return self._emit(len(self.stream.text) - self.hold)

    def flush(self) -> str:
        if not self.stopped:
            self.stream.flush()
        return self._emit(len(self.stream.text))
