"""How the compiler's time estimate relates to a real BM1684X: ChatGLM3-6B, compiled here the way
Sophgo compiled the bmodel they published figures for, set against those figures.

    python bench/tpu_calibration.py [--work DIR]

Sophgo's sophon-demo sample/ChatGLM3 (README, performance table: SE7-32, SDK V23.07.01)
publishes chatglm3-6b_int4 at 12.822 tokens/s and a first-token latency of 1.121 s. Its
scripts/gen_bmodel.sh compiles the blocks W4F16 with --q_group_size 64, lm_head and the
embedding F16, every net static at SEQ 512 (so the prefill always runs 512 rows). This script
exports one real-size ChatGLM3-6B layer (random weights: time depends on shapes, not values),
its lm_head and embedding in that layout (export/chatglm3_layout.py), compiles each with the
project's compile step at those settings, and prints

  decode estimate  = 28 x block_cache + lm_head + embedding_cache
  prefill estimate = 28 x block (512 rows) + embedding (512) + lm_head
  factor           = published time / estimate

compile/report.py multiplies its estimates by the decode factor. About 5 minutes and 9 GB of RAM.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compile.bmodel import NetPlan, compile_net, input_shapes  # noqa: E402
from export.chatglm3_layout import (CHATGLM3_6B, block_cache_net, block_net, embedding_net,  # noqa: E402
                                    lm_head_net, rope_tables)
from tests.fixtures.tiny_chatglm3 import tiny_chatglm3  # noqa: E402
from runtime.tpu_mlir import find_toolchain  # noqa: E402

SEQ = 512
PUBLISHED_DECODE_MS = 1000 / 12.822  # sophon-demo sample/ChatGLM3 README, chatglm3-6b_int4, SE7-32
PUBLISHED_FIRST_TOKEN_MS = 1121.0  # same table


def export_layer(folder: Path) -> dict[str, Path]:
    """One layer's block and block_cache, lm_head and the embedding nets, as ONNX in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    arch = dataclasses.replace(CHATGLM3_6B, num_layers=1)
    tensors = tiny_chatglm3(arch, peaked=False)
    tables = rope_tables(arch, SEQ)
    graphs = {"block_0": block_net(arch, tensors, 0, tables, SEQ),
              "block_cache_0": block_cache_net(arch, tensors, 0, tables, SEQ),
              "lm_head": lm_head_net(arch, tensors),
              "embedding": embedding_net(arch, tensors, "embedding", SEQ),
              "embedding_cache": embedding_net(arch, tensors, "embedding_cache", 1)}
    return {name: graph.save(folder / f"{name}.onnx") for name, graph in graphs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="keep the ONNX and compile folders here")
    args = parser.parse_args()
    home = find_toolchain()
    work = args.work or Path(tempfile.mkdtemp(prefix="calibration-"))
    work.mkdir(parents=True, exist_ok=True)
    estimates = {}
    for name, path in export_layer(work / "onnx").items():
        mode = "W4F16" if name.startswith("block") else "F16"
        plan = NetPlan(name, path, input_shapes(path, SEQ), mode, quant_input=True, quant_output=True)
        estimate = compile_net(home, plan, "bm1684x", 64, work, keep=False).estimate_ms
        estimates[name] = estimate or 0.0  # the embedding nets' row gather gets no estimate: next to nothing
        print(f"{name}: {mode}, estimate {estimate} ms", flush=True)
    layers = CHATGLM3_6B.num_layers
    decode = layers * estimates["block_cache_0"] + estimates["lm_head"] + estimates["embedding_cache"]
    prefill = layers * estimates["block_0"] + estimates["embedding"] + estimates["lm_head"]
    print(f"decode: estimate {decode:.1f} ms per token, published {PUBLISHED_DECODE_MS:.1f} ms: "
          f"factor {PUBLISHED_DECODE_MS / decode:.3f}")
    print(f"first token (512-row prefill): estimate {prefill:.1f} ms, published {PUBLISHED_FIRST_TOKEN_MS:.0f} ms: "
          f"factor {PUBLISHED_FIRST_TOKEN_MS / prefill:.3f}")


if __name__ == "__main__":
    main()
