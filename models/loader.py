"""Model directory (or a compiled bmodel) -> ready ChatModel on the chosen backend."""
from __future__ import annotations

from pathlib import Path

from language.chat import ChatModel
from language.embedding import read_table
from language.families import load_family
from language.shifted_generate import make_generator
from models.store import read_config
from runtime.backend import ModelFileError
from runtime import open_backend
from language.tokenizers import load_tokenizer
from vision.encoder import VisionEncoder


def load_chat_model(model_path: Path, backend: str = "onnx", threads: int | None = None,
                    dev_id: int = 0) -> ChatModel:
    """`model_path`: a model directory, or a .bmodel file whose folder holds the config.json
    that compile.bmodel wrote beside it (prompt family and tokenizer)."""
    model_path = Path(model_path)
    model_dir = model_path.parent if model_path.is_file() else model_path
    config = read_config(model_dir)
    if config.get("partial"):
        raise ModelFileError(f"{model_path} holds only {config['partial']['layers']} of the model's "
                             f"{config['partial']['of']} layers (a probe for measurements): it cannot answer")
    tokenizer = load_tokenizer(config["tokenizer"])
    family = load_family(config["family"], tokenizer)
    runtime = open_backend(backend, model_path, threads=threads, dev_id=dev_id)
    vision = VisionEncoder(runtime) if "vision" in runtime.nets() else None
    generator = make_generator(runtime, family, read_table(model_dir))
    weights = config.get("weights", "fp32") if not model_path.is_file() else None  # a bmodel: compile's modes
    return ChatModel(generator, family, tokenizer, name=config.get("name", model_dir.name),
                     vision=vision, weights=weights)
