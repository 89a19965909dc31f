"""Tokenizer files, one folder per model (tokenizer.json, tokenizer_config.json, chat template)."""
from __future__ import annotations

import os
from pathlib import Path

TOKEN_CONFIG_DIR = Path(__file__).resolve().parent


def tokenizer_dir(name: str) -> Path:
    path = TOKEN_CONFIG_DIR / name
    if not (path / "tokenizer_config.json").is_file():
        known = sorted(p.name for p in TOKEN_CONFIG_DIR.iterdir() if (p / "tokenizer_config.json").is_file())
        raise FileNotFoundError(f"no tokenizer '{name}' in {TOKEN_CONFIG_DIR} (have: {', '.join(known)})")
    return path


def load_tokenizer(name: str):
    # Only the tokenizer is used: without this, transformers warns that PyTorch is missing.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer  # imported late: it is slow to import

    return AutoTokenizer.from_pretrained(tokenizer_dir(name), local_files_only=True)
