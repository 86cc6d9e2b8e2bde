"""The quickstart's --fast path end to end (what CI runs), and skipping finished stages."""

from __future__ import annotations

import json
from pathlib import Path

from pixelreasoner.cli import main

STAGES = ("tasks", "traces", "sft", "sft-text", "rl-curiosity", "rl-plain", "rl-text", "eval")


def test_fast_quickstart_runs_and_resumes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "qs"
    assert main(["quickstart", "--fast", "--out", str(out)]) == 0
    for stage in STAGES:
        assert (out / stage / "DONE.json").is_file(), stage
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results) == {"sft", "rl-curiosity", "rl-plain", "sft-text", "rl-text"}
    assert set(results["sft"]) == {"needle", "frames"} and results["sft"]["needle"]["n"] == 6
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and "Targets" in report and "needle-000000" in report
    assert "| SFT warm start | vcot |" in (out / "report.md").read_text()
    assert "RL with curiosity: trained on" in (out / "report.md").read_text()
    # a second run skips every finished stage
    capsys.readouterr()
    assert main(["quickstart", "--fast", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("done before, skipping") == len(STAGES)


def _metrics(folder: Path, rows: list[dict[str, float]]) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i, **r}) + "\n" for i, r in enumerate(rows))
    )


def test_report_says_when_the_curiosity_bonus_never_fired(tmp_path: Path) -> None:
    from pixelreasoner.report import rl_signal

    quiet = [{"train/reward": 0.9, "train/curiosity": 0.0, "train/trained_samples": 40.0}] * 2
    _metrics(tmp_path / "rl-curiosity", quiet)
    _metrics(tmp_path / "rl-plain", quiet)
    lines = rl_signal(tmp_path)
    assert lines[0].startswith("RL with curiosity: trained on 80 samples in 2 steps")
    assert lines[-1].startswith("The curiosity bonus was 0") and "the same run" in lines[-1]

    fired = tmp_path / "fired"
    _metrics(fired / "rl-curiosity", [{"train/reward": 0.9, "train/curiosity": 0.1}])
    _metrics(fired / "rl-plain", [{"train/reward": 0.8, "train/curiosity": 0.0}])
    assert not any("curiosity bonus" in line for line in rl_signal(fired))
