"""Running tpu-mlir's tools (model_transform, model_deploy, model_tool) from this project's
Python: they are programs of the toolchain's own Python 3.10 venv, never imported."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def _env(home: Path) -> dict[str, str]:
    """The toolchain's bin/ first on PATH, and the stand-in for PyTorch its tools import."""
    return {**os.environ, "PATH": f"{home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(home / "torch-stub")}


def run_tool(home: Path, tool: str, args: list[str], cwd: Path) -> None:
    """Run one tpu-mlir command in `cwd`, its output in cwd/<tool>.log; raise with the log's tail."""
    log = cwd / f"{tool.removesuffix('.py')}.log"
    with open(log, "w") as out:
        result = subprocess.run([str(home / "bin" / tool), *args], cwd=cwd, env=_env(home), stdout=out,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{tool} failed in {cwd} (exit {result.returncode}); last lines of {log.name}:\n{tail}")


def tool_output(home: Path, tool: str, args: list[str]) -> str:
    """Run one tpu-mlir command that reports on stdout (model_tool --info, ...); returns what it printed."""
    result = subprocess.run([str(home / "bin" / tool), *args], env=_env(home), capture_output=True, text=True,
                            errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(args)} failed (exit {result.returncode}):\n"
                           f"{(result.stderr or result.stdout)[-2000:]}")
    return result.stdout
