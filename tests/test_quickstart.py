"""The quickstart's --fast path end to end (what CI runs), resuming, and the report's verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pixelreasoner.cli import main
from pixelreasoner.quickstart import QuickstartConfig, rl_runs
from pixelreasoner.report import ArmRuns, ModelScores, check_targets, rl_signal, verdicts

STAGES = ("tasks", "traces", "sft", "rl-curiosity-s0", "rl-plain-s0", "eval/sft", "eval/rl-curiosity-s0")


def test_fast_quickstart_runs_and_resumes(tmp_path: Path, capfd) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "qs"
    assert main(["quickstart", "--fast", "--out", str(out), "--workers", "1"]) == 0
    for stage in STAGES:
        assert (out / stage / "DONE.json").is_file(), stage
    warm = json.loads((out / "eval" / "sft" / "DONE.json").read_text())
    assert set(warm) == {"greedy", "sampled", "seconds"}
    sampled = warm["sampled"]["needle"]
    assert sampled["n"] == 6 and sampled["n_records"] == 12  # 2 samples per item
    assert sampled["paths"]["tool"]["n"] + sampled["paths"]["direct"]["n"] == 12
    metrics = (out / "rl-curiosity-s0" / "metrics.jsonl").read_text().splitlines()
    for line in metrics:  # accuracy by path recombines into the phase's accuracy
        row = json.loads(line)
        rapr = row["train/rapr"]
        parts = rapr * row.get("train/accuracy_tool", 0.0) + (1 - rapr) * row.get(
            "train/accuracy_direct", 0.0
        )
        assert parts == pytest.approx(row["train/accuracy"])
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and "Targets" in report and "needle-000000" in report
    markdown = (out / "report.md").read_text()
    assert "| SFT warm start | - |" in markdown and "| RL without curiosity | 0 |" in markdown
    assert "rl-curiosity-s0: trained on" in markdown
    # a second run skips every finished stage; a second seed reuses the first seed's runs (in
    # two worker processes, whose output capfd sees)
    capfd.readouterr()
    assert main(["quickstart", "--fast", "--out", str(out), "--workers", "1"]) == 0
    assert capfd.readouterr().out.count("done before, skipping") == 3 + 2 + 3
    assert main(["quickstart", "--fast", "--out", str(out), "--seeds", "2", "--arms", "curiosity,plain"]) == 0
    printed = capfd.readouterr().out
    assert "rl-curiosity-s1 ..." in printed and "rl-curiosity-s0 ..." not in printed
    assert "| RL with curiosity | 0, 1 |" in (out / "report.md").read_text()


def test_rl_runs_and_unknown_arms() -> None:
    config = QuickstartConfig(arms=("curiosity", "plain"), seeds=2, seed=5)
    assert rl_runs(config) == [
        ("rl-curiosity-s5", "curiosity", 5),
        ("rl-plain-s5", "plain", 5),
        ("rl-curiosity-s6", "curiosity", 6),
        ("rl-plain-s6", "plain", 6),
    ]
    with pytest.raises(ValueError, match="unknown RL arm"):
        rl_runs(QuickstartConfig(arms=("curious",)))
    with pytest.raises(SystemExit, match="unknown --arms"):
        main(["quickstart", "--arms", "bogus"])


# ------------------------------------------------------------------ verdicts match the numbers
def _scores(greedy: float, tool: float = 0.5, direct: float = 0.6, tool_n: int = 100) -> ModelScores:
    return ModelScores(greedy, 0.5, greedy, 0.5, tool, tool_n, direct, 200 - tool_n)


def _arm(name: str, rapr: list[list[float]], greedy: list[float], bonus: float = 0.0) -> ArmRuns:
    label = {"curiosity": "RL with curiosity", "plain": "RL without curiosity"}[name]
    phases = [
        [{"train/rapr": r, "train/reward": 0.5, "train/curiosity": bonus if r < 0.3 else 0.0} for r in run]
        for run in rapr
    ]
    return ArmRuns(name, label, False, list(range(len(rapr))), phases, [_scores(g) for g in greedy])


def test_targets_met_when_the_trap_springs_and_curiosity_escapes() -> None:
    warm = _scores(0.55)
    plain = _arm("plain", [[0.5, 0.2, 0.05], [0.5, 0.1, 0.0], [0.4, 0.1, 0.08]], [0.56, 0.55, 0.57])
    curious = _arm(
        "curiosity", [[0.5, 0.28, 0.9], [0.5, 0.3, 0.95], [0.5, 0.26, 0.8]], [0.85, 0.88, 0.9], 0.01
    )
    checks = check_targets(warm, [curious, plain])
    assert [c.ok for c in checks] == [True, True, True, True], checks
    assert checks[0].numbers == "final-phase RaPR 0.05, 0.00, 0.08"
    assert checks[1].numbers == "lowest phase RaPR 0.28, 0.30, 0.26"


def test_targets_not_met_and_why() -> None:
    warm = _scores(0.55)
    # one seed: RaPR stays up in both arms, identical rewards, no interval over seeds
    plain = _arm("plain", [[0.5, 0.6, 0.7]], [0.6])
    curious = _arm("curiosity", [[0.5, 0.6, 0.7]], [0.62])
    checks = check_targets(warm, [curious, plain])
    assert [c.ok for c in checks] == [False, True, False, False]
    assert "one seed: no interval over seeds" in checks[2].numbers
    assert check_targets(warm, [curious])[0].ok is None  # no plain arm: not measured
    lines = verdicts(warm, [curious, plain])
    assert "Direct minus zoomed: +10.0 points; the paper's premise holds" in lines[0]
    assert "by less than the most the paper's bonus pays a zooming rollout (α·H = 15 points)" in lines[0]
    assert "the same reward as RL without curiosity" in lines[1]
    assert "it rose" in lines[1]
    assert any("they are the same runs" in line for line in lines)
    assert "(+2.0 points for curiosity)" in lines[-1]


def test_verdicts_say_when_the_paths_drifted_apart_beyond_the_bonus() -> None:
    runs = [
        [{"train/rapr": r, "train/accuracy_tool": 0.4, "train/accuracy_direct": 0.8} for r in (0.5, 0.3, 0.1)]
    ]
    arm = ArmRuns("plain", "RL without curiosity", False, [0], runs, [_scores(0.7)])
    line = verdicts(_scores(0.7), [arm])[1]
    assert "it fell" in line and "zoomed rollouts were right 40.0% and direct ones 80.0%" in line
    assert "Direct answers out-earned zooms by 40 points at the end, more than the most" in line


def test_warm_start_verdicts_follow_the_gap() -> None:
    assert "does not hold" in verdicts(_scores(0.5, tool=0.7, direct=0.5), [])[0]
    assert "neither path pays more" in verdicts(_scores(0.5, tool=0.5, direct=0.5), [])[0]
    assert "too few" in verdicts(_scores(0.5, tool=0.5, direct=0.9, tool_n=3), [])[0]
    no_zoom = ModelScores(0.5, 0.0, 0.5, 0.0, math.nan, 0, 0.5, 100)
    assert "every sampled held-out trajectory answered directly" in verdicts(no_zoom, [])[0]


def test_rl_signal_says_when_a_run_trained_on_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "rl-plain-s0"
    folder.mkdir()
    rows = [{"step": i, "train/trained_samples": 0.0, "train/uniform_group_ratio": 1.0} for i in range(2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (line,) = rl_signal(tmp_path, ["rl-plain-s0", "rl-missing"])
    assert line.startswith("rl-plain-s0: trained on 0 samples in 2 phases; 100% of groups uniform")
    assert "warm start unchanged" in line


def test_verdicts_name_a_total_collapse() -> None:
    """When no rollout zooms the paper's bonus has nobody to pay: the text must say so, not that
    tool use never fell below the threshold."""
    collapsed = _arm("curiosity", [[0.5, 0.0, 0.0], [0.5, 0.1, 0.0, 0.2]], [0.7, 0.7])
    for run in collapsed.phases:
        for row in run:
            row["train/curiosity"] = 0.0
    (line,) = verdicts(_scores(0.7), [collapsed])[1:]
    assert "once no rollout zoomed there was nobody to pay" in line
    assert "No rollout zoomed at all from phase 2, phase 3 in 2 of 2 seeds (total collapse)" in line
    assert "came back above 0.1 afterwards in 1 of them" in line


def test_family_table_shows_each_familys_paths() -> None:
    from pixelreasoner.report import family_table

    def report(tool: tuple[int, float], direct: tuple[int, float], rapr: float) -> dict[str, object]:
        paths = {"tool": {"n": tool[0], "earned": tool[1]}, "direct": {"n": direct[0], "earned": direct[1]}}
        return {"paths": paths, "rapr": rapr}

    summary = {
        "sampled": {"needle": report((30, 0.4), (20, 0.5), 0.6), "frames": report((0, 0.0), (8, 0.25), 0.0)}
    }
    table = family_table(summary)
    assert "| needle | 40.0 (30) | 50.0 (20) | 60.0% |" in table
    assert "| frames | n/a (0) | 25.0 (8) | 0.0% |" in table


def test_progress_lines_follow_the_rl_runs_phases(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from pixelreasoner.quickstart import Quickstart

    quickstart = Quickstart(tmp_path, QuickstartConfig(rl_steps=15), progress=False)
    run = tmp_path / "rl-plain-s0"
    run.mkdir()
    row = {"step": 3, "train/rapr": 0.25, "train/accuracy": 0.5}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    shown: dict[str, str] = {}
    quickstart._print_progress(["rl-plain-s0", "rl-curiosity-s0"], shown)
    quickstart._print_progress(["rl-plain-s0"], shown)  # nothing moved: no second line
    assert capsys.readouterr().out == "[quickstart] rl-plain-s0: phase 3/15, RaPR 0.25, accuracy 0.50\n"
    (run / "DONE.json").write_text("{}")
    (run / "metrics.jsonl").write_text(json.dumps({**row, "step": 4}) + "\n")
    quickstart._print_progress(["rl-plain-s0"], shown)  # finished runs are the stage lines' business
    assert capsys.readouterr().out == ""
