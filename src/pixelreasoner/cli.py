"""The ``pixelreasoner`` command. It only parses arguments and dispatches to the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pixelreasoner.rollout.engine import RolloutEngine
    from pixelreasoner.tasks.families import Family

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
            if rng is None:  # frames=None: returned unresized
                print(f"  {field:<10} not resized")
                continue
            print(
                f"  {field:<10} {rng.min_pixels // TOKEN_PX:>5} .. {rng.max_pixels // TOKEN_PX:<5}"
                " tokens (x 28*28 px)"
            )
    return 0


def _parse_knobs(pairs: Sequence[str], family: str) -> dict[str, object]:
    """``key=value`` difficulty knobs, converted to the family field's type."""
    from pixelreasoner.tasks.families import parse_knobs

    try:
        return parse_knobs(family, pairs)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def _family_names(spec: str) -> list[str]:
    """``all`` or a comma list of family names, checked."""
    from pixelreasoner.tasks.families import FAMILIES

    names = list(FAMILIES) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise SystemExit(f"unknown family {', '.join(unknown)}; choose from {', '.join(FAMILIES)} or 'all'")
    return names


def _families(spec: str, knob_pairs: Sequence[str]) -> list[Family]:
    from pixelreasoner.tasks.families import make_family

    names = _family_names(spec)
    if knob_pairs and len(names) != 1:
        raise SystemExit("--knob applies to one family at a time; name a single --family")
    return [make_family(n, **(_parse_knobs(knob_pairs, n) if knob_pairs else {})) for n in names]


def _cmd_synth_tasks(args: argparse.Namespace) -> int:
    from pixelreasoner.tasks.generate import generate_dataset

    dataset = generate_dataset(_families(args.family, args.knob), args.n, Path(args.out), seed=args.seed)
    print(dataset.summary())
    return 0


def _cmd_synth_traces(args: argparse.Namespace) -> int:
    from pixelreasoner.data.formats import read_items, write_traces
    from pixelreasoner.synth.teacher import OpenAITeacher
    from pixelreasoner.synth.traces import TraceMix, TraceSynthesizer
    from pixelreasoner.vision.budget import pixel_budget

    loaded = read_items(Path(args.data))
    print(loaded.summary())
    shares = dict(pair.split("=", 1) for pair in args.mix) if args.mix else {}
    try:
        mix = TraceMix(**{k: float(v) for k, v in shares.items()}, text_only=args.text_only)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"bad --mix: {exc}") from None
    writer = None
    if args.teacher_url:
        import os

        key = os.environ.get(args.teacher_api_key_env) if args.teacher_api_key_env else None
        writer = OpenAITeacher(base_url=args.teacher_url, model=args.teacher_model, api_key=key)
    synthesizer = TraceSynthesizer(pixel_budget(args.budget), mix=mix, writer=writer, seed=args.seed)
    conversations, qids, report = synthesizer.run(loaded.items, mode=args.mode)
    path = write_traces(conversations, Path(args.out), qids=qids)
    print(report.summary())
    print(f"wrote {len(conversations)} traces to {path}")
    return 0


def _cmd_synth_legibility(args: argparse.Namespace) -> int:
    from pixelreasoner.tasks.legibility import measure
    from pixelreasoner.vision.budget import pixel_budget

    for family in _families(args.family, args.knob):
        print(
            measure(
                family, pixel_budget(args.budget), items=args.items, seed=args.seed, noise=args.noise
            ).summary()
        )
    return 0


