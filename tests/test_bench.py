"""The GPU step benchmark runs end to end: at tiny size on CPU here, at 3B shape where a GPU is."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_step.py"


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
    assert all(math.isfinite(v) and v > 0 for v in sft["loss_by_step"])
    assert sft["tokens_per_s"] > 0 and sft["step_s"] > 0 and sft["peak_gib"] > 0
    assert sft["mean_sequence_tokens"] > 100  # an image and its crop, not an empty trace
    assert rl["rollouts"] == rollouts and rl["generated_tokens"] > 0
    assert rl["trained_tokens"] == rl["generated_tokens"]  # every sampled token is trained on
    assert rl["update_s"] > 0 and rl["peak_gib"] > 0


def test_gpu_step_runs_on_cpu_at_tiny_size(tmp_path: Path) -> None:
    figures = run_gpu_step(
        tmp_path,
        *("--shape", "tiny-1m", "--device", "cpu", "--threads", "2", "--knob", "grid=4"),
        *("--sft-batch", "4", "--sft-steps", "2", "--queries", "2", "--group", "2", "--turn-tokens", "16"),
        *("--precision", "bf16", "--checkpointing", "on"),
    )
    check_figures(figures, rollouts=4)
    assert figures["precision"] == "bf16" and figures["checkpointing"] is True
    # ln(vocab) at random init: the loss is a real cross-entropy over the tiny vocabulary
    assert abs(figures["sft"]["loss_by_step"][0] - math.log(1024)) < 0.5


@pytest.mark.gpu
def test_gpu_step_at_3b_shape_in_bf16(tmp_path: Path) -> None:
    figures = run_gpu_step(
        tmp_path,
        *("--shape", "qwen2.5-vl-3b", "--device", "cuda", "--precision", "bf16"),
        *("--sft-batch", "4", "--sft-steps", "2", "--queries", "2", "--group", "2", "--turn-tokens", "32"),
    )
    check_figures(figures, rollouts=4)
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    assert figures["sft"]["peak_gib"] < total
