"""The whole method on a laptop CPU: the learning trap, and what curiosity does about it.

The paper's RL claim: after a warm start whose pixel-space skill is weaker than its direct
answers, RL without the curiosity bonus drives tool use to zero (the learning trap), while the
bonus keeps it alive until zooming pays off. The quickstart builds that situation and runs both
arms from one warm start. Stages, each in its own directory under ``--out`` and skipped when
already done (``--force`` redoes them; SFT and RL also resume from their own checkpoints):

1. ``tasks``: train and held-out items (default: needle on a 2x2 lattice, the red cell found by
   visual search, option A right on 70% of items: an answer prior to fall back on);
2. ``traces``: warm-start traces, half answering the question at once, half through one zoom;
3. ``sft``: the tiny model warm-started on them;
4. ``rl-{arm}-s{k}``: RL from the warm start, per arm (``curiosity``: the paper's bonus and
   penalty, unchanged; ``plain``: no bonus; ``rescue``: the paper's plus the batch-RaPR rescue
   bonus, an ablation) and seed; run ``workers`` at a time, each on its share of the cores;
5. ``eval/{model}``: every model on the held-out items, greedy and sampled (``probe_samples``
   per item, RL's sampling), with accuracy split by path (zoomed / answered directly);
6. ``report``: ``report.html`` and ``report.md`` (the learning-trap figure with seed bands,
   the table with 95% intervals over seeds, the targets as met / not met, verdicts).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from pixelreasoner.data.formats import read_items, write_traces
from pixelreasoner.eval.harness import evaluate_task, summarize
from pixelreasoner.eval.tasks import get_task
from pixelreasoner.models.loading import load_model
from pixelreasoner.rl.reward import RewardConfig
from pixelreasoner.rollout.backend import GREEDY, SamplingParams
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

    families: tuple[str, ...] = ("needle",)
    """The V*-like family: which pattern fills the red cell."""
    knobs: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "needle": {
                "grid": 2,
                "cell": 140,
                "contrast": 1.0,
                "fade": 0,
                "where": "marker",
                "favour_a": 0.6,
            }
        }
    )
    """Task knobs per family (:mod:`pixelreasoner.tasks.families`). A 2x2 lattice of sharp
    patterns, the red cell found by visual search (no position in the question), and an answer
    prior: option A is right on 70% of the items, so answering without looking beats chance."""
    direct: float = 0.5
    """Share of warm-start traces that answer the question at once (the rest zoom once)."""
    self_correction: float = 0.0
    text_only: float = 0.0
    train_per_family: int = 600
    heldout_per_family: int = 96
    preset: str = "tiny-1m"
    sft_steps: int = 80
    """Short enough that many of the warm start's calls are still malformed, so zooming earns less
    than answering directly (12 points less at 80 steps; from ~140 steps zooming earns more):
    the paper's premise (bench/RESULTS.md, the warm-start calibration)."""
    sft_batch: int = 32
    sft_grad_accum: int = 4
    """Micro-batches per SFT step, grouped by length (less padding; same update)."""
    sft_lr: float = 3e-3
    rl_steps: int = 15
    rl_queries: int = 16
    rl_group: int = 8
    rl_batch: int = 64
    rl_lr: float = 1e-4
    """At 5e-4 one phase's update took RaPR from 0.52 to 0.1-0.16 in both arms (bench/RESULTS.md)."""
    max_turn_tokens: int = 96
    probe_samples: int = 8
    """Samples per held-out item when measuring accuracy by path."""
    arms: tuple[str, ...] = ("curiosity", "plain")
    """RL arms (:data:`ARMS`); ``rescue`` is the ablation beyond the paper."""
    seeds: int = 1
    """RL seeds per arm (``seed``, ``seed + 1``, ...), all from the one warm start."""
    workers: int = 2
    """RL runs and evaluations side by side, each with cores / workers threads."""
    seed: int = 0

    @classmethod
    def fast(cls) -> QuickstartConfig:
        return cls(
            train_per_family=24,
            heldout_per_family=6,
            sft_steps=12,
            sft_batch=8,
            sft_grad_accum=2,
            rl_steps=2,
            rl_queries=2,
            rl_group=4,
            rl_batch=8,
            max_turn_tokens=48,
            probe_samples=2,
        )


