"""The command line: help texts, tiny-model, and the demo (the current main job)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixelreasoner.cli import main
from pixelreasoner.models.loading import load_model


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["tiny-model", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: pixelreasoner" in capsys.readouterr().out


def test_tiny_model_command(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["tiny-model", str(tmp_path / "m"), "--preset", "tiny-1m", "--seed", "3"]) == 0
    assert "parameters: 930,752" in capsys.readouterr().out
    model, processor = load_model(tmp_path / "m")
    assert model.config.model_type == "qwen2_5_vl" and processor.im_end_id >= 0


def test_demo_runs_end_to_end(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "observation: '\\nHere is the cropped image" in out
    record = json.loads((tmp_path / "demo" / "conversation.json").read_text())
    kinds = [t["kind"] for t in record["turns"]]
    assert kinds == ["prompt", "prompt", "model", "observation", "model"]
    assert record["learned_tokens"] > 0 and record["image_tokens"] > 0
    assert (tmp_path / "demo" / "returned_1.png").exists()
    # a second run reuses the saved model and gives the same record
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    again = json.loads((tmp_path / "demo" / "conversation.json").read_text())
    assert again == record


def test_budgets_command(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["budgets"]) == 0
    out = capsys.readouterr().out
    assert "released-train" in out and "2000" in out


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_the_7b_recipes_memory_plans_fit_8x80gb_and_not_one_gpu(stage: str, capsys) -> None:  # type: ignore[no-untyped-def]
    """``--plan-only`` on the published 7B shape (built on the meta device): the recipe, sharded
    with FSDP2 over 8 GPUs of 80 GB, fits; the same run on one GPU does not (exit status 1)."""
    from pixelreasoner.cli import main

    recipe = str(Path(__file__).resolve().parent.parent / "configs" / f"{stage}_qwen25vl_7b.yaml")
    common = ["--plan-only", "--shape", "qwen2.5-vl-7b", "--device-gib", str(80e9 / 2**30)]
    assert main([stage, recipe, *common, "--world", "8"]) == 0
    assert "fits:" in capsys.readouterr().out
    assert main([stage, recipe, *common, "--world", "1"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out
