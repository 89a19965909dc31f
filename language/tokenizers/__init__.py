"""Loading a model's tokenizer from its files in token_config/ (one folder per model:
tokenizer.json, tokenizer_config.json, chat template).

A folder with a `tokenizer.json` is read by language/tokenizers/json_tokenizer.py, with the
`tokenizers` library (transformers is not needed at run time). A folder holding ChatGLM-6B's
`ice_text.model` or ChatGLM3-6B's `tokenizer.model` (with a tokenizer_config.json naming
ChatGLMTokenizer) is read by language/tokenizers/sentencepiece_chatglm.py (transformers'
ChatGLM tokenizers are remote code)."""
from __future__ import annotations

from pathlib import Path

TOKEN_CONFIG_DIR = Path(__file__).resolve().parents[2] / "token_config"


def tokenizer_dir(name: str) -> Path:
    """token_config/<name>, or `name` itself when it is a folder path."""
    for path in (TOKEN_CONFIG_DIR / name, Path(name)):
        if (path / "tokenizer_config.json").is_file():
            return path
    known = sorted(p.name for p in TOKEN_CONFIG_DIR.iterdir() if (p / "tokenizer_config.json").is_file())
    raise FileNotFoundError(f"no tokenizer '{name}' in {TOKEN_CONFIG_DIR} (have: {', '.join(known)}), "
                            "nor a folder of that name with a tokenizer_config.json")


def load_tokenizer(name: str):
    path = tokenizer_dir(name)
    from language.tokenizers.sentencepiece_chatglm import load_chatglm_tokenizer

    chatglm = load_chatglm_tokenizer(path)  # None: not a ChatGLM sentencepiece folder
    if chatglm is not None:
        return chatglm
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has neither a tokenizer.json nor a ChatGLM sentencepiece model")
    from language.tokenizers.json_tokenizer import JsonTokenizer

    return JsonTokenizer(path)
