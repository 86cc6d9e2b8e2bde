"""The whole method on a laptop CPU: the paper's comparison in miniature.

Stages, each in its own directory under ``--out`` and skipped when already done (``--force``
redoes them; SFT and RL also resume from their own checkpoints, so a killed run continues):

1. ``tasks``: synthetic train and held-out items of every family;
2. ``traces``: warm-start traces (self-correction and text-only included) and, for the text-only
   baseline, direct-answer traces with the ``notool`` prompt;
3. ``sft`` / ``sft-text``: the tiny model warm-started on each;
4. ``rl-curiosity`` / ``rl-plain`` / ``rl-text``: RL with the curiosity bonus, without it (same
   seed and budget), and the text-only model's RL with the ``notool`` prompt;
5. ``eval``: greedy evaluation of every model on the held-out items;
6. ``report``: ``report.html`` and ``report.md`` (table, curves, example trajectories).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from pixelreasoner.data.formats import read_items, write_traces
from pixelreasoner.eval.harness import evaluate_task, summarize
from pixelreasoner.eval.tasks import get_task
from pixelreasoner.models.loading import load_model
from pixelreasoner.protocol.prompts import PromptMode
from pixelreasoner.rl.reward import RewardConfig
from pixelreasoner.rollout.backend import SamplingParams
from pixelreasoner.rollout.engine import RolloutEngine, RolloutLimits
from pixelreasoner.rollout.hf import TransformersBackend
from pixelreasoner.synth.traces import TraceMix, TraceSynthesizer
from pixelreasoner.tasks.families import make_family
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.train.rl import RLConfig, train_rl
from pixelreasoner.train.sft import SFTConfig, train_sft
from pixelreasoner.vision.budget import tiny


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes of the run; :meth:`fast` is the CI smoke version."""

    families: tuple[str, ...] = ("needle", "count", "read", "frames")
    """All four families (V*-, TallyQA-, InfoVQA- and MVBench-like). The tiny model learns each
    within this SFT budget, but not all to 100%, which leaves RL something to improve
    (bench/RESULTS.md)."""
    where: str = "marker+text"
    """The tiny model learns localisation from pixels too slowly for this budget, so questions
    also name the cell (see :data:`pixelreasoner.tasks.families.Where`); reading still needs the zoom."""
    self_correction: float = 0.15
    """Share of self-correction traces (re-crop, zoom further, re-select frames); the rest of
    the tool traces are single-pass, which teach where to look fastest (bench/RESULTS.md)."""
    text_only: float = 0.1
    """Share of text-only traces (a question the global view answers, no tool call)."""
    train_per_family: int = 300
    heldout_per_family: int = 64
    preset: str = "tiny-1m"
    sft_steps: int = 500
    sft_text_steps: int = 60
    sft_batch: int = 32
    sft_grad_accum: int = 4
    """Micro-batches per SFT step, grouped by length (less padding; same update)."""
    sft_lr: float = 3e-3
    rl_steps: int = 16
    rl_queries: int = 8
    rl_group: int = 8
    rl_batch: int = 64
    rl_lr: float = 1e-4
    max_turn_tokens: int = 96
    seed: int = 0

    @classmethod
    def fast(cls) -> QuickstartConfig:
        return cls(
            families=("needle", "frames"),
            train_per_family=24,
            heldout_per_family=6,
            sft_steps=12,
            sft_text_steps=6,
            sft_batch=8,
            sft_grad_accum=2,
            rl_steps=2,
            rl_queries=2,
            rl_group=4,
            rl_batch=8,
            max_turn_tokens=48,
        )


MODELS: dict[str, tuple[str, PromptMode]] = {
    "sft": ("SFT warm start", "vcot"),
    "rl-curiosity": ("RL with curiosity", "vcot"),
    "rl-plain": ("RL without curiosity", "vcot"),
    "sft-text": ("text-only SFT", "notool"),
    "rl-text": ("text-only SFT + RL", "notool"),
}


