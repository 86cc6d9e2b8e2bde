"""The ``pixelreasoner`` command. It only parses arguments and dispatches to the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

DESCRIPTION = """\
pixel-reasoner: teach vision-language models to reason in pixel space (zoom into images,
select video frames) with warm-start SFT and curiosity-driven RL (arXiv 2505.15966).

Everything runs offline on CPU with a tiny Qwen2.5-VL built from a config; real checkpoints
(e.g. Qwen2.5-VL-7B, TIGER-Lab/PixelReasoner-RL-v1) load from a local directory or a hub id.
"""


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from pixelreasoner.models.loading import load_model
    from pixelreasoner.models.tiny import count_parameters, save_tiny_model

    out = save_tiny_model(Path(args.out_dir), preset=args.preset, seed=args.seed)
    model, processor = load_model(out)
    print(f"saved {args.preset} to {out}")
    print(f"  parameters: {count_parameters(model):,}   vocabulary: {len(processor.tokenizer):,} tokens")
    print(f"  reload with: pixelreasoner.models.loading.load_model({str(out)!r})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pixelreasoner.demo import run_demo

    report = run_demo(Path(args.out), preset=args.preset, seed=args.seed)
    print(f"untrained model wrote: {report.generated[:200]!r}")
    source = (
        "the model's own tool call"
        if report.used_model_call
        else "a scripted tool call (the model wrote none)"
    )
    print(f"executed {source}; observation: {report.observation!r}")
    print(
        f"rendered the conversation: {report.tokens} tokens, {report.image_tokens} image tokens, "
        f"{report.learned_tokens} learned tokens; loss on them {report.loss:.3f}"
    )
    print(f"wrote model, images and conversation.json to {report.out_dir}  ({report.seconds:.1f} s)")
    return 0


def _cmd_budgets(args: argparse.Namespace) -> int:
    from pixelreasoner.vision.budget import PRESETS, TOKEN_PX

    for name, make in PRESETS.items():
        budget = make()
        print(name)
        for field in ("inputs", "crops", "frames", "video", "processor"):
            rng = getattr(budget, field)
            print(
                f"  {field:<10} {rng.min_pixels // TOKEN_PX:>5} .. {rng.max_pixels // TOKEN_PX:<5}"
                " tokens (x 28*28 px)"
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pixelreasoner.models.tiny import PRESETS

    parser = argparse.ArgumentParser(
        prog="pixelreasoner", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo",
        help="run one protocol round end to end on the tiny default (the main job for now)",
        description="Build a tiny model, ask a question about a generated image, execute a zoom-in "
        "tool call, render the conversation with its loss mask. Offline, CPU, seconds.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument(
        "--preset", default="tiny-1m", choices=sorted(PRESETS), help="tiny model size (default: tiny-1m)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "tiny-model",
        help="build a tiny Qwen2.5-VL from a config and save it",
        description="Train a byte-level BPE tokenizer offline, build a randomly initialised "
        "Qwen2.5-VL of a tiny preset, and save both with save_pretrained.",
    )
    p.add_argument("out_dir", help="directory to write the model and processor to")
    p.add_argument(
        "--preset", default="tiny-1m", choices=sorted(PRESETS), help="size preset (default: tiny-1m)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for weights (default: 0)")
    p.set_defaults(func=_cmd_tiny_model)

    p = sub.add_parser("budgets", help="print the pixel-budget presets (released train/eval, tiny)")
    p.set_defaults(func=_cmd_budgets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