def _add_synth(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    synth = sub.add_parser("synth", help="generate synthetic tasks and warm-start traces")
    ssub = synth.add_subparsers(dest="synth_command", metavar="WHAT", required=True)

    p = ssub.add_parser(
        "tasks",
        help="generate a synthetic task dataset (PNG images + items.parquet)",
        description="Generate items of the synthetic families (needle: V*-like, count: "
        "TallyQA-like, read: InfoVQA-like, frames: MVBench-like) into DIR/items.parquet and "
        "DIR/images/. Deterministic in --seed.",
    )
    p.add_argument("--family", default="all", help="family name, comma-separated names, or 'all' (default)")
    p.add_argument("--n", type=int, default=100, help="items per family (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="difficulty knob of a single family, e.g. layout=scattered or contrast=1.0 (repeatable)",
    )
    p.set_defaults(func=_cmd_synth_tasks)

    p = ssub.add_parser(
        "traces",
        help="synthesize warm-start SFT traces from an annotated dataset",
        description="Build template-based multi-turn traces around each item's cue (box or "
        "frames), with self-correction variants and text-only traces; every operation is "
        "executed for real under the pixel budget. Writes the released message_list JSON "
        "(.jsonl for JSON Lines) with erroneous turns marked.",
    )
    p.add_argument("--data", required=True, help="dataset directory or items.parquet")
    p.add_argument("--out", required=True, help="output trace file (.json or .jsonl)")
    p.add_argument(
        "--mode",
        choices=["vcot", "notool"],
        default="vcot",
        help="vcot: pixel-space traces (default); notool: direct answers for the text-only baseline",
    )
    p.add_argument(
        "--mix",
        action="append",
        default=[],
        metavar="VARIANT=SHARE",
        help="variant shares: single, recrop_once, recrop_twice, zoom_further (sum 1), "
        "video_single, video_reselect (sum 1); default 0.3/0.2/0.2/0.3 and 0.9/0.1; direct=S answers "
        "a share S of the items at once, without an operation (default 0)",
    )
    p.add_argument("--text-only", type=float, default=0.25, help="share of text-only traces (default: 0.25)")
    p.add_argument("--budget", default="tiny", help="pixel budget preset (default: tiny)")
    p.add_argument("--seed", type=int, default=0, help="seed for variants and wording (default: 0)")
    p.add_argument(
        "--teacher-url",
        help="OpenAI-compatible base URL (e.g. http://localhost:8000/v1) of a "
        "teacher that writes the analysis text; templates are used when omitted",
    )
    p.add_argument("--teacher-model", default="gpt-4o", help="teacher model name (default: gpt-4o)")
    p.add_argument(
        "--teacher-api-key-env", metavar="VAR", help="name of the environment variable holding the key"
    )
    p.set_defaults(func=_cmd_synth_traces)

    p = ssub.add_parser(
        "legibility",
        help="measure that answers are legible only after zooming",
        description="Render counterfactual items (one per possible answer) and compare them in "
        "the global view and in the zoomed view; prints grey-level differences and the accuracy "
        "of a nearest-counterfactual oracle under pixel noise.",
    )
    p.add_argument("--family", default="all", help="family name(s) or 'all' (default)")
    p.add_argument("--items", type=int, default=32, help="items per family (default: 32)")
    p.add_argument(
        "--noise", type=float, default=8.0, help="oracle's pixel noise in grey levels (default: 8)"
    )
    p.add_argument("--budget", default="tiny", help="pixel budget preset (default: tiny)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument(
        "--knob", action="append", default=[], metavar="KEY=VALUE", help="difficulty knob (one family)"
    )
    p.set_defaults(func=_cmd_synth_legibility)


def _recipe_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The optional recipe may be left out: then a first KEY=VALUE is an override."""
    if args.config is not None and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        return None, [args.config, *args.overrides]
    return args.config, list(args.overrides)


def _cmd_sft(args: argparse.Namespace) -> int:
    from pixelreasoner.config import ConfigError, load_config
    from pixelreasoner.train.sft import SFTConfig, train_sft

    recipe, overrides = _recipe_and_overrides(args)
    try:
        config = load_config(SFTConfig, recipe, overrides)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    if args.plan_only:
        return _print_plan(config, args)
    result = train_sft(config)
    last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
    if _is_main_process():
        print(
            f"sft finished: {result.steps} steps, final loss {last}, {result.tokens_per_second:.0f} "
            f"tokens/s, {result.skipped} traces skipped in training, {result.load_problems} unreadable "
            f"records; model in {result.final_dir}"
        )
    return _leave_process_group(0)


def _print_plan(config: object, args: argparse.Namespace) -> int:
    """``--plan-only``: the memory plan per device, from the model's config (built on the meta
    device, nothing loaded); exit status 1 when it does not fit the device."""
    import os

    from pixelreasoner.train.memory import plan_for_config

    world = args.world or int(os.environ.get("WORLD_SIZE", "1"))
    device_bytes = int(args.device_gib * 2**30) if args.device_gib else None
    if device_bytes is None:
        import torch

        if torch.cuda.is_available():
            device_bytes = int(torch.cuda.get_device_properties(0).total_memory)
    try:
        plan = plan_for_config(config, shape=args.shape, world=world, device_bytes=device_bytes)
    except ValueError as exc:
        raise SystemExit(f"plan: {exc}") from None
    print(plan.render())
    return 0 if plan.fits else 1


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plan-only",
        action="store_true",
        help="print the memory plan per device (parameters, gradients, optimizer state, rollout "
        "weights, KV cache, activations) and exit; status 1 if it does not fit the device",
    )
    p.add_argument(
        "--world", type=int, default=0, help="processes to plan for (default: the launcher's, else 1)"
    )
    p.add_argument(
        "--device-gib",
        type=float,
        default=0.0,
        help="device memory to plan against (default: the visible GPU's)",
    )
    p.add_argument(
        "--shape",
        help="plan for a published shape (qwen2.5-vl-3b, qwen2.5-vl-7b), not the model's own config",
    )


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _leave_process_group(code: int) -> int:
    """End a multi-process run cleanly: leave the process group, then exit at once.

    FSDP2 with gloo aborted at interpreter exit after ``destroy_process_group`` in ~10-15% of
    runs ("terminate called without an active exception"); exiting right after it did not
    (shared/TOOLCHAIN.md, "Sharded training"). Single-process runs return normally.
    """
    import os

    import torch.distributed as dist

    if not dist.is_initialized():
        return code
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _cmd_export(args: argparse.Namespace) -> int:
    from pixelreasoner.train.checkpoint import export_checkpoint

    try:
        out = export_checkpoint(args.checkpoint, args.out)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"export: {exc}") from None
    print(f"exported {args.checkpoint} to {out} (loads with load_model, eval and chat)")
    return 0


def _cmd_rl(args: argparse.Namespace) -> int:
    from pixelreasoner.config import ConfigError, load_config
    from pixelreasoner.train.rl import RLConfig, train_rl

    recipe, overrides = _recipe_and_overrides(args)
    try:
        config = load_config(RLConfig, recipe, overrides)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    if args.plan_only:
        return _print_plan(config, args)
    result = train_rl(config)
    if result.history and _is_main_process():
        first, last = result.history[0], result.history[-1]
        print(
            f"rl finished: {result.steps} steps; reward {first['reward']:.3f} -> {last['reward']:.3f}, "
            f"accuracy {first['accuracy']:.3f} -> {last['accuracy']:.3f}, RaPR {first['rapr']:.2f} -> "
            f"{last['rapr']:.2f}; model in {result.final_dir}"
        )
    return _leave_process_group(0)


def _cmd_quickstart(args: argparse.Namespace) -> int:
    import dataclasses

    from pixelreasoner.quickstart import ARMS, Quickstart, QuickstartConfig

    config = QuickstartConfig.fast() if args.fast else QuickstartConfig()
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip()) if args.arms else config.arms
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"unknown --arms {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    if args.seeds < 1 or args.workers < 1:
        raise SystemExit("--seeds and --workers must be at least 1")
    config = dataclasses.replace(config, seed=args.seed, seeds=args.seeds, arms=arms, workers=args.workers)
    if args.families:
        names = _family_names(args.families)
        config = dataclasses.replace(config, families=tuple(names))
    Quickstart(args.out, config, force=args.force).run()
    return 0


def _make_engine(args: argparse.Namespace, budget_name: str) -> tuple[RolloutEngine, bool]:
    """A rollout engine for --model (a path / hub id, or an http(s) URL of an OpenAI-compatible server).

    Returns the engine and whether it is served over HTTP (then the async driver is used).
    """
    import os

    from pixelreasoner.rollout.backend import SamplingParams
    from pixelreasoner.rollout.engine import RolloutEngine, RolloutLimits
    from pixelreasoner.vision.budget import pixel_budget

    budget = pixel_budget(budget_name)
    limits = RolloutLimits(max_turn_tokens=args.max_new_tokens)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    if args.model.startswith(("http://", "https://")):
        from pixelreasoner.rollout.http import OpenAIBackend

        key = os.environ.get(args.api_key_env) if args.api_key_env else None
        backend = OpenAIBackend(args.model, model=args.served_model_name, api_key=key, budget=budget)
        try:
            backend.check_server()
        except ConnectionError as exc:
            raise SystemExit(str(exc)) from None
        return RolloutEngine(backend, budget, limits, first=greedy), True
    import torch

    from pixelreasoner.models.loading import load_model
    from pixelreasoner.rollout.hf import TransformersBackend

    dtype = "auto" if torch.cuda.is_available() else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load_model(args.model, dtype=dtype, device=device)
    return RolloutEngine(TransformersBackend(model, processor, budget), budget, limits, first=greedy), False


def _cmd_eval(args: argparse.Namespace) -> int:
    import os

    from pixelreasoner.eval.harness import TaskRun, check_out, open_backend, refusal, run_evaluation
    from pixelreasoner.eval.protocol import (
        ModelIdentity,
        ProtocolMismatch,
        build_protocol,
        http_identity,
        model_identity,
        protocol_record,
    )
    from pixelreasoner.eval.tasks import get_task

    try:
        protocol = build_protocol(
            args.protocol,
            mode=args.mode,
            budget=args.budget,
            max_new_tokens=args.max_new_tokens,
            samples=args.samples,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            max_calls=args.max_calls,
            max_images=args.max_images,
            max_total_tokens=args.max_total_tokens,
        )
        tasks = [get_task(name.strip()) for name in args.tasks.split(",") if name.strip()]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    runs = []
    for task in tasks:
        try:
            loaded = task.load(args.data_root)
        except FileNotFoundError as exc:
            raise SystemExit(str(exc)) from None
        if loaded.problems:
            print(loaded.summary())
        items = loaded.items[: args.limit] if args.limit else loaded.items
        runs.append(TaskRun(task, items, len(loaded.problems)))
    served = args.model.startswith(("http://", "https://"))
    folder = Path(args.model).expanduser()
    identity: ModelIdentity | None = None
    if served:
        identity = http_identity(args.model, args.served_model_name)
    elif folder.is_dir() and any(folder.glob("*.safetensors")):
        identity = model_identity(args.model)  # from the files, so a refusal comes before loading
    if identity is not None and not args.force:
        problem = check_out(args.out, protocol_record(protocol, identity))
        if problem:
            raise SystemExit(refusal(args.out, problem))
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    try:
        backend, model = open_backend(args.model, protocol.budget, args.served_model_name, key)
    except ConnectionError as exc:
        raise SystemExit(str(exc)) from None
    if identity is None:
        identity = model_identity(args.model, model)
    try:
        run_evaluation(
            backend,
            runs,
            args.out,
            protocol,
            identity,
            batch_size=args.batch_size,
            concurrency=args.concurrency if served else None,
            force=args.force,
            data_root=args.data_root,
        )
    except ProtocolMismatch as exc:
        raise SystemExit(str(exc)) from None
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"))
    print(f"per-item results, protocol.json and summary in {args.out}")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    import asyncio

    from pixelreasoner.rollout.engine import Query
    from pixelreasoner.trajectory import Conversation, ImagePart
    from pixelreasoner.viewer import write_page
    from pixelreasoner.vision.images import ImageLoadError, load_image
    from pixelreasoner.vision.ops import VisualContext

    engine, served = _make_engine(args, args.budget)
    try:
        images = [load_image(p) for p in args.image]
    except ImageLoadError as exc:
        raise SystemExit(str(exc)) from None
    conversation = Conversation.from_question(
        args.question, [ImagePart(image=i) for i in images], mode=args.mode
    )
    query = Query(conversation, VisualContext.for_query(images, budget=engine.budget))
    if served:
        trajectory = asyncio.run(engine.run_async([query], concurrency=1))[0]
    else:
        trajectory = engine.run([query])[0]
    for turn in trajectory.conversation.turns[1:]:
        images_note = f"  [+{len(turn.images)} image(s)]" if turn.images else ""
        print(f"--- {turn.role} ({turn.kind.value}){images_note}\n{turn.text}")
    print(
        f"--- finished: {trajectory.finish_reason}, {trajectory.n_calls} operation(s), "
        f"{trajectory.n_failed} failed"
    )
    page = write_page(args.html, [trajectory], title=args.question)
    print(f"trajectory page: {page}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from pixelreasoner.eval.compare import write_comparison

    try:
        page, markdown, comparison = write_comparison(
            args.run_dirs, args.out, data_root=args.data_root, by=args.by, max_items=args.max_items
        )
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    print(markdown.read_text(encoding="utf-8"))
    print(
        f"{len(comparison.disagreements)} items on which the runs disagree; "
        f"page: {page}, markdown: {markdown}"
    )
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint directory or hub id (in-process), or the URL of an "
        "OpenAI-compatible server, e.g. http://localhost:8000/v1 (vLLM, SGLang, transformers serve)",
    )
    p.add_argument(
        "--served-model-name", default="default", help="model name to send to the server (HTTP only)"
    )
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the server's API key")
    p.add_argument(
        "--budget",
        default="released-eval",
        help="pixel budget preset (default: released-eval; the tiny models use 'tiny')",
    )
    p.add_argument(
        "--mode",
        choices=["vcot", "notool"],
        default="vcot",
        help="prompt with tools (vcot, default) or the text-only baseline (notool)",
    )
    p.add_argument("--max-new-tokens", type=int, default=2048, help="tokens per turn (default: 2048)")


def build_parser() -> argparse.ArgumentParser:
    from pixelreasoner.models.tiny import PRESETS

    parser = argparse.ArgumentParser(
        prog="pixelreasoner", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo",
        help="a seconds-long tour: one protocol round end to end on the tiny default",
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

    _add_synth(sub)

    p = sub.add_parser(
        "sft",
        help="warm-start SFT on multi-turn traces",
        description="Supervised fine-tuning on pixel-space traces (loss on the model's own "
        "correct turns only). CONFIG is a YAML recipe (e.g. configs/sft_tiny.yaml); KEY=VALUE "
        "overrides any field (lr=1e-5 batch_size=8 ...). Resumes from OUT_DIR's latest "
        "checkpoint unless resume=false. Multi-process: torchrun --nproc_per_node N -m "
        "pixelreasoner.cli sft ... (strategy=fsdp shards the model). The memory plan is printed "
        "before training.",
    )
    p.add_argument("config", nargs="?", help="YAML recipe (fields of SFTConfig); defaults when omitted")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="field overrides, checked against types")
    _add_plan_options(p)
    p.set_defaults(func=_cmd_sft)

    p = sub.add_parser(
        "eval",
        help="evaluate a model on benchmarks (greedy or Avg@k, multi-turn with operations)",
        description="Roll out every item with the operations (greedily, or K sampled trajectories per "
        "item with --samples), score the last \\boxed{} answer, and report accuracy (ANLS for "
        "infovqa/read), RaPR and tool-error rate with 95% intervals, operations and turns per item. "
        "The protocol (model hash, prompt mode, pixel budget, decoding, limits, scoring version, "
        "library versions) is recorded in OUT/protocol.json and heads the summary. Per-(item, sample) "
        "JSONL in --out: an interrupted run continues where it stopped, and a run whose protocol "
        "differs from the one recorded there is refused (--force sets the old results aside). "
        "--protocol released fixes the authors' evaluation settings.",
    )
    _add_model_args(p)
    # None = not given: the protocol (custom defaults or a preset) decides, and a preset refuses
    # a given value that differs from its own.
    p.set_defaults(budget=None, mode=None, max_new_tokens=None)
    p.add_argument(
        "--protocol",
        choices=["custom", "released"],
        default="custom",
        help="released: the authors' evaluation (vcot; budget released-eval-as-run: released-eval "
        "with crops from the model's view and a 512..5120-token processor; greedy, 1 sample, 2048 "
        "tokens per turn, 4 calls, 16 images, 12088 tokens); a flag that contradicts it is an "
        "error. custom (default): the flags' values",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="trajectories per item, Avg@K (default 1; K > 1 needs --temperature)",
    )
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 0: greedy)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default 1; sampling only)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling (default 0: off; sampling only)")
    p.add_argument("--seed", type=int, default=None, help="seed of sampled runs (default 0; sampling only)")
    p.add_argument("--max-calls", type=int, default=None, help="operations per trajectory (default 4)")
    p.add_argument("--max-images", type=int, default=None, help="images per trajectory (default 16)")
    p.add_argument(
        "--max-total-tokens",
        type=int,
        default=None,
        help="prompt + turn tokens after which a call is cut off (default 12288; released 12088)",
    )
    p.add_argument(
        "--tasks",
        required=True,
        help="comma-separated: vstar, tallyqa_complex, infovqa, mvbench, needle, count, read, frames",
    )
    p.add_argument(
        "--data-root", required=True, help="directory with the released eval parquet(s) / our datasets"
    )
    p.add_argument("--out", default="runs/eval", help="output directory (default: runs/eval)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N items of each task")
    p.add_argument(
        "--batch-size", type=int, default=16, help="trajectories per batch in-process (default: 16)"
    )
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight over HTTP (default: 16)")
    p.add_argument(
        "--force",
        action="store_true",
        help="if --out holds results of another protocol, move them to OUT/superseded-N/ and start again",
    )
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "chat",
        help="run one trajectory on your image and question; write an HTML page of it",
        description="Ask a question about one or more images; prints every turn (tool calls, "
        "observations) and writes a self-contained page showing the crops on their images.",
    )
    _add_model_args(p)
    p.add_argument("--image", action="append", required=True, help="image file (repeat for several)")
    p.add_argument("--question", required=True, help="the question")
    p.add_argument("--html", default="runs/chat/trajectory.html", help="page to write")
    p.set_defaults(func=_cmd_chat)
    p = sub.add_parser(
        "rl",
        help="curiosity-driven RL from a warm-start checkpoint",
        description="GRPO-style RL with the curiosity bonus and efficiency penalty (SPEC 4): groups of "
        "rollouts per query, advantages against the group mean, uniform groups dropped or replayed (SSR), "
        "token-level PPO with asymmetric clipping. CONFIG is a YAML recipe (e.g. configs/rl_tiny.yaml); "
        "KEY=VALUE overrides fields, reward.FIELD=VALUE the reward's. Multi-process: "
        "torchrun --nproc_per_node N -m pixelreasoner.cli rl ... (strategy=fsdp shards the model). "
        "The memory plan is printed before training.",
    )
    p.add_argument("config", nargs="?", help="YAML recipe (fields of RLConfig); defaults when omitted")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="field overrides, checked against types")
    _add_plan_options(p)
    p.set_defaults(func=_cmd_rl)
    p = sub.add_parser(
        "export",
        help="a sharded (strategy=fsdp) checkpoint as an ordinary Hugging Face model folder",
        description="Read the sharded training state of a checkpoint written under strategy=fsdp "
        "(OUT_DIR/checkpoints/step-N, any number of processes) in one process and write the model "
        "and processor as a Hugging Face folder that load_model, eval and chat read.",
    )
    p.add_argument("checkpoint", help="a checkpoint folder, e.g. runs/rl/checkpoints/step-000100")
    p.add_argument("out", help="the folder to write")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser(
        "quickstart",
        help="the whole method on CPU: tasks, traces, SFT, RL with and without curiosity (the trap), report",
        description="Generate synthetic tasks and warm-start traces, SFT the tiny model to a warm start "
        "that earns more by answering directly than by zooming, run RL from it with the paper's "
        "curiosity bonus and without it, evaluate every model on held-out items (greedy and sampled, split "
        "by path) and write report.html / report.md with the learning-trap figure, the table and the "
        "targets. Offline. One seed per arm: about 13 minutes on 2 cores; --seeds 3 runs the full claim "
        "(about 30 minutes; 45 with --arms curiosity,plain,rescue); --fast is a smoke version (a minute). "
        "Stages already done are skipped (more "
        "seeds reuse the first seeds' runs); a killed run continues where it stopped.",
    )
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument("--fast", action="store_true", help="small smoke version (what CI runs)")
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    p.add_argument(
        "--seeds", type=int, default=1, help="RL seeds per arm, all from the one warm start (default: 1)"
    )
    p.add_argument(
        "--arms",
        default=None,
        help="RL arms, comma-separated: curiosity (the paper's bonus), plain (none), rescue (the paper's "
        "plus the batch-RaPR rescue bonus, an ablation) (default: curiosity,plain)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="RL runs side by side, each on cores / workers threads (default: 2)",
    )
    p.add_argument(
        "--families",
        default=None,
        help="task families, comma-separated or 'all' (default: needle, with the trap's knobs)",
    )
    p.set_defaults(func=_cmd_quickstart)
    p = sub.add_parser(
        "compare",
        help="evaluation runs side by side: one HTML page and markdown (scores, protocols, disagreements)",
        description="Read eval output folders (summary.json, protocol.json, TASK.jsonl) and write "
        "OUT/compare.html and OUT/compare.md: scores with 95% intervals, RaPR, tool errors and turns "
        "per run and task, the protocol fields that differ (highlighted), the items on which the runs "
        "disagree with each run's prediction, and those items' trajectories side by side with the crop "
        "boxes drawn (give --data-root to show the images: the runs do not record it).",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="eval output folders (--out of eval)")
    p.add_argument("--out", default="runs/compare", help="output directory (default: runs/compare)")
    p.add_argument(
        "--data-root", default=None, help="the eval's --data-root, to show the items' images and crops"
    )
    p.add_argument(
        "--by",
        choices=["mean", "sample0"],
        default="mean",
        help="an item's correctness: share of its samples correct (default) or sample 0's",
    )
    p.add_argument(
        "--max-items", type=int, default=30, help="disagreements whose trajectories are drawn (default: 30)"
    )
    p.set_defaults(func=_cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pixelreasoner.threads import configure_threads

    configure_threads()  # cores / processes threads each, before any torch work (OMP_NUM_THREADS wins)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
