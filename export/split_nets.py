"""The split every language model is exported as, and the loop that writes its nets.

Families differ in what each net computes; the names, their order and how they are written
to a model directory are the same for all of them. The token embedding is written as a host
table (`embedding.npy`, language/embedding.py) rather than as the `embedding` /
`embedding_cache` nets: on a CPU both give the same rows, and the table saves the two ONNX
Runtime sessions' copies of it (measured on SmolLM2-135M: peak RSS 1.99 GB -> 1.64-1.72 GB,
decode speed unchanged). compile/bmodel.py builds the nets from the table when a bmodel
should hold them. Sophgo's prebuilt layout (export/chatglm3_layout.py) keeps its nets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from export.onnx_graph import Dim, Graph
from language.embedding import TABLE_FILE

Progress = Callable[[int, int, str], None]
NetBuilder = Callable[[], Graph]


def net_names(num_layers: int, host_embedding: bool = True, history_prefill: bool = False) -> list[str]:
    """What an export writes, in order: the embedding (table or nets), the layers, lm_head.
    `history_prefill`: each layer also has `block_kv_<i>`, a prefill after cached rows."""
    kinds = ("block", "block_cache") + (("block_kv",) if history_prefill else ())
    layers = [f"{kind}_{i}" for i in range(num_layers) for kind in kinds]
    embedding = [TABLE_FILE] if host_embedding else ["embedding", "embedding_cache"]
    return [*embedding, *layers, "lm_head"]


def embedding_net(table: np.ndarray, table_name: str, name: str, length: Dim,
                  output: str = "hidden_states") -> Graph:
    """`embedding` (length "seq") or `embedding_cache` (length 1): a row lookup in `table`."""
    g = Graph(name)
    ids = g.input("input_ids", np.int32, [1, length])
    table_id = g.weight(np.asarray(table, np.float32), table_name)
    g.output(g.op("Gather", table_id, ids), output, np.float32, [1, length, table.shape[1]])
    return g


def save_table(table: np.ndarray, path: Path) -> Path:
    """Write a [V, H] table as .npy (written beside, then renamed: never left half-written)."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        np.save(file, table)
    partial.replace(path)
    return path


def write_nets(out_dir: Path, num_layers: int, block: Callable[[int], Graph], block_cache: Callable[[int], Graph],
               lm_head: NetBuilder, embedding_table: Callable[[], np.ndarray] | None = None,
               embedding: NetBuilder | None = None, embedding_cache: NetBuilder | None = None,
               block_kv: Callable[[int], Graph] | None = None, progress: Progress | None = None) -> list[Path]:
    """Build and save each net in turn (one net's weights in memory at a time); returns the
    files written. The embedding is `embedding_table` (-> embedding.npy, float32) or the two
    net builders. `block_kv`: the prefill after cached rows, for families whose cached rows stay
    valid when a prompt grows (causal attention, positions that do not depend on its length)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    host = embedding_table is not None
    if host == (embedding is not None or embedding_cache is not None):
        raise ValueError("give either the embedding table or both embedding nets")
    writers: dict[str, Callable[[], Path]] = {"lm_head": lambda: lm_head().save(out_dir / "lm_head.onnx")}
    if host:
        writers[TABLE_FILE] = lambda: save_table(np.asarray(embedding_table(), np.float32), out_dir / TABLE_FILE)
    else:
        writers["embedding"] = lambda: embedding().save(out_dir / "embedding.onnx")
        writers["embedding_cache"] = lambda: embedding_cache().save(out_dir / "embedding_cache.onnx")
    for i in range(num_layers):
        writers[f"block_{i}"] = lambda i=i: block(i).save(out_dir / f"block_{i}.onnx")
        writers[f"block_cache_{i}"] = lambda i=i: block_cache(i).save(out_dir / f"block_cache_{i}.onnx")
        if block_kv is not None:
            writers[f"block_kv_{i}"] = lambda i=i: block_kv(i).save(out_dir / f"block_kv_{i}.onnx")
    names = net_names(num_layers, host, block_kv is not None)
    written = []
    for n, name in enumerate(names):
        if progress:
            progress(n, len(names), name)
        written.append(writers[name]())
    if progress:
        progress(len(names), len(names), "done")
    return written