@dataclass(frozen=True)
class Arm:
    label: str
    reward: RewardConfig
    ablation: bool = False


ARMS: dict[str, Arm] = {
    "curiosity": Arm("RL with curiosity", RewardConfig()),
    "plain": Arm("RL without curiosity", RewardConfig(curiosity="none")),
    "rescue": Arm("RL with curiosity + rescue bonus (ablation)", RewardConfig(rescue=True), ablation=True),
}
"""The RL arms: the paper's bonus and penalty (α 0.5, H 0.3, β 0.05), the same without the
bonus, and the paper's plus the batch-RaPR rescue bonus (:func:`pixelreasoner.rl.reward.rescue_bonus`)."""

PROGRESS_SECONDS = 20.0
"""How often the main process reports the RL runs' phases while workers run them."""

WORKERS_VARIABLE = "PIXELREASONER_WORKERS"
"""Set in the quickstart's worker processes: how many share the cores (see :mod:`pixelreasoner.threads`)."""


def rl_runs(config: QuickstartConfig) -> list[tuple[str, str, int]]:
    """(stage name, arm, seed) of every RL run, seed by seed (so the first seed's arms come first)."""
    unknown = sorted(set(config.arms) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown RL arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    return [
        (f"rl-{arm}-s{config.seed + k}", arm, config.seed + k)
        for k in range(config.seeds)
        for arm in config.arms
    ]


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
        families = [make_family(n, **c.knobs.get(n, {})) for n in c.families]
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
        mix = TraceMix.single_pass(self_correction=c.self_correction, text_only=c.text_only, direct=c.direct)
        synthesizer = TraceSynthesizer(self.budget, mix=mix, seed=c.seed)
        conversations, qids, report = synthesizer.run(items, progress=self.progress)
        write_traces(conversations, folder / "traces.json", qids=qids)
        return {"pixel": report.summary(), "variants": dict(report.variants)}

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

    def rl(self, folder: Path, arm: str, seed: int) -> dict[str, Any]:
        c = self.config
        config = RLConfig(
            data=str(self.out / "tasks" / "train"),
            model=str(self.out / "sft" / "final"),
            out_dir=str(folder),
            budget="tiny",
            steps=c.rl_steps,
            queries_per_step=c.rl_queries,
            group_size=c.rl_group,
            max_turn_tokens=c.max_turn_tokens,
            train_batch_size=c.rl_batch,
            lr=c.rl_lr,
            seed=seed,
            save_every=5,
            metrics=("jsonl",),
            reward=ARMS[arm].reward,
            progress=False,
        )
        result = train_rl(config)
        first, last = result.history[0], result.history[-1]
        return {
            "arm": arm,
            "seed": seed,
            "steps": result.steps,
            "rapr_first": first["rapr"],
            "rapr_last": last["rapr"],
            "accuracy_first": first["accuracy"],
            "accuracy_last": last["accuracy"],
        }

    def evaluate(self, folder: Path, model: str) -> dict[str, Any]:
        """Held-out accuracy of ``OUT/model/final``, greedy and sampled, by family and path."""
        c = self.config
        held = read_items(self.out / "tasks" / "heldout").items
        network, processor = load_model(self.out / model / "final", dtype=torch.float32)
        backend = TransformersBackend(network, processor, self.budget)
        limits = RolloutLimits(max_turn_tokens=c.max_turn_tokens)
        rl = RLConfig()  # RL's sampling: temperature 1 on the first turn, then 0.9; top-p, top-k
        decodings = {
            "greedy": (
                RolloutEngine(
                    backend, self.budget, limits, replace(GREEDY, max_new_tokens=c.max_turn_tokens)
                ),
                1,
            ),
            "sampled": (
                RolloutEngine(
                    backend,
                    self.budget,
                    limits,
                    SamplingParams(rl.temperature_first, rl.top_p, rl.top_k, c.max_turn_tokens),
                    SamplingParams(rl.temperature_later, rl.top_p, rl.top_k, c.max_turn_tokens),
                ),
                c.probe_samples,
            ),
        }
        results: dict[str, Any] = {}
        for decoding, (engine, samples) in decodings.items():
            results[decoding] = {}
            for family in c.families:
                task = get_task(family)
                items = [i for i in held if i.benchmark == family]
                records = evaluate_task(
                    engine,
                    task,
                    items,
                    folder / decoding,
                    batch_size=64,
                    progress=False,
                    samples=samples,
                    seed=c.seed if samples > 1 else None,
                )
                results[decoding][family] = dataclasses.asdict(summarize(task, records))
        return results

    # ------------------------------------------------------------------ jobs
    def job(self, kind: str, name: str, arm: str = "", seed: int = 0) -> dict[str, Any]:
        """One unit of parallel work: evaluate the warm start, or train one RL run and evaluate it."""
        if kind == "rl":
            self.stage(name, lambda f: self.rl(f, arm, seed))
        return self.stage(f"eval/{name}", lambda f: self.evaluate(f, name))

    def run_jobs(self, jobs: Sequence[tuple[str, str, str, int]]) -> None:
        c = self.config
        if c.workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                self.job(*job)
            return
        print(f"[quickstart] {len(jobs)} jobs, {c.workers} at a time", flush=True)
        with ProcessPoolExecutor(
            c.workers, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(c.workers,)
        ) as pool:
            futures = [pool.submit(_job, self.out, c, self.force, *job) for job in jobs]
            shown: dict[str, str] = {}
            while True:
                _, pending = wait(futures, timeout=PROGRESS_SECONDS, return_when=FIRST_EXCEPTION)
                if not pending or any(f.done() and f.exception() for f in futures):
                    break
                self._print_progress([name for kind, name, _, _ in jobs if kind == "rl"], shown)
            for future in futures:
                future.result()  # re-raises a job's error here

    def _print_progress(self, names: Sequence[str], shown: dict[str, str]) -> None:
        """One line per RL run whose phase count moved since the last line (the workers' own output
        is only the stage lines)."""
        for name in names:
            path = self.out / name / "metrics.jsonl"
            if not path.is_file() or (self.out / name / "DONE.json").is_file():
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            try:
                last = json.loads(lines[-1]) if lines else None
            except json.JSONDecodeError:  # a line being written
                continue
            if last is None:
                continue
            line = (
                f"[quickstart] {name}: phase {int(last['step'])}/{self.config.rl_steps}, "
                f"RaPR {last['train/rapr']:.2f}, accuracy {last['train/accuracy']:.2f}"
            )
            if shown.get(name) != line:
                shown[name] = line
                print(line, flush=True)

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        began = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        c = self.config
        self.stage("tasks", self.tasks)
        self.stage("traces", self.traces)
        self.stage("sft", lambda f: self.sft(f, "traces.json", c.sft_steps))
        jobs = [("eval", "sft", "", 0)] + [("rl", name, arm, seed) for name, arm, seed in rl_runs(c)]
        self.run_jobs(jobs)
        from pixelreasoner.report import write_report

        page = write_report(self.out, c)
        print(f"[quickstart] finished in {time.perf_counter() - began:.0f} s; report: {page}")
        return page


def _start_worker(workers: int) -> None:
    from pixelreasoner.threads import configure_threads

    os.environ[WORKERS_VARIABLE] = str(workers)
    configure_threads()


def _job(out: Path, config: QuickstartConfig, force: bool, kind: str, name: str, arm: str, seed: int) -> None:
    Quickstart(out, config, force=force, progress=False).job(kind, name, arm, seed)
