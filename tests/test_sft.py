"""Warm-start SFT: loss, masking, parameters, invariances, resume, two processes, bad data."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForImageTextToText

from pixelreasoner.config import ConfigError, load_config
from pixelreasoner.data.formats import read_traces, write_traces
from pixelreasoner.models.loading import load_model
from pixelreasoner.render import Renderer
from pixelreasoner.synth.traces import TraceSynthesizer
from pixelreasoner.tasks.families import make_family
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.train import sft as sft_module
from pixelreasoner.train.common import apply_freezing
from pixelreasoner.train.dist import make_accelerator
from pixelreasoner.train.metrics import read_metrics
from pixelreasoner.train.sft import SFTConfig, TraceDataset, initial_model, train_sft
from pixelreasoner.train.sft_steps import learned_tokens, sft_step
from pixelreasoner.train.tokens import nll_sum, shared_prefix_length
from pixelreasoner.trajectory import ImagePart
from pixelreasoner.vision.budget import tiny

BUDGET = tiny()


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthesized traces (needle and frames, with self-correction and text-only ones)."""
    root = tmp_path_factory.mktemp("sft-data")
    dataset = generate_dataset(
        [make_family("needle"), make_family("frames")], 9, root / "tasks", progress=False
    )
    conversations, qids, _ = TraceSynthesizer(BUDGET).run(dataset.items, progress=False)
    return write_traces(conversations[:24], root / "traces.json", qids=qids[:24])


