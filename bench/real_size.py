"""VisualGLM-6B at its real size through the whole TPU toolchain, without the 16 GB download.

    python bench/real_size.py WORK_DIR [--chips bm1684x bm1688] [--configs w4 w4-w8heads ...]

1. A seeded random-weight checkpoint with the real config and parameter names, in Hugging Face
   shards (models/random_visualglm.py; 15.6 GB, written once into WORK_DIR/checkpoint).
2. The converter, as a user runs it, for the first layer only (a probe: the embedding table,
   block_0 / block_cache_0, lm_head and the vision net at their real sizes), context 1024.
3. compile.bmodel of that probe for every chip and configuration asked for, sharing one work
   folder so each net is transformed once and deployed once per chip and mode.
4. Per net: wall time of model_transform and model_deploy, peak RSS, work-folder size, bmodel
   size and the compiler's estimate; then each configuration's report (compile/report.py),
   extrapolated from the one layer to all 28. Everything also goes to WORK_DIR/real_size.json.

Needs ~35 GB of disk and ~13 GB of RAM (the vision net's transform); takes about an hour and a
half on 2 cores. Timings are wall-clock on whatever else the machine is doing.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compile.bmodel import compile_model  # noqa: E402
from compile.report import render  # noqa: E402
from models.random_visualglm import write_random_visualglm  # noqa: E402
from models.store import read_config  # noqa: E402
from models.visualglm_checkpoint import convert  # noqa: E402

CONTEXT = 1024
CONFIGS = {  # name -> (blocks, lm_head, vision, embedding)
    "w4": ("W4BF16", "BF16", "BF16", "host"),
    "w4-w8heads": ("W4BF16", "W8BF16", "W8BF16", "host"),
    "w4-all": ("W4BF16", "W4BF16", "W4BF16", "host"),
    "w8": ("W8BF16", "W8BF16", "W8BF16", "host"),
    "w4-w8heads-device-embedding": ("W4BF16", "W8BF16", "W8BF16", "device"),
}


def probe(work: Path) -> Path:
    checkpoint, model = work / "checkpoint", work / "visualglm-6b-1layer"
    if not (checkpoint / "config.json").is_file():
        started = time.perf_counter()
        write_random_visualglm(checkpoint)
        print(f"random checkpoint: {time.perf_counter() - started:.0f} s", flush=True)
    if not (model / "config.json").is_file():
        started = time.perf_counter()
        convert(checkpoint, model, CONTEXT, layers=1, progress=lambda line: print(line, flush=True))
        print(f"probe conversion: {time.perf_counter() - started:.0f} s, peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB", flush=True)
    return model


def net_table(results: dict[str, dict]) -> str:
    lines = ["| chip | config | net | mode | transform s | deploy s | peak RSS GB | work GB | bmodel MB | estimate ms |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, config in results.items():
        chip, name = key.split("/")
        for net, stats in config["compile_stats"].items():
            mode = config["quantize"] if net.startswith("block") else (
                config["head_quantize"] if net == "lm_head" else config["vision_quantize"] if net == "vision" else
                "BF16")
            lines.append(f"| {chip} | {name} | {net} | {mode} | {stats['transform_s']} | {stats['deploy_s']} | "
                         f"{stats['peak_rss_bytes'] / 2**30:.1f} | {stats['work_bytes'] / 2**30:.2f} | "
                         f"{stats['bmodel_bytes'] / 2**20:.0f} | {stats['estimate_ms']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--chips", nargs="+", default=["bm1684x", "bm1688"])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = probe(args.work)
    results = {}
    for chip in args.chips:
        for name in args.configs:
            blocks, head, vision, embedding = CONFIGS[name]
            out = args.work / "compiled" / chip / name
            started = time.perf_counter()
            # The embedding nets' transforms (the 2 GB table, once per prefill width) are not kept.
            work_dir = args.work / "nets" if embedding == "host" else None
            compile_model(model, out, quantize=blocks, chip=chip, head_quantize=head, vision_quantize=vision,
                          embedding=embedding, jobs=1, work_dir=work_dir, progress=lambda line: print(line, flush=True))
            print(f"{chip} {name}: {time.perf_counter() - started:.0f} s\n", flush=True)
            results[f"{chip}/{name}"] = read_config(out)
            print(render(out), flush=True)
            (args.work / "real_size.json").write_text(json.dumps(results, indent=2))
    print(net_table(results))


if __name__ == "__main__":
    main()
