"""Compile a model's ONNX nets into one bmodel for a Sophgo TPU, with tpu-mlir.

    python -m compile.bmodel MODEL OUT_DIR [--quantize W4BF16] [--group-size 64] [--chip bm1684x]
                             [--prefill-width N] [--jobs 2] [--keep-work]

MODEL is a catalog name (exported first if needed) or a model directory. OUT_DIR gets one
bmodel holding every net (vision included) and a config.json naming the prompt family and
tokenizer; the app runs it with `--backend sail --bmodel OUT_DIR/<file>.bmodel`.

Per net: model_transform (ONNX -> MLIR, the prefill width fixed, since bmodels are static)
then model_deploy (MLIR -> bmodel), each in its own work folder; then model_tool --combine.
Weight-only modes (W8*, W4*) quantize the transformer blocks; the embedding, lm_head and
vision nets stay in the matching float type. Hidden states, the KV cache and the image rows
are kept in that float type on the device (--quant_input/--quant_output); token ids and
positions stay int32, and lm_head's output is left as the net makes it (fp32 logits, or an
int32 token for heads that pick it on the chip).
"""
from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import onnx

from compile.toolchain import run_tool
from models.store import read_config, write_config
from runtime.backend import ModelFileError
from runtime.tpu_mlir import VERSION, find_toolchain

QUANTIZE = ("F16", "BF16", "W8F16", "W8BF16", "W4F16", "W4BF16")
CHIPS = ("bm1684x", "bm1688", "cv186x")
BMODEL_SUFFIX = ".bmodel"


@dataclass(frozen=True)
class NetPlan:
    name: str
    onnx: Path
    input_shapes: list[list[int]]
    quantize: str
    quant_input: bool
    quant_output: bool


def input_shapes(path: Path, prefill_width: int) -> list[list[int]]:
    """The net's input shapes with every run-time dimension set to the prefill width."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    shapes = []
    for tensor in graph.input:
        if tensor.name in initializers:
            continue
        dims = tensor.type.tensor_type.shape.dim
        shapes.append([d.dim_value if d.HasField("dim_value") else prefill_width for d in dims])
    return shapes


def cache_length(model_dir: Path) -> int:
    """Rows of the KV cache: block_cache_0's attention mask covers them plus the new token."""
    return input_shapes(model_dir / "block_cache_0.onnx", 0)[2][-1] - 1


def plan(model_dir: Path, quantize: str, prefill_width: int) -> list[NetPlan]:
    float_type = "BF16" if quantize.endswith("BF16") else "F16"
    plans = []
    for path in sorted(model_dir.glob("*.onnx")):
        name = path.stem
        is_block = name.startswith("block_")
        plans.append(NetPlan(name, path, input_shapes(path, prefill_width),
                             quantize if is_block else float_type,
                             quant_input=name != "vision",  # pixels go up as fp32
                             quant_output=name != "lm_head"))  # logits come down as fp32
    if not any(p.name == "block_0" for p in plans):
        raise ModelFileError(f"{model_dir} has no block_0.onnx: not a model directory of this project")
    return plans


def compile_net(home: Path, net: NetPlan, chip: str, group_size: int, work: Path) -> tuple[Path, float | None]:
    """ONNX -> bmodel in work/<net>; returns the bmodel and the compiler's runtime estimate (ms)."""
    folder = work / net.name
    folder.mkdir(parents=True, exist_ok=True)
    shapes = "[" + ",".join("[" + ",".join(map(str, s)) + "]" for s in net.input_shapes) + "]"
    run_tool(home, "model_transform.py", ["--model_name", net.name, "--model_def", str(net.onnx.resolve()),
                                          "--input_shapes", shapes, "--mlir", f"{net.name}.mlir"], folder)
    deploy = ["--mlir", f"{net.name}.mlir", "--quantize", net.quantize, "--chip", chip,
              "--model", f"{net.name}{BMODEL_SUFFIX}"]
    if net.quantize.startswith("W4"):
        deploy += ["--q_group_size", str(group_size)]
    if net.quant_input:
        deploy.append("--quant_input")
    if net.quant_output:
        deploy.append("--quant_output")
    run_tool(home, "model_deploy.py", deploy, folder)
    return folder / f"{net.name}{BMODEL_SUFFIX}", _estimated_ms(folder / "compiler_profile_0.txt")


def _estimated_ms(profile: Path) -> float | None:
    """The static compiler's own time estimate at 1 GHz (read ~1.25x it for real weight-bound nets)."""
    if not profile.is_file():
        return None
    found = re.findall(r"runtime:\s*([\d.]+)\s*ms", profile.read_text(errors="replace"))
    return float(found[-1]) if found else None


def bmodel_name(model_name: str, chip: str, quantize: str) -> str:
    return f"{model_name}_{chip}_{quantize.lower()}{BMODEL_SUFFIX}"


def compile_model(model_dir: Path, out_dir: Path, quantize: str = "W4BF16", chip: str = "bm1684x",
                  group_size: int = 64, prefill_width: int | None = None, jobs: int = 2,
                  keep_work: bool = False, progress=print) -> Path:
    """Compile every net of `model_dir` and combine them into one bmodel in `out_dir`."""
    if quantize not in QUANTIZE:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE)}")
    if chip not in CHIPS:
        raise ValueError(f"--chip must be one of {', '.join(CHIPS)}")
    home = find_toolchain()
    config = read_config(model_dir)
    width = prefill_width or cache_length(model_dir)
    nets = plan(model_dir, quantize, width)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work" if keep_work else Path(tempfile.mkdtemp(prefix="bmodel-", dir=out_dir))
    started = time.perf_counter()
    try:
        def one(net: NetPlan):
            result = compile_net(home, net, chip, group_size, work)
            progress(f"  {net.name}: {net.quantize} ({time.perf_counter() - started:.0f} s)")
            return result

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = dict(zip((n.name for n in nets), pool.map(one, nets)))
        target = out_dir / bmodel_name(config.get("name", model_dir.name), chip, quantize)
        partial = target.with_suffix(".partial")
        run_tool(home, "model_tool", ["--combine", *(str(path) for path, _ in results.values()), "-o", str(partial)],
                 work)
        partial.replace(target)
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    estimates = {name: ms for name, (_, ms) in results.items() if ms is not None}
    write_config(out_dir, {**{k: v for k, v in config.items() if k != "export_version"},
                           "bmodel": target.name, "chip": chip, "quantize": quantize,
                           "group_size": group_size if quantize.startswith("W4") else None,
                           "prefill_width": width, "tpu_mlir": VERSION, "estimated_ms": estimates})
    progress(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - started:.0f} s")
    return target


def main() -> None:
    from models.catalog import prepare_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="catalog name or model directory")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--quantize", choices=QUANTIZE, default="W4BF16")
    parser.add_argument("--group-size", type=int, default=64, help="weights per scale for W4 modes")
    parser.add_argument("--chip", choices=CHIPS, default="bm1684x")
    parser.add_argument("--prefill-width", type=int, help="prompt rows of one prefill (default: the context)")
    parser.add_argument("--jobs", type=int, default=2, help="nets compiled side by side")
    parser.add_argument("--keep-work", action="store_true", help="keep per-net folders (MLIR, compiler profiles)")
    args = parser.parse_args()
    model_dir = Path(args.model) if Path(args.model).is_dir() else prepare_model(args.model)
    compile_model(model_dir, args.out_dir, args.quantize, args.chip, args.group_size, args.prefill_width,
                  args.jobs, args.keep_work)


if __name__ == "__main__":
    main()