def config(traces: Path, out: Path, **changes: object) -> SFTConfig:
    base = SFTConfig(
        data=str(traces),
        out_dir=str(out),
        batch_size=8,
        max_steps=2,
        lr=2e-3,
        warmup_ratio=0.0,
        progress=False,
        metrics=("jsonl",),
        log_every=1,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(path, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_finite_loss_trainable_change_frozen_stay(traces: Path, tmp_path: Path) -> None:
    cfg = config(traces, tmp_path / "run", freeze_vision=True)
    start, _ = initial_model(cfg, read_traces(traces).conversations)
    before = {k: v.detach().clone() for k, v in start.state_dict().items()}
    result = train_sft(cfg)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    after = weights(result.final_dir)
    for name, value in before.items():
        moved = not torch.equal(value, after[name])
        frozen = ".visual." in f".{name}" and ".merger." not in name
        assert moved is not frozen, name


def test_one_batch_overfits(traces: Path, tmp_path: Path) -> None:
    result = train_sft(
        config(
            traces,
            tmp_path / "run",
            batch_size=4,
            max_steps=60,
            lr=3e-3,
            epochs=1,
            data=str(_subset(traces, tmp_path, 4)),
        )
    )
    assert result.losses[-1] < 0.3 < result.losses[0] / 10


def _subset(traces: Path, tmp_path: Path, n: int) -> Path:
    loaded = read_traces(traces)
    return write_traces(loaded.conversations[:n], tmp_path / f"first{n}.json", qids=loaded.qids[:n])


def test_accumulation_is_invariant(traces: Path, tmp_path: Path) -> None:
    """batch 8 x accum 1 and micro-batches of 2 x accum 4 give the same losses and weights."""
    whole = train_sft(config(traces, tmp_path / "whole"))
    split = train_sft(config(traces, tmp_path / "split", grad_accum=4))
    assert split.losses == pytest.approx(whole.losses, abs=1e-5)
    # Summation order differs, and Adam divides near-zero gradients by their own size, so the
    # weights agree to 1e-4 after two steps of lr 2e-3 (under 5% of one step's update).
    a, b = weights(whole.final_dir), weights(split.final_dir)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_resume_matches_an_uninterrupted_run(traces: Path, tmp_path: Path) -> None:
    straight = train_sft(config(traces, tmp_path / "straight", max_steps=6))
    first = train_sft(config(traces, tmp_path / "stopped", max_steps=6, stop_after_steps=3))
    assert first.steps == 3 and not (tmp_path / "stopped" / "final").exists()
    resumed = train_sft(config(traces, tmp_path / "stopped", max_steps=6))
    assert resumed.steps == 6
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-6)
    a, b = weights(straight.final_dir), weights(resumed.final_dir)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def _two_processes(traces: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """``pixelreasoner sft`` on 2 gloo processes, batch 4 each (the global batch of 1 x 8)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "pixelreasoner.cli",
    ]
    command += ["sft", f"data={traces}", f"out_dir={out}", "batch_size=4", "lr=2e-3", "warmup_ratio=0"]
    command += ["progress=false", "metrics=jsonl", "log_every=1", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(out: Path) -> list[float]:
    return [r["train/loss"] for r in read_metrics(out / "metrics.jsonl")]


def test_two_processes_match_one(traces: Path, tmp_path: Path) -> None:
    """2 processes x batch 4 (gloo) follow the same data order and loss normalisation as 1 x 8.

    The two processes run the shared-prefix forward (the default) and the single one does not,
    so this also checks that DDP reduces the gradients that reach the prefix.
    """
    single = train_sft(config(traces, tmp_path / "single", max_steps=3, share_prefix=False))
    _two_processes(traces, tmp_path / "double", "max_steps=3")
    assert _losses(tmp_path / "double") == pytest.approx(single.losses, abs=1e-4)


def test_sharded_training_matches_one_process_resumes_and_exports(traces: Path, tmp_path: Path) -> None:
    """FSDP2 on 2 processes (micro-batches of 2 with gradient sync on the last only, activation
    checkpointing) gives one process's losses over the same global batches; a run killed after
    2 steps resumes from its sharded checkpoint to the same losses and weights as an
    uninterrupted one; ``pixelreasoner export`` rebuilds the checkpoint's model from the shards on
    one process, and it equals the final weights."""
    single = train_sft(config(traces, tmp_path / "single", max_steps=4, share_prefix=False))
    sharded = ("strategy=fsdp", "grad_accum=2", "gradient_checkpointing=true", "max_steps=4")
    _two_processes(traces, tmp_path / "straight", *sharded)
    assert _losses(tmp_path / "straight") == pytest.approx(single.losses, abs=1e-4)
    _two_processes(traces, tmp_path / "cut", *sharded, "stop_after_steps=2")
    assert not (tmp_path / "cut" / "final").exists()
    _two_processes(traces, tmp_path / "cut", *sharded)
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "straight"), abs=1e-6)
    straight, resumed = weights(tmp_path / "straight" / "final"), weights(tmp_path / "cut" / "final")
    assert max((straight[k] - resumed[k]).abs().max().item() for k in straight) < 1e-6
    exported = tmp_path / "exported"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixelreasoner.cli",
            "export",
            str(tmp_path / "cut" / "checkpoints" / "step-000004"),
            str(exported),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rebuilt = weights(exported)
    assert max((rebuilt[k] - resumed[k]).abs().max().item() for k in resumed) == 0.0


def _batch_and_model(traces: Path):  # type: ignore[no-untyped-def]
    loaded = read_traces(traces)
    model, processor = initial_model(SFTConfig(data=str(traces)), loaded.conversations)
    renderer = Renderer(processor, BUDGET)
    batch = renderer.collate([renderer.render(c) for c in loaded.conversations[:10]], padding_side="right")
    return model, batch


def test_shared_prefix_forward_equals_the_full_forward(traces: Path) -> None:
    """Images, a video, self-correction and text-only traces in one batch: same loss, same grads."""
    model, batch = _batch_and_model(traces)
    prefix = shared_prefix_length(batch, batch.loss_mask)
    assert prefix > 300  # the system prompt (the check below would pass vacuously at 0)
    results = []
    for share in (False, True):
        model.zero_grad()
        nll, count = nll_sum(model, batch, batch.loss_mask, share_prefix=share)
        nll.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((float(nll.detach()), count, grads))
    (full, n_full, g_full), (shared, n_shared, g_shared) = results
    assert n_full == n_shared and shared == pytest.approx(full, rel=1e-5)
    assert g_full.keys() == g_shared.keys()
    for name, grad in g_full.items():
        torch.testing.assert_close(
            g_shared[name], grad, rtol=1e-4, atol=1e-4 * float(grad.abs().max()) + 1e-7
        )


def test_shared_prefix_length_stops_at_differences_and_learned_tokens(traces: Path) -> None:
    _, batch = _batch_and_model(traces)
    prefix = shared_prefix_length(batch, batch.loss_mask)
    assert (batch.input_ids[:, :prefix] == batch.input_ids[:1, :prefix]).all()
    assert not (batch.input_ids[:, : prefix + 16] == batch.input_ids[:1, : prefix + 16]).all()
    assert (batch.mm_token_type_ids[:, :prefix] == 0).all()
    # a learned token inside the common part cuts the prefix before it
    mask = batch.loss_mask.clone()
    mask[3, 40] = 1
    assert shared_prefix_length(batch, mask) == 39
    mask[3, 10] = 1
    assert shared_prefix_length(batch, mask) == 0  # shorter than worth sharing
    assert (
        shared_prefix_length(batch.__class__(**{**vars(batch), "input_ids": batch.input_ids[:1]}), mask) == 0
    )


def _with_private_image(traces: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Eight traces whose first image is a copy we may break, and that copy's path."""
    loaded = read_traces(traces)
    conversations = loaded.conversations[:8]
    first = conversations[0].turns[1]
    index = next(k for k, p in enumerate(first.parts) if isinstance(p, ImagePart))
    original = first.parts[index]
    assert isinstance(original, ImagePart) and original.path
    copy = tmp_path / "private.png"
    shutil.copyfile(original.path, copy)
    first.parts[index] = ImagePart(path=str(copy))
    return write_traces(conversations, tmp_path / "eight.json", qids=loaded.qids[:8]), copy


def test_unreadable_record_is_reported_and_training_goes_on(traces: Path, tmp_path: Path) -> None:
    file, image = _with_private_image(traces, tmp_path)
    image.write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning, match=r"row 0 .*private\.png"):
        result = train_sft(config(file, tmp_path / "run", batch_size=4, max_steps=2))
    assert result.load_problems == 1 and result.steps == 2


def test_trace_that_breaks_while_training_is_skipped(traces: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    file, image = _with_private_image(traces, tmp_path)

    def read_then_break(path: str) -> object:
        loaded = read_traces(path)
        image.write_bytes(b"")  # the file disappears from under the run
        return loaded

    monkeypatch.setattr(sft_module, "read_traces", read_then_break)
    with pytest.warns(UserWarning, match=r"skipping trace 0: .*private\.png"):
        result = train_sft(config(file, tmp_path / "run", batch_size=4, max_steps=4))
    assert result.skipped >= 1 and result.steps == 4


def test_released_rule_learns_the_last_two_assistant_turns(traces: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    from pixelreasoner.render import Renderer

    loaded = read_traces(traces)
    index = next(i for i, c in enumerate(loaded.conversations) if len(c.model_turns) >= 3)
    dataset = TraceDataset(
        loaded.conversations, [False] * len(loaded.conversations), Renderer(processor, BUDGET), "auto", 4096
    )
    flags = dataset.learn_flags(index)
    assert flags is not None
    turns = loaded.conversations[index].turns
    learned = [i for i, f in enumerate(flags) if f]
    assert learned == [i for i, t in enumerate(turns) if t.role == "assistant"][-2:]
    marked = TraceDataset(
        loaded.conversations, [True] * len(loaded.conversations), Renderer(processor, BUDGET), "auto", 4096
    )
    assert marked.learn_flags(index) is None  # markers decide


def test_checkpoints_load_with_plain_transformers(traces: Path, tmp_path: Path) -> None:
    result = train_sft(config(traces, tmp_path / "run", max_steps=1))
    model = AutoModelForImageTextToText.from_pretrained(result.final_dir)
    assert model.config.model_type == "qwen2_5_vl"
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000001"
    assert (checkpoint / "trainer_state.json").is_file() and not list(checkpoint.parent.glob("*.tmp"))
    load_model(checkpoint)


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no field 'learning_rate'"):
        load_config(SFTConfig, None, ["learning_rate=1e-3"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(SFTConfig, None, ["batch_size=eight"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(SFTConfig, None, ["mask_rule=everything"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 1.0e-4\nfreeze_vision: true\nadam_betas: [0.9, 0.95]\n")
    loaded = load_config(SFTConfig, recipe, ["batch_size=4"])
    assert (loaded.lr, loaded.freeze_vision, loaded.adam_betas, loaded.batch_size) == (
        1e-4,
        True,
        (0.9, 0.95),
        4,
    )


@pytest.mark.parametrize("recipe", ["configs/sft_tiny.yaml", "configs/sft_qwen25vl_7b.yaml"])
def test_recipes_parse(recipe: str) -> None:
    root = Path(__file__).resolve().parent.parent
    assert isinstance(load_config(SFTConfig, root / recipe), SFTConfig)


@pytest.mark.parametrize(
    "changes",
    [{"gradient_checkpointing": True}, {"mixed_precision": "bf16"}],
    ids=["gradient-checkpointing", "bf16"],
)
def test_memory_and_precision_options_train(traces: Path, tmp_path: Path, changes: dict[str, object]) -> None:
    result = train_sft(config(traces, tmp_path / "run", max_steps=1, batch_size=4, **changes))
    assert result.steps == 1 and all(torch.isfinite(torch.tensor(result.losses)))


def test_freezing_is_set_both_ways(tiny) -> None:  # type: ignore[no-untyped-def]
    model = copy.deepcopy(tiny[0])

    def trains(part: str) -> set[bool]:
        return {p.requires_grad for n, p in model.named_parameters() if part in n}

    apply_freezing(model, freeze_vision=True, freeze_projector=False)
    assert trains("visual.blocks") == {False} and trains("visual.merger") == {True}
    apply_freezing(model, freeze_vision=False, freeze_projector=True)  # the next stage unfreezes
    assert trains("visual.blocks") == {True} and trains("visual.merger") == {False}
    assert trains("language_model") == {True}


class _OneMorePass:
    """The run's distribution object, as if another process had one more micro-batch than this."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        return tensor + 1 if reduction == "max" else tensor


def test_sft_step_runs_a_zero_weight_stand_in_and_skips_steps_with_nothing_to_learn(
    traces: Path, tiny: tuple[torch.nn.Module, Any]
) -> None:
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    renderer = Renderer(processor, BUDGET)
    sequences = [renderer.render(c) for c in read_traces(traces).conversations[:3]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.0)  # the weights stay, so both runs see the same model
    dist = make_accelerator(cpu=True)
    passes: list[int] = []
    model.register_forward_hook(lambda *_: passes.append(1))

    assert sft_step(model, optimizer, trainable, [], sequences[0], renderer, dist, 2, 1.0) is None
    assert passes == []  # nothing ran: no process had a token to learn
    plain = sft_step(model, optimizer, trainable, sequences, sequences[0], renderer, dist, 2, 1.0)
    assert plain is not None and len(passes) == 2
    padded = sft_step(
        model, optimizer, trainable, sequences, sequences[0], renderer, _OneMorePass(dist), 2, 1.0
    )
    assert padded is not None and len(passes) == 5  # a third, zero-weight pass kept the processes in step
    assert plain.learned == learned_tokens(sequences) and padded.learned == plain.learned
    assert (padded.real, padded.padded) == (plain.real, plain.padded)  # the stand-in is not counted
    assert padded.loss == pytest.approx(plain.loss) and padded.grad_norm == pytest.approx(plain.grad_norm)
    with torch.no_grad():
        singly = sum(
            float(nll_sum(model, b, b.loss_mask)[0]) for b in map(renderer.collate, ([s] for s in sequences))
        )
    assert plain.nll == pytest.approx(singly, rel=1e-5)
