"""Where the tpu-mlir toolchain lives: its compiler (used by compile/) and its chip simulator
libraries (used by runtime/simulated_sail.py).

tpu-mlir runs only on Python 3.10, so it lives in a venv of its own, built by
compile/setup_tpu_mlir.sh; this project never imports it.
"""
from __future__ import annotations

import os
from pathlib import Path

VERSION = "1.30.2"


class ToolchainMissing(FileNotFoundError):
    pass


def toolchain_home() -> Path:
    """$VGLM_TPU_MLIR, else ~/.cache/visualglm-tpu/tpu-mlir-<version>."""
    env = os.environ.get("VGLM_TPU_MLIR")
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "visualglm-tpu" / f"tpu-mlir-{VERSION}"


def find_toolchain() -> Path:
    home = toolchain_home()
    if not (home / ".complete").is_file():
        raise ToolchainMissing(f"no tpu-mlir {VERSION} toolchain in {home}: run compile/setup_tpu_mlir.sh "
                               f"(or point VGLM_TPU_MLIR at one)")
    return home


def library_dir(home: Path) -> Path:
    """tpu-mlir's lib folder: BMRuntime, BMLib and the chip simulators."""
    found = sorted(home.glob("lib/python3.*/site-packages/tpu_mlir/lib"))
    if not found:
        raise ToolchainMissing(f"{home} has no tpu_mlir/lib folder: re-run compile/setup_tpu_mlir.sh")
    return found[0]
