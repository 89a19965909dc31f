"""What a compiled bmodel holds, as model_tool reports it: memory sizes, nets, coefficient blobs.

`model_tool --info` gives the device and host memory the runtime will allocate; `--print`
gives every net's stages (inputs, outputs) and where each stage's coefficients (weights)
sit in the file. `model_tool --combine` keeps one copy of byte-identical coefficient blobs,
so nets that share weights name the same blob, and the device weight counts it once.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from compile.toolchain import tool_output
from runtime.simulated_sail import Dtype
from runtime.tpu_mlir import find_toolchain


@dataclass(frozen=True)
class Blob:
    """A stage's coefficients: `size` bytes at `start` of the bmodel's binary data, and their hash
    (`model_tool --combine` keeps one copy of blobs with the same check code)."""
    start: int
    size: int
    check_code: tuple[int, ...] = ()


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # as model_tool --info names it: float32, bfloat16, int32, ...


@dataclass(frozen=True)
class StageInfo:
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    coeff: Blob | None  # None: the stage has no coefficients
    instruct: int  # bytes of its command buffers, as the device memory's `instruct` counts them


@dataclass(frozen=True)
class NetInfo:
    name: str
    stages: tuple[StageInfo, ...]


@dataclass(frozen=True)
class Memory:
    """Bytes; `instruct` is 0 for host memory, which has none."""
    total: int
    weight: int
    instruct: int
    runtime: int


@dataclass(frozen=True)
class BmodelInfo:
    device: Memory
    host: Memory
    nets: dict[str, NetInfo]

    def blobs(self) -> set[Blob]:
        """The distinct coefficient blobs of every net: their sizes add up to the device weight."""
        return {stage.coeff for net in self.nets.values() for stage in net.stages if stage.coeff}


_MEMORY = re.compile(r"^(device|host) mem size: (\d+) \((.*)\)$", re.M)


def _memory(info: str) -> dict[str, Memory]:
    """'device mem size: N (weight: W, instruct: I, runtime: R)' and the host line -> Memory each."""
    found = {}
    for kind, total, parts in _MEMORY.findall(info):
        sizes = {key.strip(): int(value) for key, value in (part.split(":") for part in parts.split(","))}
        found[kind] = Memory(int(total), sizes["weight"], sizes.get("instruct", 0), sizes["runtime"])
    if set(found) != {"device", "host"}:
        raise ValueError(f"model_tool --info printed no memory sizes:\n{info[-500:]}")
    return found


def _printed(text: str) -> dict:
    """model_tool --print writes JSON with bare keys, one per line: quote them and parse."""
    return json.loads(re.sub(r'^(\s*)(\w+):', r'\1"\2":', text, flags=re.M))


def _dtype(code: int) -> str:
    try:
        return Dtype(code).name.removeprefix("BM_").lower()
    except ValueError:
        return f"bm_data_type_t {code}"


def _tensor(tensor: dict) -> TensorInfo:
    return TensorInfo(tensor["name"], tuple(tensor["shape"][0]["dim"]), _dtype(tensor["data_type"]))


def _command_buffers(node, found: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Every binary_bdc / binary_gdma / ... block (start, size) under `node`, the coefficients aside."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith("binary_") and key != "binary_coeff" and isinstance(value, dict) and "size" in value:
                found.add((value["start"], value["size"]))
            else:
                _command_buffers(value, found)
    elif isinstance(node, list):
        for item in node:
            _command_buffers(item, found)
    return found


def _stage(parameter: dict) -> StageInfo:
    coeff_mem = parameter.get("coeff_mem", {})
    coeff = coeff_mem.get("binary_coeff")
    return StageInfo(tuple(map(_tensor, parameter["input_tensor"])), tuple(map(_tensor, parameter["output_tensor"])),
                     Blob(coeff["start"], coeff["size"], tuple(coeff_mem.get("check_code", ()))) if coeff else None,
                     sum(size for _, size in _command_buffers(parameter, set())))


def read_bmodel_info(bmodel: Path, home: Path | None = None) -> BmodelInfo:
    """Ask model_tool (of the toolchain at `home`, else the installed one) about `bmodel`."""
    home = home or find_toolchain()
    memory = _memory(tool_output(home, "model_tool", ["--info", str(bmodel)]))
    printed = _printed(tool_output(home, "model_tool", ["--print", str(bmodel)]))
    nets = {net["name"]: NetInfo(net["name"], tuple(map(_stage, net["parameter"]))) for net in printed["net"]}
    return BmodelInfo(memory["device"], memory["host"], nets)

