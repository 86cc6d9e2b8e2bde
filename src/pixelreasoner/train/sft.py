"""Warm-start SFT on multi-turn pixel-space traces (SPEC §3), one readable loop.

Loss is the mean next-token NLL over *learned* tokens only: model turns that are correct. The
prompt, the tool observations (text and images) and turns marked erroneous are context, never
targets. Released trace files carry no markers; for them the released rule applies (only the
last two assistant turns are learned), chosen by ``mask_rule``.

The mean is taken over all learned tokens of an optimizer step, across micro-batches and
processes, so ``batch_size=8, grad_accum=1`` and ``batch_size=8, grad_accum=4`` (micro-batches
of 2) give the same update.

Run: ``pixelreasoner sft configs/sft_tiny.yaml [key=value ...]``; multi-process with
``accelerate launch -m pixelreasoner.cli sft ...``.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from pixelreasoner.config import save_config, to_dict
from pixelreasoner.data.formats import read_traces
from pixelreasoner.models.loading import VLProcessor, load_model
from pixelreasoner.models.tiny import PRESETS, build_tiny_model
from pixelreasoner.render import RenderedSequence, Renderer
from pixelreasoner.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from pixelreasoner.train.dist import make_accelerator, seed_everything, sum_across
from pixelreasoner.train.metrics import MetricsLogger
from pixelreasoner.train.options import RunOptions
from pixelreasoner.train.tokens import nll_sum
from pixelreasoner.trajectory import Conversation
from pixelreasoner.vision.budget import pixel_budget
from pixelreasoner.vision.images import ImageLoadError


@dataclass
class SFTConfig(RunOptions):
    """Warm-start SFT. Defaults run the tiny CPU job; ``configs/sft_qwen25vl_7b.yaml`` is the paper's."""

    data: str = "runs/quickstart/traces/traces.json"
    """Trace file: the released ``message_list`` JSON, or JSON Lines."""
    model: str = "tiny-1m"
    """A tiny preset (built from a config, tokenizer trained on the traces) or a checkpoint path / hub id."""
    out_dir: str = "runs/sft"
    budget: str = "tiny"
    """Pixel budget preset; must match the one the traces were synthesized with."""
    mask_rule: Literal["auto", "markers", "last_two"] = "auto"
    """markers: learn model turns, not erroneous ones; last_two: released rule; auto: markers if present."""
    max_length: int = 4096
    """Longer sequences are cut before this many tokens (never inside an image's tokens)."""

    epochs: int = 3
    max_steps: int = 0
    """Optimizer steps to run; 0 means ``epochs`` full passes."""
    batch_size: int = 16
    """Sequences per optimizer step per process (released script: 16; paper: 128 in total)."""
    grad_accum: int = 1
    """Micro-batches per step; each holds ``batch_size / grad_accum`` sequences, grouped by
    length (on CPU, 2-4 micro-batches cut padding at no cost in the update)."""
    lr: float = 2e-3
    """Peak learning rate (released 7B: 1e-6; the tiny model trains from scratch and needs more)."""
    min_lr_ratio: float = 0.0
    warmup_ratio: float = 0.1
    """Linear warm-up share of the steps, then cosine decay (released: 10%)."""
    weight_decay: float = 0.0
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    max_grad_norm: float = 1.0

    freeze_vision: bool = False
    """Freeze the vision tower's blocks (released 7B: frozen)."""
    freeze_projector: bool = False
    """Freeze the patch merger that projects vision features into the LM."""
    gradient_checkpointing: bool = False


@dataclass
class SFTResult:
    out_dir: Path
    final_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    skipped: int = 0
    """Traces skipped while training (unrenderable), counted over all steps."""
    load_problems: int = 0
    """Records of the trace file that could not be read (skipped before training)."""
    tokens_per_second: float = 0.0


# ---------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class BadRow:
    index: int
    reason: str


class TraceDataset(torch.utils.data.Dataset[RenderedSequence | BadRow]):
    """Traces rendered on demand; a trace that cannot be rendered comes back as a :class:`BadRow`."""

    def __init__(
        self,
        conversations: Sequence[Conversation],
        marked: Sequence[bool],
        renderer: Renderer,
        mask_rule: str,
        max_length: int,
    ) -> None:
        self.conversations = list(conversations)
        self.marked = list(marked)
        self.renderer = renderer
        self.mask_rule = mask_rule
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.conversations)

    def learn_flags(self, index: int) -> list[bool] | None:
        """Per-turn learn flags, or None to follow each turn's kind (markers)."""
        use_markers = self.mask_rule == "markers" or (self.mask_rule == "auto" and self.marked[index])
        if use_markers:
            return None
        turns = self.conversations[index].turns
        assistant = [i for i, t in enumerate(turns) if t.role == "assistant"]
        last_two = set(assistant[-2:])
        return [i in last_two for i in range(len(turns))]

    def __getitem__(self, index: int) -> RenderedSequence | BadRow:
        try:
            seq = self.renderer.render(self.conversations[index], learn=self.learn_flags(index))
        except (ImageLoadError, ValueError, OSError) as exc:
            return BadRow(index, str(exc))
        seq = self.renderer.truncate(seq, self.max_length)
        if sum(seq.loss_mask[1:]) == 0:
            return BadRow(index, f"no learned tokens within max_length={self.max_length}")
        return seq


