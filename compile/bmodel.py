"""Compile a model's ONNX nets into one bmodel for a Sophgo TPU, with tpu-mlir.

    python -m compile.bmodel MODEL OUT_DIR [--quantize W4BF16] [--group-size 64] [--chip bm1684x]
                             [--prefill-widths 64,128,...] [--embedding host|device]
                             [--head-quantize MODE] [--vision-quantize MODE] [--layers N] [--jobs 2] [--work DIR]

MODEL is a catalog name (exported first if needed) or a model directory. OUT_DIR gets one
bmodel holding every net (vision included), the host embedding table when the embedding
stays off the device, and a config.json naming the prompt family and tokenizer, with the
compiler's estimates and the bmodel's device memory; the app runs it with
`--backend sail --bmodel OUT_DIR/<file>.bmodel`. At the end it prints compile/report.py's
report: device memory against the boards, projected speed.

Per net: model_transform (ONNX -> MLIR, static shapes; onnx-simplifier skipped: it held
about ten copies of a real-size lm_head in RAM and was killed at 24 GB) then model_deploy
(MLIR -> bmodel), each in its own work folder; then model_tool --combine.

- Bmodels are static, so the prefill is compiled at several widths (`--prefill-widths`):
  `block_<i>` at the widest, `block_<i>_<W>` at each narrower one; a prompt runs through the
  narrowest that takes it (language/generate.py).
- An export with `block_kv_<i>` nets (llama: a prefill after cached rows, for a follow-up's
  new tokens) gets them compiled at the narrowest width only, as `block_kv_<i>`: a follow-up
  is usually short, and a longer one can go through it in chunks.
- A layer's prefill, decode and history-prefill nets, and all its prefill widths, come out with
  the same coefficient blob, which model_tool --combine stores once: one copy of each layer's weights.
- Weight-only modes (W8*, W4*) quantize the transformer blocks; lm_head and the vision net
  take --head-quantize / --vision-quantize (default: W8 with the mode's float type when the
  blocks are weight-quantized, else the float type; see head_mode).
- The embedding stays on the host by default (`--embedding host`): a table in the model's
  float type beside the bmodel, rows looked up by the CPU and uploaded (language/embedding.py);
  `--embedding device` compiles the `embedding` nets instead.
- Hidden states, the KV cache and the image rows are kept in the float type on the device
  (--quant_input/--quant_output); token ids and positions stay int32, and lm_head's output is
  left as the net makes it (fp32 logits, or an int32 token for heads that pick it on the chip).

`--layers N` compiles only the first N layers: a probe of a model too large to compile
whole here; its config.json says so, the runtime refuses it and the report extrapolates.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from compile.bmodel_info import read_bmodel_info
from compile.toolchain import ToolRun, run_tool
from export.split_nets import embedding_net, save_table
from language.embedding import TABLE_FILE, bucket_net, read_table
from models.store import read_config, write_config
from runtime.backend import BFLOAT16, ModelFileError, to_bfloat16_bits
from runtime.tpu_mlir import VERSION, find_toolchain

QUANTIZE = ("F16", "BF16", "W8F16", "W8BF16", "W4F16", "W4BF16")
CHIPS = ("bm1684x", "bm1688", "cv186x")
EMBEDDING = ("host", "device")
BMODEL_SUFFIX = ".bmodel"
SMALLEST_BUCKET = 64


@dataclass(frozen=True)
class NetPlan:
    name: str  # the net's name in the bmodel
    onnx: Path
    input_shapes: list[list[int]]
    quantize: str
    quant_input: bool
    quant_output: bool


def input_shapes(path: Path, prefill_width: int, history: int = 0) -> list[list[int]]:
    """The net's input shapes with every run-time dimension set to the prefill width; with
    `history` (block_kv: new rows after that many cache rows), the attention mask's run-time
    width, which spans the cache rows and the new ones, to history + the prefill width."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    shapes = []
    for tensor in graph.input:
        if tensor.name in initializers:
            continue
        dims = tensor.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else prefill_width for d in dims]
        if history and tensor.name == "attention_mask" and not dims[-1].HasField("dim_value"):
            shape[-1] += history
        shapes.append(shape)
    return shapes


