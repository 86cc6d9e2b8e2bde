"""Can the tiny default learn a task family on CPU in minutes? Measure it end to end.

generate train/held-out items → synthesize warm-start traces → SFT for a step budget →
greedy multi-turn rollouts on held-out items, with the model's *own* crops. Prints: training
time and throughput, share of valid first-turn tool calls, share that zoomed on the right
region, accuracy, RaPR, and a global-view-only control (the same model answering with the
``notool`` prompt, which cannot see the detail).

    python bench/learnability.py --family needle --train 800 --steps 300 --out runs/learn-needle
    python bench/learnability.py --family all --train 200 --steps 400 --out runs/learn-all

With several families, one model is trained on all of them (``--train`` items each) and every
figure is also given per family.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pixelreasoner.data.formats import write_traces
from pixelreasoner.data.items import TaskItem
from pixelreasoner.eval.tasks import task_for
from pixelreasoner.models.loading import load_model
from pixelreasoner.protocol.turns import parse_turn
from pixelreasoner.rollout.backend import SamplingParams
from pixelreasoner.rollout.engine import RolloutEngine, rollout_items
from pixelreasoner.rollout.hf import TransformersBackend
from pixelreasoner.synth.traces import TraceMix, TraceSynthesizer
from pixelreasoner.tasks.families import FAMILIES, make_family, parse_knobs
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.train.sft import SFTConfig, train_sft
from pixelreasoner.trajectory import Trajectory
from pixelreasoner.vision.budget import tiny


def first_call(trajectory: Trajectory, item: TaskItem) -> tuple[bool, bool]:
    """Whether the first turn is a valid tool call, and whether that call hit the cue."""
    turns = trajectory.conversation.model_turns
    call = parse_turn(turns[0].text).call if turns else None
    if call is None or call.error is not None:
        return False, False
    args = call.arguments or {}
    if item.is_video:
        return True, args.get("target_frames") == item.cue_frames
    box = args.get("bbox_2d")
    right = (
        isinstance(box, list)
        and len(box) == 4
        and all(
            isinstance(v, int | float) and abs(v - c) < 0.05
            for v, c in zip(box, item.cue_bbox or [], strict=False)
        )
    )
    return True, right


def figures(
    trajectories: Sequence[Trajectory], items: Sequence[TaskItem], control: Sequence[Trajectory]
) -> dict[str, float]:
    """Valid first calls, right regions, accuracy, RaPR and the no-tool control, as shares."""
    n = max(1, len(items))
    calls = [first_call(t, i) for t, i in zip(trajectories, items, strict=True)]
    return {
        "n": len(items),
        "valid_first_call": sum(v for v, _ in calls) / n,
        "right_region": sum(r for _, r in calls) / n,
        "accuracy": sum(task_for(i).score(t, i) for t, i in zip(trajectories, items, strict=True)) / n,
        "rapr": sum(t.uses_tools for t in trajectories) / n,
        "notool_control_accuracy": sum(task_for(i).score(t, i) for t, i in zip(control, items, strict=True))
        / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="needle", help="a family, a comma list, or 'all'")
    parser.add_argument("--train", type=int, default=800, help="training items")
    parser.add_argument("--eval", type=int, default=64, help="held-out items")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--preset", default="tiny-1m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/learnability")
    parser.add_argument(
        "--single-only", action="store_true", help="single-pass traces only (no self-correction or text-only)"
    )
    parser.add_argument(
        "--where",
        default="marker+text",
        choices=["marker", "marker+text"],
        help="how questions locate the cue (see pixelreasoner.tasks.families.Where)",
    )
    parser.add_argument(
        "--knob", action="append", default=[], metavar="KEY=VALUE", help="knob for every family that has it"
    )
    args = parser.parse_args()
    out = Path(args.out)
    budget = tiny()
    names = list(FAMILIES) if args.family == "all" else args.family.split(",")
    families = [
        make_family(n, where=args.where, **parse_knobs(n, args.knob, skip_unknown=True)) for n in names
    ]
    began = time.perf_counter()
    train = generate_dataset(families, args.train, out / "train", seed=args.seed, progress=False).items
    held = generate_dataset(families, args.eval, out / "heldout", seed=args.seed + 1000, progress=False).items
    mix = TraceMix.single_pass() if args.single_only else TraceMix()
    conversations, qids, report = TraceSynthesizer(budget, mix=mix, seed=args.seed).run(train, progress=False)
    traces = write_traces(conversations, out / "traces.json", qids=qids)
    print(report.summary(), f"({time.perf_counter() - began:.0f} s for data)")

    config = SFTConfig(
        data=str(traces),
        model=args.preset,
        out_dir=str(out / "sft"),
        max_steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup_ratio=0.05,
        min_lr_ratio=0.1,
        seed=args.seed,
        log_every=25,
        metrics=("jsonl",),
        progress=False,
        resume=False,
    )
    t0 = time.perf_counter()
    result = train_sft(config)
    sft_seconds = time.perf_counter() - t0
    print(
        f"sft: {result.steps} steps in {sft_seconds:.0f} s, {result.tokens_per_second:.0f} tokens/s, "
        f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}"
    )

    model, processor = load_model(result.final_dir, dtype=torch.float32)
    engine = RolloutEngine(
        TransformersBackend(model, processor, budget),
        budget,
        first=SamplingParams(temperature=0.0, max_new_tokens=160),
    )
    t0 = time.perf_counter()
    trajectories = rollout_items(engine, held)
    rollout_seconds = time.perf_counter() - t0
    control = rollout_items(engine, held, mode="notool")
    summary = {
        "family": args.family,
        "knobs": args.knob,
        "where": args.where,
        "train_items": args.train,
        "traces": len(conversations),
        "steps": result.steps,
        "sft_seconds": round(sft_seconds, 1),
        "tokens_per_s": round(result.tokens_per_second),
        **figures(trajectories, held, control),
        "rollout_seconds": round(rollout_seconds, 1),
        "final_loss": result.losses[-1],
    }
    if len(names) > 1:
        summary["per_family"] = {
            name: figures(
                *zip(
                    *[
                        (t, i, c)
                        for t, i, c in zip(trajectories, held, control, strict=True)
                        if i.benchmark == name
                    ],
                    strict=True,
                )
            )
            for name in names
        }
    print(json.dumps(summary, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    example = trajectories[0]
    for turn in example.conversation.turns[2:]:
        print(f"[{turn.kind.value}] {turn.text[:200]!r}")


if __name__ == "__main__":
    main()
