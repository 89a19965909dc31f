"""What a compiled model needs on a board and how fast it should run there, before anyone
copies a file: device memory set against the boards, projected decode speed and first-token
time with a picture.

    python -m compile.report OUT_DIR [--question-tokens 30] [--host-ms 0.9]

OUT_DIR is what compile.bmodel wrote: its config.json holds the bmodel's device memory
(`model_tool --info`), each net's compiler estimate and the architecture. For a probe (a
compile of the first layers only, `--layers`), per-layer figures are extrapolated to the
whole model: a layer's weights and time times the number of layers.

Memory: the bmodel's weights (each distinct coefficient blob once), instructions and
runtime (activations; nets run one at a time and share it), the KV cache the runtime
allocates at the model's context, and the generation loop's buffers; the host embedding
table stays in the host's memory (memory-mapped, read as rows are used).

Speed: the static compiler's per-net estimate (tpu-mlir's compiler_profile, at 1 GHz) times
CALIBRATION, plus the host's own time per token (bench/host_overhead.py, measured on an x86_64
workstation: a SoC board's Cortex-A53 cores take longer; --host-ms to set it). Decode:
every layer's block_cache + lm_head (+ embedding_cache on the device). First token: the
vision net + every layer's prefill at the narrowest width that takes the prompt + lm_head.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from language.embedding import TABLE_FILE, bucket_net
from models.store import read_config
from runtime.backend import ModelFileError
from vision.encoder import CACHE_SIZE

MB = 2 ** 20
HOST_MS_PER_TOKEN = 0.35  # bench/host_overhead.py: VisualGLM-6B's shapes, sampled (greedy 0.19), idle x86_64 core


@dataclass(frozen=True)
class Calibration:
    decode: float  # real time / the compiler's estimate, per decode step
    first_token: float  # the same for a prompt's first token (prefill, the heads, the host around them)
    source: str


CALIBRATION = Calibration(
    1.087, 1.83,
    "bench/tpu_calibration.py compiles a real-size ChatGLM3-6B layer as sophon-demo compiled chatglm3-6b_int4 "
    "(W4F16 g64 blocks, F16 lm_head and embedding, SEQ 512). Its estimates: 28 x 2.231 ms + 9.301 ms = 71.8 ms "
    "per token, against the published 12.822 tokens/s (78.0 ms) on an SE7-32: x 1.087; a 512-row prefill "
    "28 x 21.513 + 9.301 = 611.7 ms against the published first token of 1.121 s: x 1.83 (sophon-demo "
    "sample/ChatGLM3 README, SDK V23.07.01). Sophgo's ChatGLM2-6B figure (14.24 tokens/s, same sizes) would "
    "give a lower decode factor; the ChatGLM3 one is the more cautious")


@dataclass(frozen=True)
class Board:
    name: str
    chip: str
    tpu_mb: int  # device memory the TPU can use
    how: str


BOARDS = (  # the TPU may use the npu, vpu and vpp heaps alike (BMRuntime's heap mask 7; Sophgo's LLM guides)
    Board("BM1684X SoC, 16 GB (SE7-32), as shipped", "bm1684x", 3_950 + 2_048 + 3_072,
          "npu 3950 + vpu 2048 + vpp 3072 MiB, the SE7 SDK guide's example"),
    Board("BM1684X SoC, 16 GB (SE7-32), after memory_edit.sh", "bm1684x", 7_615 + 3_072 + 3_072,
          "`memory_edit.sh -c -npu 7615 -vpu 3072 -vpp 3072`, as sophon-demo's ChatGLM3 guide asks"),
    Board("BM1688 SoC, 16 GB (SE9-16), after memory_edit.sh", "bm1688", 8_192 + 1_024,
          "`memory_edit.sh -c -npu 8192 -vpu 0 -vpp 1024`, as sophon-demo's ChatGLM3 guide asks"),
)


@dataclass(frozen=True)
class Targets:
    memory_gb: float
    decode_tokens_per_s: float
    first_token_s: float
    source: str


TARGETS = {  # what this project aims for, per family, on BM1684X with W4BF16 blocks
    "glm": Targets(6.5, 14.0, 1.2, "device memory at a 1024-token context with the vision net; decode as "
                   "Sophgo's ChatGLM2-6B int4 C++ demo (14.2 tokens/s on BM1684X); picture + 30-token question"),
}


@dataclass(frozen=True)
class Memory:
    weights: int
    instructions: int
    runtime: int
    kv_cache: int
    buffers: int
    host_table: int

    @property
    def device(self) -> int:
        return self.weights + self.instructions + self.runtime + self.kv_cache + self.buffers


def _layers(config: dict) -> tuple[int, int]:
    """(layers compiled, layers of the model)."""
    partial = config.get("partial")
    if partial:
        return partial["layers"], partial["of"]
    layers = config["shapes"]["layers"]
    return layers, layers


def memory(config: dict, out_dir: Path) -> Memory:
    compiled, total = _layers(config)
    device = config["device_memory"]
    kv = config["shapes"]
    extra_layers = total - compiled
    hidden, row, context, item = kv["hidden"], kv["row"], kv["context"], kv["item_bytes"]
    widths = config["prefill_widths"]
    buffers = sum(item * (2 * w * hidden + 2 * w * row + w * w + 2 * w) for w in widths)  # per width, kept
    buffers += item * (4 * hidden + 2 * row + context + 1) + 4 * kv["vocab"]  # decode tensors, logits
    buffers += CACHE_SIZE * kv["image_rows"] * hidden * item  # the latest pictures' rows stay on the device
    table = out_dir / TABLE_FILE
    return Memory(weights=device["weight"] + extra_layers * config["layer_weight_bytes"],
                  instructions=device["instruct"] + extra_layers * config["layer_instruct_bytes"],
                  runtime=device["runtime"],
                  kv_cache=total * 2 * context * row * item,
                  buffers=buffers,
                  host_table=table.stat().st_size if table.is_file() else 0)


@dataclass(frozen=True)
class Speed:
    decode_ms: float  # per token, device (calibrated) + host
    prefill_ms: dict[int, float]  # per prefill width, calibrated, without the vision net
    vision_ms: float
    first_token_ms: float  # picture + question
    prompt_tokens: int
    width: int


def _estimate(config: dict, name: str) -> float:
    found = config["estimated_ms"].get(name)
    if found is None:
        raise KeyError(f"the compile recorded no estimate for {name}")
    return found


def speed(config: dict, question_tokens: int, host_ms: float) -> Speed:
    compiled, total = _layers(config)
    device_embedding = config.get("embedding") == "device"
    widths = config["prefill_widths"]

    def per_layer(base: str) -> float:
        return sum(_estimate(config, base.format(i=i)) for i in range(compiled)) / compiled * total

    head = _estimate(config, "lm_head")
    gather = config["estimated_ms"].get  # an embedding net may have no estimate: a lone row gather
    decode = per_layer("block_cache_{i}") + head + (gather("embedding_cache", 0.0) if device_embedding else 0)
    prefill = {}
    for w in widths:
        embed = gather(bucket_net("embedding", w, widths[-1]), 0.0) if device_embedding else 0
        prefill[w] = (per_layer(bucket_net("block_{i}", w, widths[-1])) + embed + head) * CALIBRATION.first_token
    vision = config["estimated_ms"].get("vision", 0.0) * CALIBRATION.first_token
    prompt = config["shapes"]["template_tokens"] + question_tokens
    width = next((w for w in widths if w >= prompt), widths[-1])
    return Speed(decode * CALIBRATION.decode + host_ms, prefill, vision, vision + prefill[width] + host_ms, prompt, width)


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def render(out_dir: Path, question_tokens: int = 30, host_ms: float | None = None) -> str:
    config = read_config(out_dir)
    host_ms = HOST_MS_PER_TOKEN if host_ms is None else host_ms
    compiled, total = _layers(config)
    mem, fast = memory(config, out_dir), speed(config, question_tokens, host_ms)
    kv = config["shapes"]
    lines = [f"{config.get('name', out_dir.name)} ({config['family']}) for {config['chip']}: blocks {config['quantize']}"
             + (f" g{config['group_size']}" if config.get("group_size") else "")
             + f", lm_head {config['head_quantize']}, vision {config['vision_quantize']}, "
             f"embedding on the {config['embedding']}, prefill widths {', '.join(map(str, config['prefill_widths']))}"]
    if compiled < total:
        lines.append(f"A probe: {compiled} of {total} layers compiled; per-layer figures are extrapolated to {total}.")
    lines += ["", f"Device memory at a context of {kv['context']} tokens",
              f"  weights            {_gb(mem.weights):>9}   ({total} layers x {config['layer_weight_bytes'] / 1e6:.1f} MB "
              f"+ the other nets)",
              f"  instructions       {_gb(mem.instructions):>9}",
              f"  runtime            {_gb(mem.runtime):>9}   (activations; the nets share it)",
              f"  KV cache           {_gb(mem.kv_cache):>9}   ({total} layers x K,V x {kv['context']} x {kv['row']} "
              f"x {kv['item_bytes']} bytes)",
              f"  loop buffers       {_gb(mem.buffers):>9}   (per prefill width, decode, logits, cached pictures)",
              f"  total              {_gb(mem.device):>9}"]
    if mem.host_table:
        lines.append(f"  host memory: the embedding table, {_gb(mem.host_table)} on disk, memory-mapped")
    lines += ["", "Boards"]
    for board in BOARDS:
        if board.chip != config["chip"]:
            continue
        spare = board.tpu_mb * MB - mem.device
        verdict = f"fits, {_gb(spare)} spare" if spare >= 0 else f"does NOT fit, {_gb(-spare)} short"
        lines.append(f"  {board.name}: {_gb(board.tpu_mb * MB)} for the TPU ({board.how}): {verdict}")
    if not any(board.chip == config["chip"] for board in BOARDS):
        lines.append(f"  no {config['chip']} board's memory layout is known here")
    lines += ["", f"Projected speed on the chip (compiler estimate x {CALIBRATION.decode} per decode step, "
              f"x {CALIBRATION.first_token} for a first token"
              + (f"; + {host_ms:.2f} ms of host work per token" if host_ms else "") + ")",
              f"  decode: {fast.decode_ms:.1f} ms per token = {1000 / fast.decode_ms:.1f} tokens/s",
              f"  first token, picture + {question_tokens}-token question ({fast.prompt_tokens} tokens, prefill width "
              f"{fast.width}): {fast.first_token_ms / 1000:.2f} s (vision {fast.vision_ms:.0f} ms)",
              "  prefill by width: " + ", ".join(f"{w}: {ms:.0f} ms" for w, ms in fast.prefill_ms.items()),
              f"  calibration: {CALIBRATION.source}"]
    if config["chip"] != "bm1684x":
        lines.append(f"  (the calibration was measured for BM1684X; on {config['chip']} it is applied unchanged, "
                     "as no published figure of a model compiled the same way was found to check it)")
    target = TARGETS.get(config["family"]) if config["chip"] == "bm1684x" else None
    if target:
        lines += ["", f"Targets ({target.source})"]
        for label, got, goal, better in (
                ("device memory GB", mem.device / 1e9, target.memory_gb, "lower"),
                ("decode tokens/s", 1000 / fast.decode_ms, target.decode_tokens_per_s, "higher"),
                ("first token s", fast.first_token_ms / 1000, target.first_token_s, "lower")):
            met = got <= goal if better == "lower" else got >= goal
            gap = abs(got - goal)
            lines.append(f"  {label}: {got:.2f} against {goal:g}: " + ("met" if met else f"missed by {gap:.2f}"))
    return "\n".join(lines)


def print_report(out_dir: Path, **kwargs) -> None:
    print(render(Path(out_dir), **kwargs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="what compile.bmodel wrote")
    parser.add_argument("--question-tokens", type=int, default=30)
    parser.add_argument("--host-ms", type=float,
                        help=f"host time per token (default {HOST_MS_PER_TOKEN}, measured by bench/host_overhead.py on "
                             "x86_64; a board's ARM cores take longer)")
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    args = parser.parse_args(argv)
    try:
        if args.json:
            config = read_config(args.out_dir)
            host_ms = HOST_MS_PER_TOKEN if args.host_ms is None else args.host_ms
            print(json.dumps({"memory": memory(config, args.out_dir).__dict__,
                              "speed": speed(config, args.question_tokens, host_ms).__dict__}, indent=2))
        else:
            print_report(args.out_dir, question_tokens=args.question_tokens, host_ms=args.host_ms)
    except (KeyError, FileNotFoundError, ValueError, ModelFileError) as exc:
        print(f"error: {args.out_dir} is not a compiled model this report can read: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
