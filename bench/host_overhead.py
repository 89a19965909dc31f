"""The host's own work per token on a TPU, measured with a sail whose device calls cost nothing.

    python bench/host_overhead.py [--tokens 200] [--runs 5] [--model visualglm-6b|smollm2]

The sail backend and the generation loop run exactly as on a board, over bench/null_sail.py:
nets do not run and copies move nothing, so the time measured is Python and numpy on the host
(the loop, the backend's argument handling, bf16 conversions of the mask and the uploaded
rows, the host embedding lookup, reading the logits back into numpy, sampling). On a board
the device's own time comes on top of it, and so does the driver's latency per call, which
this cannot see: the figures also count the calls per token.

Shapes are the real model's: VisualGLM-6B (28 GLM layers, hidden 4096, vocabulary 130528,
a context of 1024, BF16 on the device, prefill widths 64..1024; the embedding on the host,
then as nets on the device)
or the default model's language half (SmolLM2-135M: 30 layers, hidden 576, vocabulary 49152).
Times are medians over --runs of the mean per token; the machine's other work adds noise.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.null_sail import NetShapes, make_sail  # noqa: E402
from compile.bmodel import default_widths  # noqa: E402
from language.embedding import bucket_net  # noqa: E402
from language.families.glm import GlmFamily  # noqa: E402
from language.families.llama import LlamaFamily  # noqa: E402
from language.generate import Generator, ImageRows  # noqa: E402
from language.sampling import Sampler, SamplingSettings  # noqa: E402
from runtime.backend import BFLOAT16  # noqa: E402
from runtime.sail_backend import SailBackend  # noqa: E402

SETTINGS = {"greedy": SamplingSettings(temperature=0.0),
            "sampling (T 0.8, top-k 40, top-p 0.9, penalty 1.1)": SamplingSettings(temperature=0.8)}


def model_shapes(name: str) -> SimpleNamespace:
    if name == "visualglm-6b":
        return SimpleNamespace(layers=28, hidden=4096, kv_row=(32, 128), vocab=130528, context=1024,
                               position_rows=2, image_rows=32, prompt=75)
    return SimpleNamespace(layers=30, hidden=576, kv_row=(3, 64), vocab=49152, context=1024, position_rows=0,
                           image_rows=16, prompt=60)


def net_table(m: SimpleNamespace, device_embedding: bool) -> dict[str, NetShapes]:
    """The bmodel's nets as compile.bmodel makes them: BF16 on the device, fp32 logits, and the
    embedding nets when the embedding is on the device."""
    bf, i32 = BFLOAT16, np.dtype(np.int32)

    def positions(width: int) -> tuple[int, ...]:
        return (1, m.position_rows, width) if m.position_rows else (1, width)

    widths = default_widths(m.context)
    nets = {"lm_head": NetShapes({"hidden_states": ((1, 1, m.hidden), bf)},
                                 {"logits": ((1, m.vocab), np.dtype(np.float32))}),
            "vision": NetShapes({"pixel_values": ((1, 3, 224, 224), np.dtype(np.float32))},
                                {"image_embeds": ((1, m.image_rows, m.hidden), bf)})}
    if device_embedding:
        for w in widths:
            nets[bucket_net("embedding", w, widths[-1])] = NetShapes({"input_ids": ((1, w), i32)},
                                                                      {"hidden_states": ((1, w, m.hidden), bf)})
        nets["embedding_cache"] = NetShapes({"input_ids": ((1, 1), i32)}, {"hidden_states": ((1, 1, m.hidden), bf)})
    for i in range(m.layers):
        for w in widths:
            nets[bucket_net(f"block_{i}", w, widths[-1])] = NetShapes(
                {"input_states": ((1, w, m.hidden), bf), "position_ids": (positions(w), i32),
                 "attention_mask": ((1, 1, w, w), bf)},
                {"hidden_states": ((1, w, m.hidden), bf), "past_k": ((1, w, *m.kv_row), bf),
                 "past_v": ((1, w, *m.kv_row), bf)})
        nets[f"block_cache_{i}"] = NetShapes(
            {"input_states": ((1, 1, m.hidden), bf), "position_ids": (positions(1), i32),
             "attention_mask": ((1, 1, 1, m.context + 1), bf), "history_k": ((1, m.context, *m.kv_row), bf),
             "history_v": ((1, m.context, *m.kv_row), bf)},
            {"hidden_states": ((1, 1, m.hidden), bf), "present_k": ((1, 1, *m.kv_row), bf),
             "present_v": ((1, 1, *m.kv_row), bf)})
    return nets


class CountingBackend:
    """Counts the backend calls the loop makes, passing them through."""

    def __init__(self, backend):
        self._backend, self.calls = backend, Counter()

    def __getattr__(self, name):
        attr = getattr(self._backend, name)
        if name in ("run", "copy", "write", "read"):
            def counted(*args, **kwargs):
                self.calls[name] += 1
                return attr(*args, **kwargs)
            return counted
        return attr


def family_for(name: str):
    if name == "visualglm-6b":
        return GlmFamily(SimpleNamespace(encode=lambda text, add_special_tokens=False: []))
    from language.tokenizers import load_tokenizer

    return LlamaFamily(load_tokenizer("smollm2-135m-instruct"))


def measure(model: str, tokens: int, runs: int) -> None:
    m = model_shapes(model)
    print(f"{model}: {m.layers} layers, hidden {m.hidden}, vocabulary {m.vocab}, context {m.context}; "
          f"host time per call of a sail whose device calls cost nothing")
    with tempfile.TemporaryDirectory() as folder:
        table = np.lib.format.open_memmap(Path(folder) / "embedding.npy", "w+", BFLOAT16, (m.vocab, m.hidden))
        for where in ("host", "device"):
            backend = CountingBackend(SailBackend(Path(__file__), sail=make_sail(net_table(m, where == "device"))))
            generator = Generator(backend, family_for(model), table if where == "host" else None)
            generator.reuse_prefixes = False  # every run reads the whole prompt
            print(f" embedding on the {where}:")
            measure_loop(generator, backend, m, tokens, runs)


def measure_loop(generator: Generator, backend: CountingBackend, m: SimpleNamespace, tokens: int, runs: int) -> None:
    """Prefill of a prompt with a picture, then `tokens` decode steps, greedy and sampled."""
    image = ImageRows(backend.alloc((1, m.image_rows, m.hidden), BFLOAT16), 1)
    ids = list(range(1000, 1000 + m.prompt))
    for label, settings in SETTINGS.items():
        prefill_ms, decode_ms = [], []
        for _ in range(runs):
            sampler, seen = Sampler(settings), np.asarray(ids, np.int64)
            start = time.perf_counter()
            token = sampler(generator.prefill(ids, image), seen)
            prefill_ms.append((time.perf_counter() - start) * 1000)
            backend.calls.clear()
            start = time.perf_counter()
            for _ in range(tokens):
                seen = np.append(seen, token)
                token = sampler(generator.decode(token), seen)
            decode_ms.append((time.perf_counter() - start) * 1000 / tokens)
            per_token = {k: v / tokens for k, v in backend.calls.items()}
        calls = ", ".join(f"{v:g} {k}" for k, v in sorted(per_token.items()))
        print(f"  {label}: prefill of {m.prompt} tokens with a picture {statistics.median(prefill_ms):.2f} ms; "
              f"decode {statistics.median(decode_ms):.3f} ms/token ({calls} per token)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("visualglm-6b", "smollm2"), action="append")
    parser.add_argument("--tokens", type=int, default=200, help="decode steps per run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for model in args.model or ["visualglm-6b", "smollm2"]:
        measure(model, args.tokens, args.runs)


if __name__ == "__main__":
    main()
