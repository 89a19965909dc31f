"""Teach the default model to see: train the vision tower into SmolLM2-135M, on CPU.

    python -m training.train_vision --out runs/vision [--minutes 55 | --steps N --warmup-steps M] [--seed 0]
                                    [--init models/weights/smollm2-vision.npz]

What is trained, and why:
- the vision tower (ViT + Q-Former + projection), from scratch or, with --init, from a
  shipped tower and its adapters;
- LoRA adapters (rank 8) on every linear layer of the language model, whose own weights stay
  frozen. A frozen 135 M model cannot be steered into answering yes/no questions about an
  image from a prefix alone (measured: chance level), so, as VisualGLM does when it is
  fine-tuned, the language model gets low-rank adapters; they are merged into its weights
  at export. With --frozen-adapters they stay as --init has them, so text chat answers
  exactly as that file's model does and only the tower learns.

Steps:
1. warm-up (no language model): the tower alone learns how many shapes there are, how many
   of each kind, which colours, and where a single shape is, from auxiliary classification
   heads on its query outputs, the (colour, kind) of each shape on a query row of its own,
   and the kind and colour of the shape centred in each patch from heads on its patch
   tokens, at ~0.4 s per batch of 32 instead of ~1.5 s per batch of 8 with the LM in the
   loop (with --init of a tower loaded whole, only the new heads learn here);
2. end to end: image -> tower -> prefix rows spliced into the chat prompt exactly as the
   runtime does -> the frozen LM + LoRA -> cross-entropy on the answer; the auxiliary loss
   stays on. Two slots of each batch of eight (--text-slots; none with --frozen-adapters)
   are text-only chats answered beforehand by the untouched model (self-distillation), so
   text chat keeps its behaviour. The LM runs under
   bfloat16 autocast (the master weights stay fp32): 3x faster on CPUs with AVX-512 BF16.

Data: easy-vqa's train split and scenes drawn by training/scenes.py (three in four picture
examples), half of the latter asked as follow-ups after one to three earlier turns, with the
picture in the first user message as the app puts it; every answer of a conversation is a
target. With --steps, the step size falls linearly to zero over the last 30 % of the run
(--decay-share).
Seeded; logs JSON lines to OUT/train.log; checkpoints to OUT/checkpoint.pt every few minutes
and resumes from it; stops after --minutes and writes OUT/vision-adapter.npz, the file the
app ships.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from language.families import Turn
from language.families.llama import LlamaFamily
from models.catalog import TEXT_MODEL, find_smollm2_gguf
from models.gguf_llama import read_llama_gguf
from models.vision_adapter import read_vision_adapter
from training.torch_llama import transformers_llama
from language.tokenizers import load_tokenizer
from training.examples import (CELL_COLOURS, CELL_KINDS, COLOUR_LABELS, COLOURS_SEEN, COUNT, COUNT_LABELS, EXTREMES, GRID,
                               KINDS, ORDER, PAIR_COUNTS, PAIRS, POSITION, POSITION_LABELS, SHAPE_LABELS, TEXT_PROMPTS,
                               Example, easy_vqa, generated, text_only)
from training.vision_tower import VisionConfig, VisionTower
from vision.preprocess import to_pixels

# 7x7 patches (the pictures are simple, CPU time is short), each seen through four 3x3 convolutions
CONFIG = VisionConfig(patch_size=32, num_queries=16, stem_channels=(16, 32, 64, 128))
assert CONFIG.image_size // CONFIG.patch_size == GRID
PROBE_SEED, PROBE_SCENES = 30_000, 256  # held-out scenes the auxiliary heads are scored on as training goes
LORA_RANK, LORA_ALPHA = 8, 16
# Convolutions and auxiliary heads; the tower's transformers (a ViT wants a small step at this
# batch size); LoRA adapters. A stem at the transformers' step learned kinds of shapes 5x slower.
BASE_LR = (1e-3, 2e-4, 1e-3)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """y = W x + (alpha / r) B A x, with W frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T) @ self.lora_b.T * self.scale


def add_lora(lm: nn.Module) -> dict[str, LoRALinear]:
    adapters = {}
    for name, module in list(lm.named_modules()):
        for target in LORA_TARGETS:
            child = getattr(module, target, None)
            if isinstance(child, nn.Linear):
                adapter = LoRALinear(child, LORA_RANK, LORA_ALPHA)
                setattr(module, target, adapter)
                adapters[f"{name}.{target}.weight"] = adapter
    return adapters