def cache_length(model_dir: Path) -> int:
    """Rows of the KV cache: block_cache_0's attention mask covers them plus the new token."""
    return input_shapes(model_dir / "block_cache_0.onnx", 0)[2][-1] - 1


def default_widths(context: int) -> list[int]:
    """64, 128, ... up to the context (which is always one of them)."""
    widths, width = [], SMALLEST_BUCKET
    while width < context:
        widths.append(width)
        width *= 2
    return widths + [context]


def float_type(quantize: str) -> str:
    return "BF16" if quantize.endswith("BF16") else "F16"


def head_mode(quantize: str) -> str:
    """lm_head's and the vision net's default: 8-bit weights when the blocks are weight-quantized.

    At VisualGLM-6B's size they hold 1.07 GB and 2.19 GB in BF16; in W8BF16 half that, which
    takes the model from 7.1 to 5.4 GB of device memory at a 1024-token context (bench/real_size.py),
    and 8-bit weights with 16-bit activations stay within cosine 0.999 of the float nets."""
    return f"W8{float_type(quantize)}" if quantize.startswith("W") else float_type(quantize)


def exported_layers(model_dir: Path) -> int:
    layers = 0
    while (model_dir / f"block_{layers}.onnx").is_file():
        layers += 1
    if not layers:
        raise ModelFileError(f"{model_dir} has no block_0.onnx: not a model directory of this project")
    return layers


def plan(model_dir: Path, quantize: str, widths: list[int], layers: int, embedding_dir: Path | None,
         head_quantize: str | None = None, vision_quantize: str | None = None) -> list[NetPlan]:
    """Every net to compile: each layer's prefill at every width, its decode net and, when the
    export has them, its history prefill (block_kv) at the narrowest width; lm_head, vision, and
    the embedding nets when `embedding_dir` holds them (device embedding)."""
    floats, heads = float_type(quantize), head_mode(quantize)
    widest = max(widths)
    cache_rows = cache_length(model_dir) if (model_dir / "block_kv_0.onnx").is_file() else 0

    def net(name: str, path: Path, width: int, mode: str, history: int = 0) -> NetPlan:
        return NetPlan(name, path, input_shapes(path, width, history), mode,
                       quant_input=not name.startswith("vision"),  # pixels go up as fp32
                       quant_output=name != "lm_head")  # logits come down as fp32

    plans = []
    for i in range(layers):
        plans += [net(bucket_net(f"block_{i}", w, widest), model_dir / f"block_{i}.onnx", w, quantize) for w in widths]
        plans.append(net(f"block_cache_{i}", model_dir / f"block_cache_{i}.onnx", 1, quantize))
        if cache_rows:
            plans.append(net(f"block_kv_{i}", model_dir / f"block_kv_{i}.onnx", min(widths), quantize, cache_rows))
    plans.append(net("lm_head", model_dir / "lm_head.onnx", 1, head_quantize or heads))
    if (model_dir / "vision.onnx").is_file():
        plans.append(net("vision", model_dir / "vision.onnx", 1, vision_quantize or heads))
    if embedding_dir is not None:
        plans += [net(bucket_net("embedding", w, widest), embedding_dir / "embedding.onnx", w, floats) for w in widths]
        plans.append(net("embedding_cache", embedding_dir / "embedding_cache.onnx", 1, floats))
    return plans


