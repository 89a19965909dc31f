"""Running tpu-mlir's tools (model_transform, model_deploy, model_tool) from this project's
Python: they are programs of the toolchain's own Python 3.10 venv, never imported."""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ToolRun:
    seconds: float  # wall time
    peak_rss: int  # bytes: the largest resident set of the tool or a program it waited for


def run_tool(home: Path, tool: str, args: list[str], cwd: Path) -> ToolRun:
    """Run one tpu-mlir command in `cwd`, its output in cwd/<tool>.log; raise with the log's tail."""
    env = {**os.environ, "PATH": f"{home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(home / "torch-stub")}
    log = cwd / f"{tool.removesuffix('.py')}.log"
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen([str(home / "bin" / tool), *args], cwd=cwd, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own resource usage, for its peak memory
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{tool} failed in {cwd} (exit {process.returncode}); last lines of {log.name}:\n{tail}")
    return ToolRun(time.perf_counter() - started, usage.ru_maxrss * 1024)