class Quickstart:
    def __init__(
        self, out: str | Path, config: QuickstartConfig, force: bool = False, progress: bool = True
    ) -> None:
        self.out = Path(out)
        self.config = config
        self.force = force
        self.progress = progress
        self.budget = tiny()

    # ------------------------------------------------------------------ stage bookkeeping
    def stage(self, name: str, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run ``work`` in ``OUT/name`` unless it finished before; return its summary."""
        folder = self.out / name
        marker = folder / "DONE.json"
        if marker.is_file() and not self.force:
            print(f"[quickstart] {name}: done before, skipping (--force redoes it)")
            summary: dict[str, Any] = json.loads(marker.read_text())
            return summary
        if self.force and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"[quickstart] {name} ...", flush=True)
        began = time.perf_counter()
        summary = work(folder)
        summary["seconds"] = round(time.perf_counter() - began, 1)
        marker.write_text(json.dumps(summary, indent=2))
        print(f"[quickstart] {name}: {summary['seconds']} s", flush=True)
        return summary

    # ------------------------------------------------------------------ stages
    def tasks(self, folder: Path) -> dict[str, Any]:
        c = self.config
        families = [make_family(n, where=c.where) for n in c.families]
        train = generate_dataset(
            families, c.train_per_family, folder / "train", seed=c.seed, progress=self.progress
        )
        held = generate_dataset(
            families, c.heldout_per_family, folder / "heldout", seed=c.seed + 1000, progress=self.progress
        )
        return {"train": len(train.items), "heldout": len(held.items)}

    def traces(self, folder: Path) -> dict[str, Any]:
        items = read_items(self.out / "tasks" / "train").items
        c = self.config
        mix = TraceMix.single_pass(self_correction=c.self_correction, text_only=c.text_only)
        synthesizer = TraceSynthesizer(self.budget, mix=mix, seed=c.seed)
        conversations, qids, report = synthesizer.run(items, progress=self.progress)
        write_traces(conversations, folder / "traces.json", qids=qids)
        text, text_qids, _ = synthesizer.run(items, mode="notool", progress=self.progress)
        write_traces(text, folder / "traces_notool.json", qids=text_qids)
        return {"pixel": report.summary(), "notool": len(text)}

    def sft(self, folder: Path, traces: str, steps: int) -> dict[str, Any]:
        c = self.config
        config = SFTConfig(
            data=str(self.out / "traces" / traces),
            model=c.preset,
            out_dir=str(folder),
            budget="tiny",
            max_steps=steps,
            batch_size=c.sft_batch,
            grad_accum=c.sft_grad_accum,
            lr=c.sft_lr,
            warmup_ratio=0.05,
            min_lr_ratio=0.1,
            seed=c.seed,
            log_every=10,
            save_every=40,
            metrics=("jsonl",),
            progress=self.progress,
        )
        result = train_sft(config)
        return {
            "steps": result.steps,
            "loss_first": result.losses[0],
            "loss_last": result.losses[-1],
            "tokens_per_s": round(result.tokens_per_second),
        }

    def rl(
        self, folder: Path, start: str, curiosity: Literal["paper", "released", "none"], mode: PromptMode
    ) -> dict[str, Any]:
        c = self.config
        config = RLConfig(
            data=str(self.out / "tasks" / "train"),
            model=str(self.out / start / "final"),
            out_dir=str(folder),
            budget="tiny",
            mode=mode,
            steps=c.rl_steps,
            queries_per_step=c.rl_queries,
            group_size=c.rl_group,
            max_turn_tokens=c.max_turn_tokens,
            train_batch_size=c.rl_batch,
            lr=c.rl_lr,
            seed=c.seed,
            save_every=5,
            metrics=("jsonl",),
            reward=RewardConfig(curiosity=curiosity),
            progress=self.progress,
        )
        result = train_rl(config)
        first, last = result.history[0], result.history[-1]
        return {
            "steps": result.steps,
            "reward_first": first["reward"],
            "reward_last": last["reward"],
            "rapr_first": first["rapr"],
            "rapr_last": last["rapr"],
        }

    def evaluate(self, folder: Path) -> dict[str, Any]:
        held = read_items(self.out / "tasks" / "heldout").items
        limits = RolloutLimits(max_turn_tokens=self.config.max_turn_tokens)
        greedy = SamplingParams(temperature=0.0, max_new_tokens=self.config.max_turn_tokens)
        results: dict[str, Any] = {}
        for name, (_, mode) in MODELS.items():
            model, processor = load_model(self.out / name / "final", dtype=torch.float32)
            engine = RolloutEngine(
                TransformersBackend(model, processor, self.budget), self.budget, limits, greedy
            )
            results[name] = {}
            for family in self.config.families:
                task = get_task(family)
                items = [i for i in held if i.benchmark == family]
                records = evaluate_task(
                    engine,
                    task,
                    items,
                    folder / name,
                    mode=mode,
                    batch_size=32,
                    progress=False,
                )
                results[name][family] = dataclasses.asdict(summarize(task, records))
        (folder / "results.json").write_text(json.dumps(results, indent=2))
        return {"models": list(results)}

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        began = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        c = self.config
        self.stage("tasks", self.tasks)
        self.stage("traces", self.traces)
        self.stage("sft", lambda f: self.sft(f, "traces.json", c.sft_steps))
        self.stage("sft-text", lambda f: self.sft(f, "traces_notool.json", c.sft_text_steps))
        self.stage("rl-curiosity", lambda f: self.rl(f, "sft", "paper", "vcot"))
        self.stage("rl-plain", lambda f: self.rl(f, "sft", "none", "vcot"))
        self.stage("rl-text", lambda f: self.rl(f, "sft-text", "none", "notool"))
        self.stage("eval", self.evaluate)
        from pixelreasoner.report import write_report

        page = write_report(self.out, MODELS, c.families)
        print(f"[quickstart] finished in {time.perf_counter() - began:.0f} s; report: {page}")
        return page