@dataclass(frozen=True)
class Compiled:
    """One net's bmodel, the compiler's runtime estimate (ms) and what the compile cost."""
    bmodel: Path
    estimate_ms: float | None
    transform: ToolRun
    deploy: ToolRun
    work_bytes: int  # the net's work folder at its largest (before intermediates are removed)
    bmodel_bytes: int

    def stats(self) -> dict:
        return {"estimate_ms": self.estimate_ms, "bmodel_bytes": self.bmodel_bytes,
                "transform_s": round(self.transform.seconds, 1), "deploy_s": round(self.deploy.seconds, 1),
                "peak_rss_bytes": max(self.transform.peak_rss, self.deploy.peak_rss), "work_bytes": self.work_bytes}


INTERMEDIATES = ("*.npz", "*_external_data", "*_opt.onnx")  # the tools' copies of the weights: GBs at real size


PLATFORMS = ("LLM", "ONNX")  # how a block's MLIR is marked for model_deploy, in the order tried


def compile_net(home: Path, net: NetPlan, chip: str, group_size: int, work: Path, keep: bool = True,
                platform: str = "ONNX") -> Compiled:
    """ONNX -> MLIR in work/<net> (reused when an earlier compile made it from the same file and
    shapes), MLIR -> bmodel in work/<net>/<chip>-<mode>-<platform>. With keep=False the tools'
    copies of the weights are removed once the bmodel is written (several times the net's size).
    `platform`: what the MLIR says it came from (see same_coefficients for why it matters)."""
    folder = work / net.name
    transform = _transform(home, net, folder)
    mode = net.quantize.lower() + (f"-g{group_size}" if net.quantize.startswith("W4") else "")
    target = folder / f"{chip}-{mode}-{platform.lower()}"
    target.mkdir(parents=True, exist_ok=True)
    mlir = (folder / f"{net.name}.mlir").read_text()
    (target / f"{net.name}.mlir").write_text(mlir.replace('module.platform = "ONNX"', f'module.platform = "{platform}"', 1))
    weights = target / f"{net.name}_top_f32_all_weight.npz"  # the MLIR names its weight file, beside it
    weights.unlink(missing_ok=True)
    weights.symlink_to(folder / weights.name)
    deploy = ["--mlir", f"{net.name}.mlir", "--quantize", net.quantize, "--chip", chip,
              "--model", f"{net.name}{BMODEL_SUFFIX}"]
    if net.quantize.startswith("W4"):
        deploy += ["--q_group_size", str(group_size)]
    if net.quant_input:
        deploy.append("--quant_input")
    if net.quant_output:
        deploy.append("--quant_output")
    deployed = run_tool(home, "model_deploy.py", deploy, target)
    work_bytes = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    for pattern in INTERMEDIATES:  # the transform's MLIR weights stay if kept: a later compile reuses them
        for path in [*target.glob(pattern), *(p for p in folder.glob(pattern) if not keep or p.suffix != ".npz")]:
            path.unlink()
    bmodel = target / f"{net.name}{BMODEL_SUFFIX}"
    return Compiled(bmodel, _estimated_ms(target / "compiler_profile_0.txt"), transform, deployed, work_bytes,
                    bmodel.stat().st_size)


def _transform(home: Path, net: NetPlan, folder: Path) -> ToolRun:
    """model_transform of the net into `folder`, unless it holds one of the same ONNX file and shapes."""
    source = net.onnx.resolve()
    stamp = json.dumps({"onnx": str(source), "size": source.stat().st_size, "mtime": source.stat().st_mtime_ns,
                        "shapes": net.input_shapes, "tpu_mlir": VERSION})
    done = folder / "transform.json"
    if done.is_file() and done.read_text() == stamp and (folder / f"{net.name}_top_f32_all_weight.npz").is_file():
        return ToolRun(0.0, 0)
    folder.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    shapes = "[" + ",".join("[" + ",".join(map(str, s)) + "]" for s in net.input_shapes) + "]"
    transform = run_tool(home, "model_transform.py",
                         ["--model_name", net.name, "--model_def", str(source), "--input_shapes", shapes,
                          "--mlir", f"{net.name}.mlir", "--do_onnx_sim", ""], folder)  # an empty value is false there
    if 'module.platform = "ONNX"' not in (folder / f"{net.name}.mlir").read_text():
        raise RuntimeError(f"{folder / net.name}.mlir has no ONNX platform attribute: this tpu-mlir writes its MLIR "
                           "differently from the one this project was written for")
    done.write_text(stamp)
    return transform