class AuxHeads(nn.Module):
    """Classifiers that give the tower a fast, direct signal, read from Example.labels.

    On the mean of the Q-Former outputs: how many shapes there are, where a single shape is,
    how many of each kind (0-4), and which colours are there. On each of the ViT's patch
    tokens: the kind (or none) and the colour of the shape centred in that patch, so that
    every object is told apart where it is; a count then sits in the tokens' sum. And, on the
    mean again, which colour goes with which kind: how many of each (colour, kind) pair, the
    pairs from left to right and the pair at each extreme. Without these, descriptions named
    the right colours and kinds but paired them wrongly ("a black triangle and a gray circle"
    for a black circle and a gray triangle)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        width = config.qformer_width
        self.count = nn.Linear(width, len(COUNT_LABELS))
        self.position = nn.Linear(width, len(POSITION_LABELS))
        self.kinds = nn.Linear(width, len(SHAPE_LABELS) * 5)
        self.colours = nn.Linear(width, len(COLOUR_LABELS))
        self.cell_kind = nn.Linear(config.vit_width, 1 + len(SHAPE_LABELS))
        self.cell_colour = nn.Linear(config.vit_width, len(COLOUR_LABELS))
        self.pairs = nn.Linear(width, PAIRS * 5)
        self.order = nn.Linear(width, (ORDER.stop - ORDER.start) * (PAIRS + 1))
        self.extremes = nn.Linear(width, (EXTREMES.stop - EXTREMES.start) * PAIRS)
        self.slot = nn.Linear(width, PAIRS)  # on each query row: the (colour, kind) pair of the shape it holds
        # Most patches hold no shape's centre: weighted like the rest, "none" is all the head learns.
        self.register_buffer("cell_weight", torch.tensor([0.1] + [1.0] * len(SHAPE_LABELS)), persistent=False)

    def slots(self, queries: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each drawn shape's pair and the logits of the query row it is given: the free row
        likeliest to hold that pair, matched greedily. A row of its own for every object is
        what a description that pairs each colour with its kind reads from."""
        logits = self.slot(queries)
        rows, pairs = [], []
        with torch.no_grad():
            scores = logits.log_softmax(-1)
        for b, order in enumerate(labels[:, ORDER].tolist()):
            free = torch.ones(queries.shape[1], dtype=torch.bool)
            for p in (p for p in order if 0 <= p < PAIRS):
                row = int(torch.where(free, scores[b, :, p], -torch.inf).argmax())
                free[row] = False
                rows.append(logits[b, row])
                pairs.append(p)
        if not rows:
            return logits[:0, 0], torch.zeros(0, dtype=torch.long)
        return torch.stack(rows), torch.tensor(pairs)

    def loss(self, queries: torch.Tensor, patches: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pooled = queries.mean(dim=1)
        count, position, kinds, colours = labels[:, COUNT], labels[:, POSITION], labels[:, KINDS], labels[:, COLOURS_SEEN]
        cell_kinds, cell_colours = labels[:, CELL_KINDS].reshape(-1), labels[:, CELL_COLOURS].reshape(-1)
        cross_entropy = lambda logits, target, weight=None: nn.functional.cross_entropy(  # noqa: E731
            logits, target, weight, ignore_index=-1) if (target >= 0).any() else logits.sum() * 0
        total = cross_entropy(self.count(pooled), count) + cross_entropy(self.position(pooled), position)
        total = total + cross_entropy(self.kinds(pooled).reshape(-1, 5), kinds.reshape(-1))
        total = total + cross_entropy(self.pairs(pooled).reshape(-1, 5), labels[:, PAIR_COUNTS].reshape(-1))
        total = total + cross_entropy(self.order(pooled).reshape(-1, PAIRS + 1), labels[:, ORDER].reshape(-1))
        total = total + cross_entropy(self.extremes(pooled).reshape(-1, PAIRS), labels[:, EXTREMES].reshape(-1))
        known = colours >= 0
        if known.any():
            total = total + nn.functional.binary_cross_entropy_with_logits(
                self.colours(pooled)[known], colours[known].float())
        total = total + cross_entropy(*self.slots(queries, labels))
        patches = patches.reshape(-1, patches.shape[-1])
        return (total + cross_entropy(self.cell_kind(patches), cell_kinds, self.cell_weight)
                + cross_entropy(self.cell_colour(patches), cell_colours))

    @torch.no_grad()
    def accuracy(self, queries: torch.Tensor, patches: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Held-out accuracy of the count head, of the per-patch heads on the patches that hold a
        shape, of the pair heads (every pair's count right; every shape's pair in order), and of
        the rows (each shape's matched row names its pair)."""
        pooled = queries.mean(dim=1)
        slot_logits, slot_pairs = self.slots(queries, labels)
        count, cell_kinds, order = labels[:, COUNT], labels[:, CELL_KINDS], labels[:, ORDER]
        centred = cell_kinds > 0
        pairs = self.pairs(pooled).reshape(len(labels), PAIRS, 5).argmax(-1)
        in_order = self.order(pooled).reshape(len(labels), -1, PAIRS + 1).argmax(-1)
        return {"count": (self.count(pooled).argmax(-1) == count).float().mean().item(),
                "pairs": (pairs == labels[:, PAIR_COUNTS]).all(-1).float().mean().item(),
                "order": (in_order == order).all(-1).float().mean().item(),
                "slots": (slot_logits.argmax(-1) == slot_pairs).float().mean().item(),
                "cell_kind": (self.cell_kind(patches).argmax(-1) == cell_kinds)[centred].float().mean().item(),
                "cell_colour": (self.cell_colour(patches).argmax(-1) == labels[:, CELL_COLOURS])[centred].float().mean().item()}


def tower_outputs(tower: VisionTower, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prefix embeddings, Q-Former output rows, patch tokens) for the LM and the auxiliary heads."""
    image = tower.image_tokens(pixels)
    queries = tower.query_outputs(image)
    return tower.proj(queries), queries, image[:, 1:]


def held_out_scenes() -> list[Example]:
    """One example of each of PROBE_SCENES held-out scenes: a scene's questions share its picture and labels."""
    firsts: dict = {}
    for example in generated(PROBE_SCENES * 10, seed=PROBE_SEED):
        firsts.setdefault(example.image, example)
    assert len(firsts) >= PROBE_SCENES
    return list(firsts.values())[:PROBE_SCENES]


def pixels_of(examples: list[Example]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([to_pixels(e.image(), CONFIG.image_size) for e in examples]))


def labels_of(examples: list[Example]) -> torch.Tensor:
    return torch.tensor([e.labels for e in examples], dtype=torch.long)


class Batcher:
    """Builds LM inputs exactly as the runtime lays out a prompt: template, placeholders, answer."""

    def __init__(self, family: LlamaFamily, tokenizer, embed: nn.Embedding):
        self.family, self.tokenizer, self.embed = family, tokenizer, embed
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __call__(self, examples: list[Example], prefix: torch.Tensor | None):
        """Inputs, attention mask and targets; every answer of a conversation is a target."""
        rows, labels, image_index = [], [], 0
        for example in examples:
            has_image = example.image is not None
            history = [Turn(q, a) for q, a in example.history]
            prompt = self.family.encode(history, example.question, CONFIG.num_queries if has_image else 0)
            answer = self.tokenizer.encode(example.answer, add_special_tokens=False) + [self.end]
            ids = prompt.ids + answer
            label = [-100] * len(prompt.ids) + answer
            for k, (_, earlier) in enumerate(example.history):  # earlier answers sit where the template put them
                start = len(self.family.encode(history[:k], history[k].question, CONFIG.num_queries if has_image else 0).ids)
                earlier_ids = self.tokenizer.encode(earlier, add_special_tokens=False) + [self.end]
                assert ids[start:start + len(earlier_ids)] == earlier_ids, "the template moved an earlier answer"
                label[start:start + len(earlier_ids)] = earlier_ids
            embeds = self.embed(torch.tensor(ids))
            if has_image:
                start = prompt.image_start
                embeds = torch.cat([embeds[:start], prefix[image_index], embeds[start + CONFIG.num_queries:]])
                image_index += 1
            rows.append(embeds)
            labels.append(label)
        width = max(len(x) for x in labels)
        inputs = torch.zeros(len(rows), width, rows[0].shape[-1])
        target = torch.full((len(rows), width), -100)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (row, label) in enumerate(zip(rows, labels)):
            inputs[i, :len(label)], target[i, :len(label)], mask[i, :len(label)] = row, torch.tensor(label), 1
        return inputs, mask, target


def answer_loss(lm: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens only; the vocabulary projection runs on
    those few rows instead of the whole prompt (a fifth of the step's time otherwise)."""
    hidden = lm.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state[:, :-1]
    answer = target[:, 1:] != -100
    logits = lm.lm_head(hidden[answer]).float()
    return nn.functional.cross_entropy(logits, target[:, 1:][answer])


def teacher_answers(prompts: list[str], cache: Path) -> dict[str, str]:
    """Greedy answers of the untouched model, through this project's own runtime. The cache
    keeps every prompt asked (null where the answer did not finish), so a longer list asks
    only the new prompts."""
    asked = json.loads(cache.read_text()) if cache.is_file() else {}
    missing = [p for p in prompts if p not in asked]
    if missing:
        from models.loader import load_chat_model
        from language.sampling import SamplingSettings
        from models.catalog import prepare_model

        model = load_chat_model(prepare_model(TEXT_MODEL, progress=None))
        for prompt in missing:
            reply = model.reply([], prompt, SamplingSettings(max_new_tokens=96))
            asked[prompt] = reply.answer if reply.finish_reason == "stop" else None  # complete answers only
        cache.write_text(json.dumps(asked, indent=1, ensure_ascii=False))
    return {p: asked[p] for p in prompts if asked[p] is not None}


def init_from(path: Path, tower: VisionTower, adapters: dict[str, LoRALinear]) -> list[str]:
    """Load a shipped file's adapters (save_adapter's file) to train further, and every tower
    tensor of the same name and shape; returns the names of the tower's tensors that start afresh."""
    shipped = read_vision_adapter(path)
    missing = sorted(set(adapters) - set(shipped.lora))
    if missing:
        raise SystemExit(f"{path} has no LoRA factors for {missing[0]} (and {len(missing) - 1} more): "
                         "it was not trained for this language model")
    for name, adapter in adapters.items():
        a, b = shipped.lora[name]
        adapter.lora_a.data, adapter.lora_b.data = torch.from_numpy(a), torch.from_numpy(b) / adapter.scale
    own = tower.state_dict()
    fitting = {k: torch.from_numpy(v) for k, v in shipped.vision_tensors.items() if k in own and own[k].shape == v.shape}
    tower.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


def log(out: Path, **record) -> None:
    line = json.dumps({"time": round(time.time(), 1), **record})
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def save_adapter(path: Path, tower: VisionTower, adapters: dict[str, LoRALinear]) -> None:
    """The shipped file: tower weights and LoRA deltas (B @ A * scale) as fp16."""
    arrays = {f"vision.{k}": v.detach().numpy().astype(np.float16) for k, v in tower.state_dict().items()}
    for name, adapter in adapters.items():
        arrays[f"lora_a.{name}"] = adapter.lora_a.detach().numpy().astype(np.float16)
        arrays[f"lora_b.{name}"] = (adapter.lora_b.detach() * adapter.scale).numpy().astype(np.float16)
    arrays["config"] = np.frombuffer(json.dumps(tower.config.to_dict()).encode(), dtype=np.uint8)
    tmp = path.with_suffix(".partial.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=55, help="stop (and save) after this much training")
    parser.add_argument("--steps", type=int, default=None,
                        help="stop after this many steps instead (the same run on a busy or a faster machine)")
    parser.add_argument("--warmup-minutes", type=float, default=25, help="tower-only training before the LM joins")
    parser.add_argument("--warmup-steps", type=int, default=None, help="tower-only steps, with --steps")
    parser.add_argument("--decay-share", type=float, default=0.3,
                        help="with --steps, the share of the run over which the step size falls to zero")
    parser.add_argument("--lr-scale", type=float, default=1.0,
                        help="scales every step size (a smaller one suits a run that continues a trained tower)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", type=Path, default=None,
                        help="start from a shipped file's adapters (a vision-adapter .npz), and its tower if it has this shape")
    parser.add_argument("--scene-share", type=float, default=0.75,
                        help="the share of picture examples drawn by training/scenes.py (the rest: easy-vqa)")
    parser.add_argument("--follow-ups", type=float, default=0.5,
                        help="the share of drawn-scene examples asked after earlier turns")
    parser.add_argument("--text-slots", type=int, default=2,
                        help="text-only chat examples in each end-to-end batch, to keep text chat as it was")
    parser.add_argument("--frozen-adapters", action="store_true",
                        help="keep --init's LoRA adapters as they are: text chat answers exactly as that file's "
                             "model does, and only the tower learns (text-only examples then teach nothing)")
    args = parser.parse_args()
    if not 0 < args.decay_share <= 1 or args.lr_scale <= 0:
        parser.error("--decay-share must be above 0 and at most 1, --lr-scale above 0")
    if args.frozen_adapters and not args.init:
        parser.error("--frozen-adapters keeps the adapters of --init, which is missing")
    text_slots = 0 if args.frozen_adapters else args.text_slots
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    tokenizer = load_tokenizer(TEXT_MODEL)
    family = LlamaFamily(tokenizer)
    lm = transformers_llama(*read_llama_gguf(find_smollm2_gguf()))
    lm.requires_grad_(False)
    adapters = add_lora(lm)
    tower, heads = VisionTower(CONFIG), AuxHeads(CONFIG)
    lora_params = [p for a in adapters.values() for p in (a.lora_a, a.lora_b)]
    if args.frozen_adapters:
        for p in lora_params:
            p.requires_grad_(False)
        lora_params = []
    params = [*tower.parameters(), *heads.parameters(), *lora_params]
    convolutions = [*tower.stem.parameters(), *tower.patch.parameters(), *heads.parameters()]
    transformers = [p for name, p in tower.named_parameters() if not name.startswith(("stem.", "patch."))]
    base_lr = [lr * args.lr_scale for lr in BASE_LR]
    optimizer = torch.optim.AdamW([{"params": group, "lr": lr} for group, lr in
                                   zip((convolutions, transformers, lora_params), base_lr) if group], weight_decay=0.01)
    batcher = Batcher(family, tokenizer, lm.model.embed_tokens)

    # A tower loaded whole is already trained: its warm-up only fits the new auxiliary heads to it,
    # so that their first, random gradients never reach it.
    tower_trained = False
    if args.init:
        afresh = init_from(args.init, tower, adapters)
        tower_trained = not afresh
        log(args.out, event="initialised", adapters=str(args.init), afresh=afresh)
    easy, scenes = easy_vqa("train"), generated(40000, seed=args.seed + 1, follow_ups=args.follow_ups)
    probe = held_out_scenes()
    probe_pixels, probe_labels = pixels_of(probe), labels_of(probe)
    text_examples = text_only(teacher_answers(TEXT_PROMPTS, args.out / "teacher_answers.json")) if text_slots else []
    step, trained_s = 0, 0.0
    checkpoint = args.out / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        tower.load_state_dict(state["tower"])
        heads.load_state_dict(state["heads"])
        for name, adapter in adapters.items():
            adapter.lora_a.data, adapter.lora_b.data = state["lora"][name]
        optimizer.load_state_dict(state["optimizer"])
        step, trained_s = state["step"], state["trained_s"]
        random.setstate(state["random"])
        torch.set_rng_state(state["torch_random"])
        log(args.out, event="resumed", step=step)

    def save_checkpoint() -> None:
        torch.save({"tower": tower.state_dict(), "heads": heads.state_dict(),
                    "lora": {n: (a.lora_a.data, a.lora_b.data) for n, a in adapters.items()},
                    "optimizer": optimizer.state_dict(), "step": step, "trained_s": trained_s,
                    "random": random.getstate(), "torch_random": torch.get_rng_state()}, checkpoint)

    last_save = time.time()
    while (step < args.steps) if args.steps else (trained_s < args.minutes * 60):
        started = time.time()
        warm = (step < args.warmup_steps) if args.warmup_steps is not None else (trained_s < args.warmup_minutes * 60)
        size = args.batch * (4 if warm else 1)
        from_scenes = sum(random.random() < args.scene_share for _ in range(size))
        batch = random.sample(scenes, from_scenes) + random.sample(easy, size - from_scenes)
        if args.steps and not warm:  # the step size falls to zero over the last --decay-share of the run
            for group, base in zip(optimizer.param_groups, base_lr):
                group["lr"] = base * min(1.0, (args.steps - step) / (args.decay_share * args.steps))
        if not warm and text_slots:
            batch[len(batch) - text_slots:] = random.sample(text_examples, text_slots)
        images = [e for e in batch if e.image is not None]
        with torch.set_grad_enabled(not (warm and tower_trained)):
            prefix, queries, patches = tower_outputs(tower, pixels_of(images))
        aux = heads.loss(queries, patches, labels_of(images))
        if warm:
            loss, lm_loss = aux, None
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                lm_loss = answer_loss(lm, *batcher(batch, prefix))
            loss = lm_loss + 0.5 * aux
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        trained_s += time.time() - started
        if step % 20 == 0:
            log(args.out, step=step, stage="warm-up" if warm else "end-to-end", aux=round(aux.item(), 4),
                lm=None if lm_loss is None else round(lm_loss.item(), 4), minutes=round(trained_s / 60, 1))
        if step % 250 == 0:
            with torch.no_grad():
                _, probe_queries, probe_patches = tower_outputs(tower, probe_pixels)
            log(args.out, step=step, held_out={k: round(v, 3) for k, v in heads.accuracy(
                probe_queries, probe_patches, probe_labels).items()})
        if time.time() - last_save > 300:
            save_checkpoint()
            save_adapter(args.out / "vision-adapter.npz", tower, adapters)
            last_save = time.time()
    save_checkpoint()
    save_adapter(args.out / "vision-adapter.npz", tower, adapters)
    log(args.out, event="finished", step=step, minutes=round(trained_s / 60, 1))


if __name__ == "__main__":
    main()