class EpochOrder:
    """A seeded permutation per epoch; ``(epoch, offset)`` is the resumable data position."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def batches(self, batch: int, epoch: int, offset: int) -> Iterator[tuple[int, int, list[int]]]:
        """Yield (epoch, next_offset, indices) forever, dropping each epoch's incomplete tail."""
        while True:
            order = self.permutation(epoch)
            while offset + batch <= self.size:
                yield epoch, offset + batch, [int(i) for i in order[offset : offset + batch]]
                offset += batch
            epoch, offset = epoch + 1, 0


# ---------------------------------------------------------------------------------- model
def initial_model(config: SFTConfig, conversations: Sequence[Conversation]) -> tuple[Any, VLProcessor]:
    """Where SFT starts: a tiny preset (its tokenizer trained on the traces' text) or a checkpoint."""
    if config.model in PRESETS:
        corpus = [t.text for conv in conversations[:2000] for t in conv.turns if t.text]
        return build_tiny_model(config.model, seed=config.seed, extra_corpus=corpus)
    return load_model(config.model, dtype=torch.float32)


def apply_freezing(model: torch.nn.Module, freeze_vision: bool, freeze_projector: bool) -> None:
    """Set which vision parameters of a Qwen2.5-VL train: the blocks unless ``freeze_vision``, the
    projector (``visual.merger``) unless ``freeze_projector``. Both ways, so a model can be frozen
    for one stage and unfrozen for the next; the language model's parameters are left as they are."""
    for name, param in model.named_parameters():
        if ".visual." not in f".{name}":
            continue
        frozen = freeze_projector if ".merger." in name else freeze_vision
        param.requires_grad_(not frozen)


