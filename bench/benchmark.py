"""Benchmark the split-net runtime against transformers on SmolLM2, same weights, same prompt;
then the seeing default model's vision time and first-token latency with and without an image.

    python bench/benchmark.py [--runs 5] [--new-tokens 64] [--threads N] [--only RUNTIME|vision ...] [--busy SHARE]
                              [--json PATH]

Runtimes, on CPU with the same thread count:
  split nets, ONNX Runtime  this project: Generator.prefill / Generator.decode over the model's CPU copy
                            (models/cpu_weights.py: fused layers, cache in place), fp32 weights
  ... int8 / int4 weights   the same nets with their matrices quantized;
                            compared with the fp32 nets in the same run
  transformers eager        training.torch_llama.transformers_llama on the very same weights (fp32)
                            (read_llama_gguf), one forward per token with a KV cache, inference_mode
  llama.cpp F32 / Q8_0      llama-cpp-python, when installed (optional; it builds llama.cpp): the
                            same GGUF requantized to F32 and Q8_0 by llama.cpp's own quantize API,
                            fed the same prompt ids, greedy over the last logits row
Ratios are printed for runtimes at the same precision (split nets fp32 vs llama.cpp F32 and
transformers, int8 vs llama.cpp Q8_0), and for the quantized nets vs the fp32 ones.

Figures, for one chat prompt and N new tokens chosen by greedy argmax (stop tokens ignored, so
both runtimes produce exactly N tokens):
  load s          model files -> ready to generate (weights and tokenizer; imports and the one-off
                  ONNX export excluded), measured once per runtime
  first token ms  prefill of the prompt + lm_head + argmax of the first new token
  decode tok/s    the N-1 tokens after the first, each one forward of one token, per second
  weight GB/s     weight bytes read per decoded token x decode tok/s. Counted: every decoder
                  layer's matrices and norms, the final norm and the vocab x hidden lm_head matrix
                  (a copy in the nets, the tied embedding in transformers: read once per token
                  either way), at 4 bytes a weight, or for int8 / int4 1 / 0.5 plus a 4-byte
                  scale per 32. The embedding lookup reads one row and is not counted; neither
                  is the KV cache.
  peak RSS MB     resource.getrusage(RUSAGE_SELF).ru_maxrss of the runtime's own process: loading
                  included, so this is the high-water mark, not the steady state

The vision part (smollm2-vision, one question about a drawn red circle, one new token):
  vision net ms   preprocessed picture -> prefix embeddings, the image cache emptied first
  first token ms  no image / a new image (vision included) / the same image again (from the cache)

With --busy SHARE, every runtime is measured a second time while another process keeps SHARE of
one core busy in short bursts (5 ms periods, as a server streaming to its clients wakes up), and
each runtime's rates under that load are printed beside its quiet ones.

Each runtime runs in its own subprocess (this script with --worker) so peak memory is per runtime.
Timed figures are medians over --runs after one warm-up run. They are wall-clock times on a
machine that is doing other things too: expect a few percent of noise between invocations, more
on a busy or thermally throttled machine, and compare runtimes within one invocation only.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Tell me about the history of the Roman Empire."
VISION_QUESTION = "What colour is the shape?"
RUNTIMES = {"onnx": "split nets, ONNX Runtime", "onnx-int8": "split nets, ONNX Runtime, int8 weights",
            "onnx-int4": "split nets, ONNX Runtime, int4 weights", "transformers": "transformers eager",
            "llama.cpp-f32": "llama.cpp F32", "llama.cpp-q8_0": "llama.cpp Q8_0"}
LLAMA_CPP_TYPES = {"llama.cpp-f32": ("F32", 0), "llama.cpp-q8_0": ("Q8_0", 7)}  # llama_ftype: ALL_F32, MOSTLY_Q8_0
LLAMA_CPP_MISSING = "not installed (optional: pip install llama-cpp-python==0.3.36, which builds llama.cpp)"
COMPARED = (("onnx", "transformers"), ("onnx-int8", "onnx"), ("onnx-int4", "onnx"),
            ("onnx", "llama.cpp-f32"), ("onnx-int8", "llama.cpp-q8_0"))  # same precision beside each other
WEIGHT_BYTES = {"fp32": 4.0, "int8": 1 + 4 / 32, "int4": 0.5 + 4 / 32,  # per weight, with the blocks' scales
                "q8_0": 1 + 2 / 32}
NOT_INSTALLED = "not installed (pip install -r requirements-dev.txt)"


class Runtime(Protocol):
    def prefill(self, ids: list[int]) -> int:
        """Run the prompt, return the first new token."""

    def decode(self, token: int) -> int:
        """Feed one token, return the next."""


class SplitNets:
    def __init__(self, generator):
        self.generator = generator
        generator.reuse_prefixes = False  # every run reads the whole prompt (llama.cpp: reset() before each)

    def prefill(self, ids: list[int]) -> int:
        return int(np.argmax(self.generator.prefill(ids)))

    def decode(self, token: int) -> int:
        return int(np.argmax(self.generator.decode(token)))


class TransformersEager:
    def __init__(self, model):
        import torch

        self.torch, self.model, self.past = torch, model, None

    def prefill(self, ids: list[int]) -> int:
        with self.torch.inference_mode():
            out = self.model(self.torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        self.past = out.past_key_values
        return int(out.logits[0, -1].argmax())

    def decode(self, token: int) -> int:
        with self.torch.inference_mode():
            out = self.model(self.torch.tensor([[token]]), past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return int(out.logits[0, -1].argmax())


class LlamaCpp:
    """llama-cpp-python's Llama, driven token by token like the others. Llama.scores stays
    empty unless logits_all=True, so the last row is read with llama_get_logits_ith."""

    def __init__(self, llm):
        import llama_cpp

        self.llm, self.vocab, self.logits_of = llm, llm.n_vocab(), llama_cpp.llama_get_logits_ith

    def _next(self) -> int:
        return int(np.argmax(np.ctypeslib.as_array(self.logits_of(self.llm.ctx, -1), shape=(self.vocab,))))

    def prefill(self, ids: list[int]) -> int:
        self.llm.reset()  # the next eval drops the cache from position 0 on
        self.llm.eval(ids)
        return self._next()

    def decode(self, token: int) -> int:
        self.llm.eval([token])
        return self._next()


def requantized_gguf(name: str) -> Path:
    """The default model's GGUF, requantized by llama.cpp's own quantize API (once, in the cache)."""
    import ctypes

    import llama_cpp

    from models.catalog import find_smollm2_gguf
    from models.store import models_home

    kind, ftype = LLAMA_CPP_TYPES[name]
    source = find_smollm2_gguf()
    out = models_home() / "llama.cpp" / f"{source.stem}.{kind}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = ftype, True, os.cpu_count() or 1
        partial = out.with_name(out.name + ".partial")
        if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)):
            raise RuntimeError(f"llama.cpp could not requantize {source.name} to {kind}")
        partial.replace(out)
    return out


def llama_cpp_runtime(name: str) -> Callable[[int], tuple[Runtime, list[int]]]:
    def load(threads: int) -> tuple[Runtime, list[int]]:
        from llama_cpp import Llama

        from language.families.llama import LlamaFamily
        from language.tokenizers import load_tokenizer
        from models.catalog import TEXT_MODEL

        llm = Llama(str(requantized_gguf(name)), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                    verbose=False)
        return LlamaCpp(llm), LlamaFamily(load_tokenizer(TEXT_MODEL)).encode([], PROMPT).ids  # the same ids
    return load


def split_nets(weights: str) -> Callable[[int], tuple[Runtime, list[int]]]:
    def load(threads: int) -> tuple[Runtime, list[int]]:
        from models.catalog import TEXT_MODEL, prepare_model
        from models.loader import load_chat_model

        model = load_chat_model(prepare_model(TEXT_MODEL, progress=None, weights=weights), "onnx", threads)
        return SplitNets(model.generator), model.family.encode([], PROMPT).ids
    return load


def load_transformers(threads: int) -> tuple[Runtime, list[int]]:
    import torch

    from language.families.llama import LlamaFamily
    from models.catalog import TEXT_MODEL, find_smollm2_gguf
    from models.gguf_llama import read_llama_gguf
    from training.torch_llama import transformers_llama
    from language.tokenizers import load_tokenizer

    torch.set_num_threads(threads)
    model = transformers_llama(*read_llama_gguf(find_smollm2_gguf()))
    return TransformersEager(model), LlamaFamily(load_tokenizer(TEXT_MODEL)).encode([], PROMPT).ids


LOADERS = {"onnx": split_nets("fp32"), "onnx-int8": split_nets("int8"), "onnx-int4": split_nets("int4"),
           "transformers": load_transformers, **{name: llama_cpp_runtime(name) for name in LLAMA_CPP_TYPES}}


def weights_of(name: str) -> str:
    return {"onnx-int8": "int8", "onnx-int4": "int4", "llama.cpp-q8_0": "q8_0"}.get(name, "fp32")



def decode_n(runtime: Runtime, token: int, n: int) -> list[int]:
    tokens = []
    for _ in range(n):
        token = runtime.decode(token)
        tokens.append(token)
    return tokens


def timed_run(runtime: Runtime, ids: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """One generation: (first token seconds, decode seconds, the new tokens)."""
    start = time.perf_counter()
    first = runtime.prefill(ids)
    prefilled = time.perf_counter()
    rest = decode_n(runtime, first, new_tokens - 1)
    return prefilled - start, time.perf_counter() - prefilled, [first, *rest]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def worker(name: str, runs: int, new_tokens: int, threads: int) -> dict:
    from models.catalog import TEXT_MODEL, prepare_model

    if name.startswith("onnx"):
        prepare_model(TEXT_MODEL, progress=None, weights=weights_of(name))  # made by the parent: only checks
    start = time.perf_counter()
    runtime, ids = LOADERS[name](threads)
    load_s = time.perf_counter() - start
    timed_run(runtime, ids, new_tokens)  # warm-up
    first_s, decode_s, tokens = zip(*(timed_run(runtime, ids, new_tokens) for _ in range(runs)))
    return {"runtime": RUNTIMES[name], "weights": weights_of(name), "load_s": load_s, "prompt_tokens": len(ids),
            "first_token_ms": statistics.median(first_s) * 1000,
            "decode_tok_s": statistics.median((new_tokens - 1) / s for s in decode_s),
            "peak_rss_mb": peak_rss_mb(), "tokens": tokens[-1],
            "first_token_ms_runs": [s * 1000 for s in first_s],
            "decode_tok_s_runs": [(new_tokens - 1) / s for s in decode_s]}


def red_circle():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(image).ellipse([60, 60, 164, 164], fill=(220, 40, 40))
    return image


def vision_worker(runs: int, threads: int) -> dict:
    """The seeing default model: vision net time, and first-token latency with and without an image."""
    from models.loader import load_chat_model
    from language.sampling import SamplingSettings
    from models.catalog import DEFAULT_CPU_WEIGHTS, VISION_MODEL, prepare_model

    model = load_chat_model(prepare_model(VISION_MODEL, progress=None, weights=DEFAULT_CPU_WEIGHTS), "onnx", threads)
    model.generator.reuse_prefixes = False  # the same question again is read whole: a new user's latency
    one_token, image = SamplingSettings(max_new_tokens=1), red_circle()

    def ask(with_image: bool, fresh: bool):
        if fresh:
            model.vision.clear_cache()
        return model.reply([], VISION_QUESTION, one_token, image if with_image else None)

    ask(True, True)  # warm-up
    text = [ask(False, False).first_token_s for _ in range(runs)]
    new = [ask(True, True) for _ in range(runs)]
    cached = [ask(True, False).first_token_s for _ in range(runs)]
    return {"model": VISION_MODEL, "vision_ms": statistics.median(d.vision_s for d in new) * 1000,
            "first_token_ms_text": statistics.median(text) * 1000,
            "first_token_ms_new_image": statistics.median(d.first_token_s for d in new) * 1000,
            "first_token_ms_cached_image": statistics.median(cached) * 1000,
            "image_rows": model.vision.rows, "weights": model.weights, "peak_rss_mb": peak_rss_mb()}


def vision_table(r: dict) -> str:
    return "\n".join([
        f"| {r['model']}: \"{VISION_QUESTION}\" | vision net ms | first token ms: no image | "
        f"new image (vision included) | cached image | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
        f"| split nets, ONNX Runtime, {r['weights']} weights ({r['image_rows']} image rows) | {r['vision_ms']:.1f} | "
        f"{r['first_token_ms_text']:.1f} | {r['first_token_ms_new_image']:.1f} | "
        f"{r['first_token_ms_cached_image']:.1f} | {r['peak_rss_mb']:.0f} |"])


def export_once() -> Path:
    """Export the text model (and its CPU copies) if needed, in a child process: a big
    parent would inflate the workers' ru_maxrss, which Linux carries across exec."""
    code = ("from models.catalog import TEXT_MODEL, prepare_model; [prepare_model(TEXT_MODEL, weights=w) "
            "for w in ('fp32', 'int8', 'int4')]; print(prepare_model(TEXT_MODEL))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def weight_bytes_per_token(arch: dict, weights: str = "fp32") -> int:
    h, inter, vocab = arch["hidden_size"], arch["intermediate_size"], arch["vocab_size"]
    kv = arch["num_kv_heads"] * (h // arch["num_heads"])
    matrices = arch["num_layers"] * (2 * h * h + 2 * h * kv + 3 * h * inter) + vocab * h  # + lm_head
    norms = arch["num_layers"] * 2 * h + h  # stay float32
    return int(WEIGHT_BYTES[weights] * matrices + 4 * norms)


def run_worker(name: str, args: argparse.Namespace) -> dict:
    if name == "transformers" and not all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        return {"runtime": RUNTIMES[name], "error": NOT_INSTALLED}
    if name in LLAMA_CPP_TYPES:
        if not importlib.util.find_spec("llama_cpp"):
            return {"runtime": RUNTIMES[name], "error": LLAMA_CPP_MISSING}
        made = subprocess.run([sys.executable, __file__, "--requantize", name], cwd=ROOT, capture_output=True,
                              text=True)  # outside the worker, so its memory is not the worker's
        if made.returncode:
            raise SystemExit(f"requantizing for {name} failed:\n{made.stdout}{made.stderr}")
    if name == "vision":
        subprocess.run([sys.executable, "-c", "from models.catalog import DEFAULT_CPU_WEIGHTS, VISION_MODEL, "
                        "prepare_model; prepare_model(VISION_MODEL, weights=DEFAULT_CPU_WEIGHTS)"], cwd=ROOT, check=True)
    command = [sys.executable, __file__, "--worker", name, "--runs", str(args.runs),
               "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
    out = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if out.returncode:  # one runtime's crash (llama.cpp's AMX kernels, say) must not lose the others' figures
        print(f"the {name} worker failed (exit {out.returncode}); its error, if any, is above", file=sys.stderr)
        return {"runtime": RUNTIMES[name], "error": f"failed (exit {out.returncode})"}
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def busy_core(share: float):
    """Another process keeps `share` of one core busy while the block runs."""
    burner = subprocess.Popen([sys.executable, __file__, "--burn", str(share)])
    try:
        yield
    finally:
        burner.kill()
        burner.wait()


def burn(share: float, period_s: float = 0.005) -> None:
    while True:
        until = time.perf_counter() + share * period_s
        while time.perf_counter() < until:
            pass
        time.sleep((1 - share) * period_s)


def slowdown(quiet: dict, busy: dict) -> str:
    return (f"{quiet['runtime']}: decode {busy['decode_tok_s']:.1f} tok/s under load, "
            f"{busy['decode_tok_s'] / quiet['decode_tok_s']:.2f}x its quiet rate; first token "
            f"{busy['first_token_ms']:.1f} ms, {busy['first_token_ms'] / quiet['first_token_ms']:.2f}x its quiet time")


def table(rows: list[dict], arch: dict) -> str:
    lines = ["| runtime | load s | first token ms | decode tok/s | weight GB/s | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['runtime']} | {r['error']} | | | | |")
            continue
        gbs = weight_bytes_per_token(arch, r["weights"]) * r["decode_tok_s"] / 1e9
        lines.append(f"| {r['runtime']} | {r['load_s']:.2f} | {r['first_token_ms']:.1f} | "
                     f"{r['decode_tok_s']:.1f} | {gbs:.2f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def comparison(ours: dict, theirs: dict) -> str:
    agree = next((i for i, (a, b) in enumerate(zip(ours["tokens"], theirs["tokens"])) if a != b),
                 len(ours["tokens"]))
    return (f"{ours['runtime']} vs {theirs['runtime']}: decode {ours['decode_tok_s'] / theirs['decode_tok_s']:.2f}x, "
            f"first token {theirs['first_token_ms'] / ours['first_token_ms']:.2f}x faster; "
            f"peak RSS {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x; "
            f"greedy tokens agree for the first {agree} of {len(ours['tokens'])}")


def main(args: argparse.Namespace) -> None:
    from models.store import read_config

    config = read_config(export_once())
    names = args.only or [*RUNTIMES, "vision"]
    rows = [run_worker(name, args) for name in names if name in RUNTIMES]
    bytes_per_token = weight_bytes_per_token(config["architecture"])
    measured = [r for r in rows if "error" not in r]
    prompt = ", ".join(sorted({str(r["prompt_tokens"]) for r in measured})) or "?"
    print(f"{config['name']} ({config['source']['file']}, dequantized to fp32): prompt {prompt} tokens, "
          f"{args.new_tokens} new tokens, {args.threads} threads, median of {args.runs} runs after 1 warm-up")
    print(f"weight bytes per decoded token: {bytes_per_token / 1e6:.0f} MB in fp32 "
          f"(layers + final norm + lm_head matrix; embedding row and KV cache not counted)\n")
    print(table(rows, config["architecture"]))
    by_name = {name: r for name, r in zip([n for n in names if n in RUNTIMES], rows) if "error" not in r}
    for ours, theirs in COMPARED:
        if ours in by_name and theirs in by_name:
            print(comparison(by_name[ours], by_name[theirs]))
    busy_rows = None
    if args.busy:
        with busy_core(args.busy):
            busy_rows = [run_worker(name, args) for name in by_name]
        busy = {name: r for name, r in zip(by_name, busy_rows) if "error" not in r}
        print(f"\nthe same, while another process keeps {args.busy:.0%} of a core busy:")
        for name in busy:
            print(slowdown(by_name[name], busy[name]))
        for ours, theirs in COMPARED:
            if ours in busy and theirs in busy:
                print(comparison(busy[ours], busy[theirs]))
    if any(name in by_name for name in LLAMA_CPP_TYPES):
        from language.tokenizers import load_tokenizer
        from models.catalog import TEXT_MODEL

        tokenizer = load_tokenizer(TEXT_MODEL)
        for name in (n for n in LLAMA_CPP_TYPES if n in by_name):  # a wrong logits row would show here
            print(f"{RUNTIMES[name]} greedy text: {tokenizer.decode(by_name[name]['tokens'][:24])!r}")
    from models.catalog import VISION_ADAPTER

    seeing = run_worker("vision", args) if "vision" in names and VISION_ADAPTER.is_file() else None
    if seeing and "error" in seeing:
        print(f"\n(vision part {seeing['error']})")
    elif seeing:
        print("\n" + vision_table(seeing))
    elif "vision" in names:
        print(f"\n(vision part skipped: {VISION_ADAPTER} is not there)")
    if args.json:
        result = {"model": config["name"], "prompt": PROMPT, "new_tokens": args.new_tokens, "runs": args.runs,
                  "threads": args.threads, "weight_bytes_per_token": bytes_per_token, "rows": rows,
                  "busy": args.busy, "busy_rows": busy_rows, "vision": seeing}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up (default 5)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run (default 64)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for both runtimes")
    p.add_argument("--only", nargs="+", choices=[*RUNTIMES, "vision"], help="run these parts only")
    p.add_argument("--busy", type=float, metavar="SHARE",
                   help="also measure each runtime while another process keeps this share of a core busy")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    p.add_argument("--burn", type=float, help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=[*RUNTIMES, "vision"], help=argparse.SUPPRESS)
    p.add_argument("--requantize", choices=list(LLAMA_CPP_TYPES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.runs < 1 or args.new_tokens < 2 or args.threads < 1:
        p.error("--runs and --threads must be at least 1, --new-tokens at least 2")
    if args.busy is not None and not 0 < args.busy <= 1:
        p.error("--busy must be a share of a core, above 0 and at most 1")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.burn:
        burn(arguments.burn)
    elif arguments.requantize:
        requantized_gguf(arguments.requantize)
    elif arguments.worker == "vision":
        print(json.dumps(vision_worker(arguments.runs, arguments.threads)))
    elif arguments.worker:
        print(json.dumps(worker(arguments.worker, arguments.runs, arguments.new_tokens, arguments.threads)))
    else:
        main(arguments)