def same_coefficients(home: Path, *bmodels: Path) -> bool:
    """Whether one-net bmodels all hold byte-identical coefficients (model_tool --combine then keeps one copy).

    A layer's prefill, decode and history-prefill nets come from the same weights, but
    model_deploy orders a net's weights by passes that look at the graph around them: for GLM
    its topological re-sort (skipped for the vendor's "LLM" platform, as its own converter marks
    every net) swaps the first LayerNorm's weight and bias in the decode net; for llama's
    in-place decode attention only that re-sort puts the projections back in the prefill's
    order (block_kv, whose attention concatenates like the prefill's, agrees with the prefill on
    either platform). So each compile checks layer 0 (compile_model) and takes the platform
    that gives one copy."""
    blobs = [next(iter(read_bmodel_info(path, home).nets.values())).stages[0].coeff for path in bmodels]
    return blobs[0].check_code != () and all((b.size, b.check_code) == (blobs[0].size, blobs[0].check_code)
                                             for b in blobs[1:])


def _estimated_ms(profile: Path) -> float | None:
    """The static compiler's own time estimate at 1 GHz (see compile/report.py for how it is read)."""
    if not profile.is_file():
        return None
    found = re.findall(r"runtime:\s*([\d.]+)\s*ms", profile.read_text(errors="replace"))
    return float(found[-1]) if found else None


def bmodel_name(model_name: str, chip: str, quantize: str) -> str:
    return f"{model_name}_{chip}_{quantize.lower()}{BMODEL_SUFFIX}"


def device_table(table: np.ndarray, quantize: str) -> np.ndarray:
    """The host embedding table in the float type the nets take on the device."""
    rows = np.asarray(table, np.float32)
    return to_bfloat16_bits(rows).view(BFLOAT16) if float_type(quantize) == "BF16" else rows.astype(np.float16)


def write_embedding_nets(table: np.ndarray, folder: Path) -> Path:
    """The `embedding` (any width) and `embedding_cache` nets over the table, as ONNX in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    embedding_net(table, "word_embeddings", "embedding", "seq").save(folder / "embedding.onnx")
    embedding_net(table, "word_embeddings", "embedding_cache", 1).save(folder / "embedding_cache.onnx")
    return folder


def output_shape(path: Path) -> list[int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]


def template_tokens(config: dict, image_rows: int) -> int:
    """Prompt tokens around a question, the picture's rows included: by the model's own
    tokenizer and family when it is installed, else the rows plus GLM's dozen."""
    try:
        from language.families import load_family
        from language.tokenizers import load_tokenizer

        family = load_family(config["family"], load_tokenizer(config["tokenizer"]))
        return len(family.encode([], "", image_rows).ids)
    except Exception:  # noqa: BLE001 - no tokenizer files here (e.g. VisualGLM-6B's): an estimate will do
        return image_rows + 12


def model_shapes(model_dir: Path, config: dict, layers: int, context: int) -> dict:
    """What the report needs to size the KV cache and the loop's buffers."""
    history = input_shapes(model_dir / "block_cache_0.onnx", 0)[3]
    vision = model_dir / "vision.onnx"
    image_rows = output_shape(vision)[1] if vision.is_file() else 0
    return {"layers": layers, "hidden": input_shapes(model_dir / "block_cache_0.onnx", 0)[0][-1],
            "row": int(np.prod(history[2:])), "context": context, "item_bytes": 2,
            "vocab": output_shape(model_dir / "lm_head.onnx")[-1], "image_rows": image_rows,
            "template_tokens": template_tokens(config, image_rows)}


