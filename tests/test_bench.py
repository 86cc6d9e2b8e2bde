"""The GPU step benchmark runs end to end: at tiny size on CPU here, at 3B shape where a GPU is."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPT = BENCH / "gpu_step.py"


def run_gpu_step(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SFT" in done.stdout and "RL" in done.stdout
    return json.loads(out.read_text())


def check_figures(figures: dict, rollouts: int) -> None:
    sft, rl = figures["sft"], figures["rl"]
    assert all(math.isfinite(v) and v > 0 for v in sft["loss_by_step"] + sft["grad_norm_by_step"])
    assert math.isfinite(rl["grad_norm"]) and rl["grad_norm"] > 0  # the PPO loss reaches the weights
    assert sft["tokens_per_s"] > 0 and sft["step_s"] > 0
    assert sft["mean_sequence_tokens"] > 100  # an image and its crop, not an empty trace
    assert rl["rollouts"] == rollouts and rl["generated_tokens"] > 0
    assert rl["trained_tokens"] == rl["generated_tokens"]  # every sampled token is trained on
    # SFT freezes the vision tower (the SFT recipe), RL trains it (the RL recipe)
    assert rl["trained_parameters_b"] > sft["trained_parameters_b"]


# the threads this test worker was given (cores / xdist workers), not more, for the child as well
CPU = ("--shape", "tiny-1m", "--device", "cpu", "--threads", str(torch.get_num_threads()), "--knob", "grid=4")
SMALL = ("--sft-batch", "4", "--sft-steps", "2", "--queries", "2", "--group", "2", "--turn-tokens", "16")


def test_gpu_step_on_cpu_trains_under_autocast_with_checkpointing(tmp_path: Path) -> None:
    options = ("--precision", "amp", "--checkpointing", "on", "--lr", "1e-2")
    figures = run_gpu_step(tmp_path, *CPU, *SMALL, *options)
    check_figures(figures, rollouts=4)
    assert figures["precision"] == "amp" and figures["checkpointing"] is True
    first, second = figures["sft"]["loss_by_step"]
    # a real cross-entropy over the tiny vocabulary (ln 1024 at random init), and the step learns
    assert abs(first - math.log(1024)) < 0.5 and second < first - 0.05
    assert figures["sft"]["peak_gib"]["resident"] > 0


def test_gpu_step_on_cpu_in_pure_bf16(tmp_path: Path) -> None:
    figures = run_gpu_step(tmp_path, *CPU, *SMALL, "--precision", "bf16")
    check_figures(figures, rollouts=4)
    assert figures["precision"] == "bf16" and figures["checkpointing"] is False


@pytest.mark.gpu
def test_gpu_step_at_3b_shape_on_the_gpu(tmp_path: Path) -> None:
    """Run with ``pytest -m gpu tests/test_bench.py`` on a machine with an 80 GB GPU."""
    figures = run_gpu_step(tmp_path, "--shape", "qwen2.5-vl-3b", "--device", "cuda", *SMALL)
    check_figures(figures, rollouts=4)
    assert figures["device"] != "cpu" and figures["precision"] == "amp"
    assert abs(figures["parameters_b"] - 3.754622976) < 1e-6
    # fp32 weights, and fp32 gradients plus two AdamW moments for every trained parameter
    floor = (4 * figures["parameters_b"] + 12 * figures["sft"]["trained_parameters_b"]) * 1e9 / 2**30
    assert figures["sft"]["peak_gib"]["allocated"] >= floor


@pytest.mark.slow  # about a minute on 2 cores: two workers import torch, then five phases
def test_thread_contention_runs_all_phases() -> None:
    small = ("--batch", "1", "--steps", "1", "--rounds", "1")
    done = subprocess.run(
        [sys.executable, str(BENCH / "thread_contention.py"), *small],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch's default" in done.stdout and "ours (cores / processes)" in done.stdout
    assert "faster than with torch's default" in done.stdout
