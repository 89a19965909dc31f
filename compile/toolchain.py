"""Running tpu-mlir's tools (model_transform, model_deploy, model_tool) from this project's
Python: they are programs of the toolchain's own Python 3.10 venv, never imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ToolRun:
    seconds: float  # wall time
    peak_rss: int  # bytes: the largest resident set of the tool or a program it waited for


def _env(home: Path) -> dict[str, str]:
    """The toolchain's bin/ first on PATH, and the stand-in for PyTorch its tools import."""
    return {**os.environ, "PATH": f"{home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(home / "torch-stub")}


# Runs a tool and reports (exit code, seconds, peak RSS of it or a program it waited for). A
# child's peak RSS starts at its parent's resident size when it is forked, so a tool forked from a
# Python holding gigabytes would seem to need them: tools are started from this small launcher.
_LAUNCHER = """
import json, os, subprocess, sys, time
started = time.perf_counter()
with open(sys.argv[1], "w") as log:
    process = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
print(json.dumps([os.waitstatus_to_exitcode(status), time.perf_counter() - started, usage.ru_maxrss * 1024]))
"""


def run_tool(home: Path, tool: str, args: list[str], cwd: Path) -> ToolRun:
    """Run one tpu-mlir command in `cwd`, its output in cwd/<tool>.log; raise with the log's tail."""
    log = cwd / f"{tool.removesuffix('.py')}.log"
    launched = subprocess.run([sys.executable, "-c", _LAUNCHER, str(log), str(home / "bin" / tool), *args], cwd=cwd,
                              env=_env(home), capture_output=True, text=True, check=True)
    code, seconds, peak = json.loads(launched.stdout)
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{tool} failed in {cwd} (exit {code}); last lines of {log.name}:\n{tail}")
    return ToolRun(seconds, peak)


def tool_output(home: Path, tool: str, args: list[str]) -> str:
    """Run one tpu-mlir command that reports on stdout (model_tool --info, ...); returns what it printed."""
    result = subprocess.run([str(home / "bin" / tool), *args], env=_env(home), capture_output=True, text=True,
                            errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(args)} failed (exit {result.returncode}):\n"
                           f"{(result.stderr or result.stdout)[-2000:]}")
    return result.stdout
