"""The split every language model is exported as, and the loop that writes its nets.

Families differ in what each net computes; the names, their order and how they are written
to a model directory are the same for all of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from export.onnx_graph import Dim, Graph

Progress = Callable[[int, int, str], None]
NetBuilder = Callable[[], Graph]


def net_names(num_layers: int) -> list[str]:
    layers = [f"{kind}_{i}" for i in range(num_layers) for kind in ("block", "block_cache")]
    return ["embedding", "embedding_cache", *layers, "lm_head"]


def embedding_net(table: np.ndarray, table_name: str, name: str, length: Dim) -> Graph:
    """`embedding` (length "seq") or `embedding_cache` (length 1): a row lookup in `table`."""
    g = Graph(name)
    ids = g.input("input_ids", np.int32, [1, length])
    table_id = g.weight(np.asarray(table, np.float32), table_name)
    g.output(g.op("Gather", table_id, ids), "hidden_states", np.float32, [1, length, table.shape[1]])
    return g


def write_nets(out_dir: Path, num_layers: int, embedding: NetBuilder, embedding_cache: NetBuilder,
               block: Callable[[int], Graph], block_cache: Callable[[int], Graph], lm_head: NetBuilder,
               progress: Progress | None = None) -> list[Path]:
    """Build and save each net in turn (one net's weights in memory at a time); returns the
    .onnx files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    builders: dict[str, NetBuilder] = {"embedding": embedding, "embedding_cache": embedding_cache, "lm_head": lm_head}
    for i in range(num_layers):
        builders[f"block_{i}"] = lambda i=i: block(i)
        builders[f"block_cache_{i}"] = lambda i=i: block_cache(i)
    names = net_names(num_layers)
    written = []
    for n, name in enumerate(names):
        if progress:
            progress(n, len(names), name)
        written.append(builders[name]().save(out_dir / f"{name}.onnx"))
    if progress:
        progress(len(names), len(names), "done")
    return written
