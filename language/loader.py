"""Model directory -> ready ChatModel on the chosen backend."""
from __future__ import annotations

from pathlib import Path

from language.chat import ChatModel
from language.families import load_family
from language.generate import Generator
from models.store import read_config
from runtime import open_backend
from token_config import load_tokenizer
from vision.encoder import VisionEncoder


def load_chat_model(model_dir: Path, backend: str = "onnx", threads: int | None = None) -> ChatModel:
    config = read_config(model_dir)
    tokenizer = load_tokenizer(config["tokenizer"])
    family = load_family(config["family"], tokenizer)
    runtime = open_backend(backend, Path(model_dir), threads=threads)
    vision = VisionEncoder(runtime) if "vision" in runtime.nets() else None
    return ChatModel(Generator(runtime, family), family, tokenizer, name=config.get("name", Path(model_dir).name),
                     vision=vision)
