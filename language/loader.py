"""Model directory -> ready ChatModel on the chosen backend."""
from __future__ import annotations

from pathlib import Path

from language.chat import ChatModel
from language.families import load_family
from language.generate import Generator
from models.store import read_config
from runtime import open_backend
from token_config import load_tokenizer


def load_chat_model(model_dir: Path, backend: str = "onnx", threads: int | None = None) -> ChatModel:
    config = read_config(model_dir)
    tokenizer = load_tokenizer(config["tokenizer"])
    family = load_family(config["family"], tokenizer)
    generator = Generator(open_backend(backend, Path(model_dir), threads=threads), family)
    return ChatModel(generator, family, tokenizer, name=config.get("name", Path(model_dir).name))
