"""CPU copies of a model directory, for ONNX Runtime: fused layers, weights kept in float32 or
quantized.

    python -m models.cpu_weights MODEL_DIR OUT_DIR --weights fp32|int8|int4

A llama-family copy's layers are rewritten with ONNX Runtime's fused operators
(export/llama_onnxruntime.py): the same weights in fewer nodes, and a KV cache that the
layers write in place. An fp32 copy stops there.

In an int8 or int4 copy, every MatMul with a constant weight in the language model's nets (the blocks and lm_head)
becomes ONNX Runtime's MatMulNBits, written by ONNX Runtime's own quantizer: 8- or 4-bit
weights in blocks of 32 inputs with one float scale each and no zero point, the layout of
llama.cpp's Q8_0 / Q4_0. accuracy_level 4 lets MLAS multiply in int8, with the activations
quantized per block as they arrive, as llama.cpp's Q8_0 dot products do (without it the 8-bit
kernels take a slow float path: 2.6 tok/s against 57 on this machine). The vision net and the
embedding table stay float32.

MatMulNBits is an ONNX Runtime operator: the TPU compiles the float32 nets, never these, so
the copy holds only the nets ONNX Runtime loads (runtime/onnx_backend.py session_files).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import onnx

from export.llama import LlamaArch
from export.llama_onnxruntime import batched_lm_head, fuse_block_kv
from models.store import read_config, write_config
from runtime.backend import ModelFileError
from runtime.onnx_backend import session_files

WEIGHTS = {"fp32": None, "int8": 8, "int4": 4}  # name -> bits
BLOCK_SIZE = 32
INT8_COMPUTE = 4  # MatMulNBits accuracy_level: int8 activations, the fast MLAS kernels
COPY_VERSION = 4  # how a copy's nets are written (4: fused llama layers, cache in place, a batch); older ones are made again


def copy_source(source: dict, weights: str) -> dict:
    """What a copy records it was made from: its model's source, the weights and COPY_VERSION."""
    return {**source, "weights": weights, "copy_version": COPY_VERSION}


def quantized_nets(model_dir: Path) -> list[Path]:
    """The nets whose matrices are quantized: the language model's blocks and head, as loaded."""
    return [p for p in session_files(model_dir) if p.stem.startswith("block") or p.stem == "lm_head"]


def _llama_rewrite(stem: str):
    """How a llama net is rewritten for ONNX Runtime, if it is."""
    if stem.startswith("block_kv_"):
        return fuse_block_kv
    return batched_lm_head if stem == "lm_head" else None


def copy_net(path: Path, out: Path, bits: int | None, arch: LlamaArch | None = None) -> None:
    """`path`'s net into `out`: with `arch` (a llama model), a block_kv net fused and lm_head
    given a batch (export/llama_onnxruntime.py); then its matrices quantized to `bits` (None:
    kept in float32)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    rewrite = _llama_rewrite(path.stem) if arch is not None else None
    if bits is None:
        rewrite(path, arch).save(out) if rewrite else shutil.copy2(path, out)
        return
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    net = rewrite(path, arch).model() if rewrite else onnx.load(str(path))
    quantizer = MatMulNBitsQuantizer(net, bits=bits, block_size=BLOCK_SIZE, is_symmetric=True,
                                     accuracy_level=INT8_COMPUTE)
    quantizer.process()
    onnx.save(quantizer.model.model, str(out))


def cpu_copy(model_dir: Path, out_dir: Path, weights: str) -> None:
    """Write `out_dir`: `model_dir`'s nets as ONNX Runtime loads them, with fused llama layers and
    the blocks' and lm_head's matrices in `weights`. Staged in a folder of its own and renamed at
    the end, so a half-written copy is never used."""
    bits = WEIGHTS[weights]
    config = read_config(model_dir)
    arch = LlamaArch(**config["architecture"]) if config.get("family") == "llama" else None
    if "copy_version" in config.get("source", {}):
        raise ValueError(f"{model_dir} is already a CPU copy ({config.get('weights')} weights): start from the "
                         "exported nets")
    if bits is None and arch is None:
        raise ValueError(f"{model_dir} is not a llama-family model: its float32 CPU copy would be the same nets; "
                         "use the folder as it is")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".partial-", dir=out_dir.parent))
    try:
        to_quantize, loaded = set(quantized_nets(model_dir)), set(session_files(model_dir))
        for path in sorted(Path(model_dir).iterdir()):
            if path in to_quantize:
                copy_net(path, staging / path.name, bits, arch)
            elif path.is_file() and path.name != "config.json" and (path.suffix != ".onnx" or path in loaded):
                shutil.copy2(path, staging / path.name)
        write_config(staging, {**config, "weights": weights,
                               "source": copy_source(config.get("source", {}), weights)})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.replace(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.cpu_weights", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path, help="a model directory with float32 nets")
    parser.add_argument("out_dir", type=Path, help="where the copy goes")
    parser.add_argument("--weights", choices=list(WEIGHTS), default="int8")
    args = parser.parse_args(argv)
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        print(f"error: {args.out_dir} exists and is not empty: give a new folder", file=sys.stderr)
        return 2
    try:
        cpu_copy(args.model_dir, args.out_dir, args.weights)
    except (OSError, ValueError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out_dir}: {args.weights} weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
