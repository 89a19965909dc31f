"""What a compiled bmodel holds, as tpu-mlir's `model_tool` reports it."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BmodelInfo:
    device_total: int  # bytes of device memory the runtime allocates for the bmodel
    weight: int  # coefficients, each distinct blob once
    instruct: int  # command buffers
    runtime: int  # activations: the largest net's, the nets run one at a time
    coeff: dict[str, tuple[int, int]]  # net -> (start, size) of its coefficient blob in the file
    instructions: dict[str, int]  # net -> bytes of its command buffers, as `instruct` counts them

    def memory_dict(self) -> dict[str, int]:
        return {"total": self.device_total, "weight": self.weight, "instruct": self.instruct, "runtime": self.runtime}


def _model_tool(home: Path, *args: str) -> str:
    return subprocess.run([str(home / "bin" / "model_tool"), *args], capture_output=True, text=True, check=True).stdout


def read_bmodel_info(home: Path, bmodel: Path) -> BmodelInfo:
    info = _model_tool(home, "--info", str(bmodel))
    found = re.search(r"device mem size: (\d+) \(weight: (\d+), instruct: (\d+), runtime: (\d+)\)", info)
    if not found:
        raise RuntimeError(f"model_tool --info {bmodel} printed no device memory line")
    printed = re.sub(r"\s+", "", _model_tool(home, "--print", str(bmodel)))
    coeff, instructions = {}, {}
    for chunk in re.split(r'(?=\{name:"[^"]+",parameter:)', printed)[1:]:  # one per net
        name = re.match(r'\{name:"([^"]+)"', chunk).group(1)
        blob = re.search(r"binary_coeff:\{start:(\d+),size:(\d+)\}", chunk)
        if blob:
            coeff[name] = (int(blob.group(1)), int(blob.group(2)))
        buffers = set(re.findall(r"binary_(?:bdc|gdma|ir|hau|sdma):\{start:(\d+),size:(\d+)\}", chunk))
        instructions[name] = sum(int(size) for _, size in buffers)
    return BmodelInfo(*(int(v) for v in found.groups()), coeff, instructions)
