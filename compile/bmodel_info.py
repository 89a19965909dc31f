"""What a compiled bmodel holds, as `model_tool --info` reports it."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BmodelInfo:
    device_total: int  # bytes of device memory the runtime allocates for the bmodel
    weight: int  # coefficients (each distinct blob once)
    instruct: int  # command buffers of every net
    runtime: int  # activations and other working memory
    nets: tuple[str, ...]

    def memory_dict(self) -> dict[str, int]:
        return {"total": self.device_total, "weight": self.weight, "instruct": self.instruct, "runtime": self.runtime}


def read_bmodel_info(home: Path, bmodel: Path) -> BmodelInfo:
    text = subprocess.run([str(home / "bin" / "model_tool"), "--info", str(bmodel)], capture_output=True, text=True,
                          check=True).stdout
    found = re.search(r"device mem size: (\d+) \(weight: (\d+), instruct: (\d+), runtime: (\d+)\)", text)
    if not found:
        raise RuntimeError(f"model_tool --info {bmodel} printed no device memory line")
    return BmodelInfo(*(int(v) for v in found.groups()), tuple(re.findall(r"net \d+: \[(\S+)\]", text)))
