"""A Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, chat_template.jinja)
read with the `tokenizers` library and jinja2, offering the part of transformers' tokenizer
API the families use. Importing transformers for it would cost a process about 210 MB.

The chat template is rendered as transformers renders it: a sandboxed jinja2 environment with
trim_blocks and lstrip_blocks, `raise_exception`, and the special tokens as variables.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json gives it: a string, or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _raise(message: str):
    raise TemplateError(message)


class JsonTokenizer:
    def __init__(self, folder: Path):
        folder = Path(folder)
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._as_text = threading.Lock()  # encode_special_tokens is the tokenizer's state: one caller at a time
        config = json.loads((folder / "tokenizer_config.json").read_text())
        self.special = {name: _token_text(config.get(name)) for name in SPECIAL_TOKENS}
        template = folder / TEMPLATE_FILE
        source = template.read_text() if template.is_file() else config.get("chat_template")
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise
        self._template = environment.from_string(source) if source else None
        self.eos_token_id = self.convert_tokens_to_ids(self.special["eos_token"])
        self.unk_token_id = self.convert_tokens_to_ids(self.special["unk_token"])

    def convert_tokens_to_ids(self, token: str | None) -> int | None:
        return None if token is None else self._tokenizer.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True, split_special_tokens: bool = False) -> list[int]:
        """`split_special_tokens`: special tokens written in the text are text, not tokens."""
        if not split_special_tokens:
            return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        with self._as_text:
            self._tokenizer.encode_special_tokens = True
            try:
                return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
            finally:
                self._tokenizer.encode_special_tokens = False

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            tokenize: bool = False) -> str:
        if self._template is None:
            raise ValueError("this tokenizer has no chat template")
        if tokenize:
            raise ValueError("render the template, then encode: tokenize=True is not offered")
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     **{name: value for name, value in self.special.items() if value is not None})