def one_copy_per_layer(home: Path, nets: list[NetPlan], compile_one, progress) -> tuple[dict[str, Compiled], str]:
    """Compile layer 0's widest prefill net, decode net and history prefill (if planned) on each
    platform in turn until their coefficients are byte-identical; returns those results and the
    platform for every block."""
    layer0 = [n for n in nets if n.name in ("block_0", "block_cache_0", "block_kv_0")]
    for platform in PLATFORMS:
        compiled = {}
        for net in layer0:  # on to the next platform as soon as one net's coefficients differ
            compiled[net.name] = compile_one(net, platform)
            if not same_coefficients(home, *(c.bmodel for c in compiled.values())):
                break
        else:
            return compiled, platform
    progress(f"  warning: layer 0's {', '.join(n.name for n in layer0)} compile to different coefficients on "
             "every platform: the bmodel holds each layer's weights more than once")
    return compiled, PLATFORMS[-1]


def compile_model(model_dir: Path, out_dir: Path, quantize: str = "W4BF16", chip: str = "bm1684x",
                  group_size: int = 64, prefill_widths: list[int] | None = None, embedding: str | None = None,
                  head_quantize: str | None = None, vision_quantize: str | None = None, layers: int | None = None,
                  jobs: int = 2, work_dir: Path | None = None, progress=print) -> Path:
    """Compile the nets of `model_dir` and combine them into one bmodel in `out_dir`.
    `work_dir`: keep each net's MLIR and bmodel there (and reuse the MLIRs of an earlier compile
    of the same files: another chip or mode costs only model_deploy); None works in a temporary
    folder and removes it."""
    for name, value, allowed in (("--quantize", quantize, QUANTIZE), ("--head-quantize", head_quantize, QUANTIZE),
                                 ("--vision-quantize", vision_quantize, QUANTIZE), ("--chip", chip, CHIPS),
                                 ("--embedding", embedding, EMBEDDING)):
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}")
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if config.get("weights", "fp32") != "fp32":
        raise ValueError(f"{model_dir} holds the CPU's {config['weights']} nets (ONNX Runtime's MatMulNBits), which "
                         f"the TPU compiler cannot read: compile the float32 export (the model's name, or its "
                         f"directory without the -{config['weights']} suffix)")
    home = find_toolchain()
    context = cache_length(model_dir)
    widths = sorted(set(prefill_widths or default_widths(context)))
    if widths[0] < 1 or widths[-1] > context:
        raise ValueError(f"prefill widths must lie between 1 and the context ({context}); got {widths}")
    exported = exported_layers(model_dir)
    total_layers = config.get("architecture", {}).get("num_layers", exported)
    compiled_layers = min(layers or exported, exported)
    table = read_table(model_dir)
    embedding = embedding or ("host" if table is not None else "device")
    out_dir.mkdir(parents=True, exist_ok=True)
    keep_work = work_dir is not None
    work = Path(work_dir) if keep_work else Path(tempfile.mkdtemp(prefix="bmodel-", dir=out_dir))
    started = time.perf_counter()
    try:
        embedding_dir = None
        if embedding == "device":
            embedding_dir = model_dir if table is None else write_embedding_nets(table, work / "embedding-onnx")
        elif table is None:
            raise ModelFileError(f"{model_dir} has embedding nets but no host table ({TABLE_FILE}): "
                                 "compile it with --embedding device")
        nets = plan(model_dir, quantize, widths, compiled_layers, embedding_dir, head_quantize, vision_quantize)

        def one(net: NetPlan, platform: str = "ONNX") -> Compiled:
            result = compile_net(home, net, chip, group_size, work, keep=keep_work, platform=platform)
            progress(f"  {net.name}: {net.quantize}, estimate {result.estimate_ms} ms, "
                     f"{result.transform.seconds + result.deploy.seconds:.0f} s, "
                     f"peak {max(result.transform.peak_rss, result.deploy.peak_rss) / 2**30:.1f} GB "
                     f"({time.perf_counter() - started:.0f} s in all)")
            return result

        results, block_platform = one_copy_per_layer(home, nets, one, progress)
        rest = [n for n in nets if n.name not in results]
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results |= dict(zip((n.name for n in rest),
                                pool.map(lambda n: one(n, block_platform if n.name.startswith("block_") else "ONNX"),
                                         rest)))
        results = {n.name: results[n.name] for n in nets}
        target = out_dir / bmodel_name(config.get("name", model_dir.name), chip, quantize)
        partial = target.with_suffix(".partial")
        run_tool(home, "model_tool", ["--combine", *(str(r.bmodel) for r in results.values()), "-o", str(partial)],
                 work)
        partial.replace(target)
        if embedding == "host":
            save_table(device_table(table, quantize), out_dir / TABLE_FILE)
        else:
            (out_dir / TABLE_FILE).unlink(missing_ok=True)
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    info = read_bmodel_info(target, home)
    write_config(out_dir, {
        **{k: v for k, v in config.items() if k != "export_version"},
        "bmodel": target.name, "chip": chip, "quantize": quantize,
        "group_size": group_size if "W4" in (quantize, head_quantize, vision_quantize) else None,
        "head_quantize": head_quantize or head_mode(quantize), "vision_quantize": vision_quantize or head_mode(quantize),
        "prefill_widths": widths, "embedding": embedding, "tpu_mlir": VERSION, "block_platform": block_platform,
        "estimated_ms": {name: r.estimate_ms for name, r in results.items() if r.estimate_ms is not None},
        "compile_stats": {name: r.stats() for name, r in results.items()},
        "device_memory": dataclasses.asdict(info.device),
        "layer_weight_bytes": info.nets["block_cache_0"].stages[0].coeff.size,
        "layer_instruct_bytes": sum(stage.instruct for name, net in info.nets.items()
                                    if re.fullmatch(r"block_(cache_|kv_)?0(_\d+)?", name) for stage in net.stages),
        "shapes": model_shapes(model_dir, config, total_layers, context),
        **({"partial": {"layers": compiled_layers, "of": total_layers}} if compiled_layers < total_layers else {}),
    })
    progress(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - started:.0f} s")
    return target