def enable_checkpointing(model: Any) -> None:
    """Activation checkpointing (transformers 5 renamed the method; the old name warns)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def cosine_schedule(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine from 1 to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------- loop
def train_sft(config: SFTConfig) -> SFTResult:
    """Run SFT as configured; resumes from ``out_dir``'s latest checkpoint when ``resume``."""
    if config.batch_size % config.grad_accum:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by grad_accum {config.grad_accum}")
    accelerator = make_accelerator(config.mixed_precision)
    seed_everything(config.seed, accelerator.process_index)
    out = Path(config.out_dir)
    resume_from = latest_checkpoint(out / "checkpoints") if config.resume else None

    traces = read_traces(config.data)
    if traces.problems and accelerator.is_main_process:
        warnings.warn(f"trace file problems (skipped): {traces.summary()}", stacklevel=1)
    if not traces.conversations:
        raise ValueError(f"no usable traces in {config.data}: {traces.summary()}")
    marked = traces.marked or [traces.has_markers] * len(traces.conversations)
    if resume_from is not None:
        model, processor = load_model(resume_from, dtype=torch.float32)
    else:
        model, processor = initial_model(config, traces.conversations)
    apply_freezing(model, config.freeze_vision, config.freeze_projector)
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    model.train()

    renderer = Renderer(processor, pixel_budget(config.budget))
    dataset = TraceDataset(traces.conversations, marked, renderer, config.mask_rule, config.max_length)
    world = accelerator.num_processes
    global_batch = config.batch_size * world
    steps_per_epoch = len(dataset) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(dataset)} traces cannot fill one batch of {config.batch_size} x {world} processes"
        )
    total = config.max_steps or config.epochs * steps_per_epoch
    warmup = int(config.warmup_ratio * total)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable,
        lr=config.lr,
        betas=tuple(config.adam_betas),  # type: ignore[arg-type]
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_schedule(s, total, warmup, config.min_lr_ratio)
    )
    # The scheduler stays unprepared: accelerate would step it once per process per step.
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    state: dict[str, Any] = {"step": 0, "epoch": 0, "offset": 0, "skipped": 0, "losses": []}
    if resume_from is not None:
        state = load_checkpoint(resume_from, accelerator)
        if accelerator.is_main_process:
            print(f"resuming from {resume_from} at step {state['step']}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    logger = MetricsLogger(out, config.metrics, to_dict(config), enabled=accelerator.is_main_process)

    order = EpochOrder(len(dataset), config.seed)
    batches = order.batches(global_batch, state["epoch"], state["offset"])
    micro = config.batch_size // config.grad_accum
    bar = tqdm(
        total=total,
        initial=state["step"],
        desc="sft",
        unit="step",
        disable=not (config.progress and accelerator.is_main_process),
    )
    fallback = _first_good(dataset)
    tokens_seen, began = 0.0, time.perf_counter()
    stop_at = min(total, config.stop_after_steps) if config.stop_after_steps else total
    while state["step"] < stop_at:
        epoch, offset, indices = next(batches)
        mine = indices[
            accelerator.process_index * config.batch_size : (accelerator.process_index + 1)
            * config.batch_size
        ]
        rendered = [dataset[i] for i in mine]
        bad = [r for r in rendered if isinstance(r, BadRow)]
        for row in bad:
            warnings.warn(f"skipping trace {row.index}: {row.reason}", stacklevel=1)
        # Sorted by length, micro-batches hold similar lengths (less padding); the step's loss is
        # a sum over all its sequences, so the grouping does not change it.
        good = sorted((r for r in rendered if isinstance(r, RenderedSequence)), key=len)
        chunks = [good[k : k + micro] for k in range(0, config.batch_size, micro)]
        learned_here = sum(sum(s.loss_mask[1:]) for s in good)
        learned_total = sum_across(accelerator, learned_here)
        state["skipped"] += int(sum_across(accelerator, len(bad)))
        if learned_total == 0:
            state["epoch"], state["offset"] = epoch, offset
            continue
        nll_total, padded, real = 0.0, 0, 0
        for k, chunk in enumerate(chunks):
            weight = 1.0
            if not chunk:  # keep every process doing the same number of passes (DDP needs it)
                chunk, weight = [fallback], 0.0
            batch = renderer.collate(chunk, padding_side="right").to(accelerator.device)
            padded += batch.input_ids.numel()
            real += int(batch.attention_mask.sum())
            sync = contextlib.nullcontext() if k == len(chunks) - 1 else accelerator.no_sync(model)
            with sync:
                nll, _ = nll_sum(model, batch, batch.loss_mask, config.share_prefix)
                # DDP averages gradients over processes, so scale by their number.
                loss = nll * (weight * world / learned_total)
                accelerator.backward(loss)
            nll_total += float(nll.detach()) * weight
        grad_norm = (
            accelerator.clip_grad_norm_(trainable, config.max_grad_norm) if config.max_grad_norm > 0 else None
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        step_loss = sum_across(accelerator, nll_total) / learned_total
        tokens_seen += sum_across(accelerator, real)
        state.update(step=state["step"] + 1, epoch=epoch, offset=offset)
        state["losses"].append(step_loss)
        bar.update()
        bar.set_postfix(loss=f"{step_loss:.3f}")
        if state["step"] % config.log_every == 0 or state["step"] == total:
            elapsed = time.perf_counter() - began
            logger.log(
                state["step"],
                {
                    "loss": step_loss,
                    "lr": float(scheduler.get_last_lr()[0]),
                    "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
                    "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                    "pad_fraction": 1 - real / max(padded, 1),
                    "skipped": state["skipped"],
                    "epoch": epoch + offset / len(dataset),
                },
            )
        if config.save_every and state["step"] % config.save_every == 0 and state["step"] < total:
            save_checkpoint(
                out / "checkpoints",
                state["step"],
                accelerator,
                model,
                processor,
                state,
                config.keep_checkpoints,
            )
    bar.close()
    last = save_checkpoint(
        out / "checkpoints", state["step"], accelerator, model, processor, state, config.keep_checkpoints
    )
    final_dir = out / "final"
    if state["step"] >= total and accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(
            final_dir, state_dict=accelerator.get_state_dict(model)
        )
        processor.save_pretrained(final_dir)
    accelerator.wait_for_everyone()
    logger.close()
    elapsed = time.perf_counter() - began
    return SFTResult(
        out_dir=out,
        final_dir=final_dir if state["step"] >= total else last,
        steps=state["step"],
        losses=list(state["losses"]),
        skipped=state["skipped"],
        load_problems=len(traces.problems),
        tokens_per_second=tokens_seen / max(elapsed, 1e-9),
    )


def _first_good(dataset: TraceDataset) -> RenderedSequence:
    for index in range(len(dataset)):
        row = dataset[index]
        if isinstance(row, RenderedSequence):
            return row
    raise ValueError("no trace in the dataset can be rendered")


__all__ = ["BadRow", "EpochOrder", "SFTConfig", "SFTResult", "TraceDataset", "train_sft"]
