"""The shipped file that turns SmolLM2 into a model that sees (written by training/train_vision.py).

It holds the vision tower's weights (`vision.*`), LoRA factors for the language model's
linear layers (`lora_a.<param>`, `lora_b.<param>` with the scale folded into B), and the
tower's config, all in one compressed .npz.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class VisionAdapter:
    vision_tensors: dict[str, np.ndarray]
    vision_config: dict
    lora: dict[str, tuple[np.ndarray, np.ndarray]]  # param name -> (A [r,in], B [out,r])


def read_vision_adapter(path: Path) -> VisionAdapter:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    config = json.loads(arrays.pop("config").tobytes().decode())
    vision = {k[len("vision."):]: v.astype(np.float32) for k, v in arrays.items() if k.startswith("vision.")}
    lora = {k[len("lora_a."):]: (v.astype(np.float32), arrays["lora_b." + k[len("lora_a."):]].astype(np.float32))
            for k, v in arrays.items() if k.startswith("lora_a.")}
    return VisionAdapter(vision, config, lora)


def merge_lora(tensors: dict[str, np.ndarray], lora: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """W + B @ A for every adapted weight; the others are passed through untouched."""
    missing = sorted(set(lora) - set(tensors))
    if missing:
        raise ValueError(f"the adapter does not fit this language model: no {missing[0]} (and {len(missing) - 1} more)")
    return {name: w + lora[name][1] @ lora[name][0] if name in lora else w for name, w in tensors.items()}
