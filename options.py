"""Command-line options the web app and the terminal chat share: which model, on which
backend, with which generation settings; and opening the model they name."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from language.chat import ChatModel
from language.sampling import SamplingSettings
from models.catalog import DEFAULT_CPU_WEIGHTS, DEFAULT_MODEL, DEFAULT_SEQ_LEN
from models.cpu_weights import WEIGHTS
from runtime import BACKENDS, BMODEL_BACKENDS


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"model directory, or the name of a model this project assembles (default: {DEFAULT_MODEL})")
    group.add_argument("--backend", choices=BACKENDS, default=None,
                       help="runtime for the nets: onnx (CPU), sail (Sophgo TPU), sail-simulator (tpu-mlir's chip "
                            "simulator, no TPU, very slow) (default: onnx, or sail with --bmodel)")
    group.add_argument("--bmodel", type=Path, default=None,
                       help="compiled model for the TPU backends: a .bmodel made by compile.bmodel, "
                            "with its config.json beside it")
    group.add_argument("--dev-id", type=int, default=0, help="TPU device number for the sail backends (default: 0)")
    group.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime (default: all cores)")
    group.add_argument("--weights", choices=list(WEIGHTS), default=DEFAULT_CPU_WEIGHTS,
                       help="how a named model's nets keep their matrices on the CPU backend: float32, or "
                            f"8- or 4-bit blocks (default: {DEFAULT_CPU_WEIGHTS}; a model directory is used as it is)")
    group.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN,
                       help=f"context length when exporting the default model (default: {DEFAULT_SEQ_LEN})")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    d = SamplingSettings()
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    group.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=d.top_p)
    group.add_argument("--top-k", type=int, default=d.top_k, help="0 keeps every token")
    group.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    group.add_argument("--seed", type=int, default=None)


def sampling_from_args(args: argparse.Namespace) -> SamplingSettings:
    return SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)


def open_model(args: argparse.Namespace) -> tuple[SamplingSettings, ChatModel] | None:
    """The settings and the model the flags ask for, or None after saying what is wrong."""
    from models.loader import load_chat_model
    from models.catalog import prepare_model
    from runtime.sail_backend import import_sail

    backend = args.backend or ("sail" if args.bmodel else "onnx")
    try:
        settings = sampling_from_args(args)
        if backend == "sail":
            import_sail()  # before anything else: without sophon-sail nothing below can work
        if backend in BMODEL_BACKENDS:
            if args.bmodel is None:
                raise ValueError(f"--backend {backend} runs a compiled model: give it with --bmodel PATH "
                                 f"(make one with `python -m compile.bmodel {args.model} OUT_DIR`)")
            model_path = args.bmodel
        elif args.bmodel is not None:
            raise ValueError(f"--bmodel needs a TPU backend (sail or sail-simulator), not {backend}")
        else:
            model_path = prepare_model(args.model, seq_len=args.seq_len, weights=args.weights)
        return settings, load_chat_model(model_path, backend=backend, threads=args.threads, dev_id=args.dev_id)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
