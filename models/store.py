"""Model directories: the nets of one model plus a config.json that says how to use them.

config.json is written last, so a directory with one is a complete export; its
`export_version` and `source` say whether it is still current.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from runtime.backend import ModelFileError

CONFIG_FILE = "config.json"
EXPORT_VERSION = 5  # bump when the nets change, so old exports are redone


def models_home() -> Path:
    """Where exported models are kept: $VGLM_MODELS_DIR, else ~/.cache/visualglm-tpu."""
    env = os.environ.get("VGLM_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "visualglm-tpu"


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelFileError(f"{model_dir} is not a model directory: it has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path} is not valid JSON: {exc}") from exc
    for key in ("family", "tokenizer"):
        if key not in config:
            raise ModelFileError(f"{path} has no '{key}' entry")
    return config


def write_config(model_dir: Path, config: dict) -> None:
    path = Path(model_dir) / CONFIG_FILE
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps({"export_version": EXPORT_VERSION, **config}, indent=2) + "\n")
    tmp.replace(path)


def is_current(model_dir: Path, source: dict) -> bool:
    try:
        config = read_config(model_dir)
    except ModelFileError:
        return False
    return config.get("export_version") == EXPORT_VERSION and config.get("source") == source
