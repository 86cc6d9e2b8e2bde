"""Warm-start SFT on multi-turn pixel-space traces (SPEC §3), one readable loop.

Loss is the mean next-token NLL over *learned* tokens only: model turns that are correct. The
prompt, the tool observations (text and images) and turns marked erroneous are context, never
targets. Released trace files carry no markers; for them the released rule applies (only the
last two assistant turns are learned), chosen by ``mask_rule``.

The mean is taken over all learned tokens of an optimizer step, across micro-batches and
processes, so ``batch_size=8, grad_accum=1`` and ``batch_size=8, grad_accum=4`` (micro-batches
of 2) give the same update. The step itself is :func:`~pixelreasoner.train.sft_steps.sft_step`;
this module keeps the data, the set-up and when things happen (schedule, logging, saving).

Run: ``pixelreasoner sft configs/sft_tiny.yaml [key=value ...]``; multi-process with
``accelerate launch -m pixelreasoner.cli sft ...``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from pixelreasoner.config import save_config, to_dict
from pixelreasoner.data.formats import read_traces
from pixelreasoner.models.loading import VLProcessor, load_model
from pixelreasoner.models.tiny import PRESETS, build_tiny_model
from pixelreasoner.render import RenderedSequence, Renderer
from pixelreasoner.train.checkpoint import export_model, latest_checkpoint, load_checkpoint, save_checkpoint
from pixelreasoner.train.common import EpochOrder, apply_freezing, cosine_schedule, enable_checkpointing
from pixelreasoner.train.dist import make_distribution, seed_everything, sum_across
from pixelreasoner.train.memory import check_memory
from pixelreasoner.train.metrics import MetricsLogger
from pixelreasoner.train.options import RunOptions
from pixelreasoner.train.sft_steps import sft_step
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


# ---------------------------------------------------------------------------------- model
def initial_model(config: SFTConfig, conversations: Sequence[Conversation]) -> tuple[Any, VLProcessor]:
    """Where SFT starts: a tiny preset (its tokenizer trained on the traces' text) or a checkpoint."""
    if config.model in PRESETS:
        corpus = [t.text for conv in conversations[:2000] for t in conv.turns if t.text]
        return build_tiny_model(config.model, seed=config.seed, extra_corpus=corpus)
    return load_model(config.model, dtype=torch.float32)


# ---------------------------------------------------------------------------------- loop
def train_sft(config: SFTConfig) -> SFTResult:
    """Run SFT as configured; resumes from ``out_dir``'s latest checkpoint when ``resume``."""
    if config.batch_size % config.grad_accum:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by grad_accum {config.grad_accum}")
    accelerator = make_distribution(config)
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
    check_memory(config, model, accelerator)  # prints the plan; refuses a run that cannot fit
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

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
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
    trainable = [p for group in optimizer.param_groups for p in group["params"]]  # sharded under fsdp
    share_prefix = config.share_prefix and accelerator.shares_prefix

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
        good, bad = _render(dataset, mine)
        state["skipped"] += int(sum_across(accelerator, bad))
        stats = sft_step(
            model,
            optimizer,
            trainable,
            good,
            fallback,
            renderer,
            accelerator,
            micro,
            config.max_grad_norm,
            share_prefix,
        )
        if stats is None:  # no process has a token to learn: the data moves on, the step does not
            state["epoch"], state["offset"] = epoch, offset
            continue
        scheduler.step()

        tokens_seen += stats.real
        state.update(step=state["step"] + 1, epoch=epoch, offset=offset)
        state["losses"].append(stats.loss)
        bar.update()
        bar.set_postfix(loss=f"{stats.loss:.3f}")
        if state["step"] % config.log_every == 0 or state["step"] == total:
            elapsed = time.perf_counter() - began
            logger.log(
                state["step"],
                {
                    "loss": stats.loss,
                    "lr": float(scheduler.get_last_lr()[0]),
                    "grad_norm": stats.grad_norm if stats.grad_norm is not None else 0.0,
                    "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                    "pad_fraction": 1 - stats.real / max(stats.padded, 1),
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
    if state["step"] >= total:
        export_model(accelerator, model, processor, final_dir)
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


def _render(dataset: TraceDataset, indices: Sequence[int]) -> tuple[list[RenderedSequence], int]:
    """The traces at ``indices`` that render, and how many did not (each one warned about)."""
    good = []
    for index in indices:
        row = dataset[index]
        if isinstance(row, BadRow):
            warnings.warn(f"skipping trace {row.index}: {row.reason}", stacklevel=2)
        else:
            good.append(row)
    return good, len(indices) - len(good)


def _first_good(dataset: TraceDataset) -> RenderedSequence:
    for index in range(len(dataset)):
        row = dataset[index]
        if isinstance(row, RenderedSequence):
            return row
    raise ValueError("no trace in the dataset can be rendered")


__all__ = ["BadRow", "SFTConfig", "SFTResult", "TraceDataset", "train_sft"]