def parse_widths(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 64,128,512; got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    from compile.report import print_report
    from models.catalog import prepare_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="catalog name or model directory")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--quantize", choices=QUANTIZE, default="W4BF16", help="the transformer blocks")
    parser.add_argument("--head-quantize", choices=QUANTIZE,
                        help="lm_head (default: W8 in the float type of --quantize when that is W8/W4, else the float type)")
    parser.add_argument("--vision-quantize", choices=QUANTIZE, help="the vision net (default: as lm_head)")
    parser.add_argument("--group-size", type=int, default=64, help="weights per scale for W4 modes")
    parser.add_argument("--chip", choices=CHIPS, default="bm1684x")
    parser.add_argument("--prefill-widths", type=parse_widths,
                        help="prompt widths to compile the prefill at, e.g. 64,256,1024 (default: 64, 128, ... the context)")
    parser.add_argument("--embedding", choices=EMBEDDING,
                        help="where the token embedding lives (default: host, when the export has its table)")
    parser.add_argument("--layers", type=int, help="compile only the first N layers (a probe; not runnable)")
    parser.add_argument("--jobs", type=int, default=2, help="nets compiled side by side")
    parser.add_argument("--work", type=Path, help="keep per-net folders (MLIR, compiler profiles) here; an earlier "
                                                    "compile's MLIRs in it are reused")
    args = parser.parse_args(argv)
    try:
        model_dir = Path(args.model) if Path(args.model).is_dir() else prepare_model(args.model)
        target = compile_model(model_dir, args.out_dir, args.quantize, args.chip, args.group_size, args.prefill_widths,
                               args.embedding, args.head_quantize, args.vision_quantize, args.layers, args.jobs,
                               args.work)
    except (ModelFileError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print_report(target.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
