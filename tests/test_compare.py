"""Comparing evaluation runs: tables, protocol differences, disagreements, trajectories, the command."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelreasoner.cli import main
from pixelreasoner.data.items import TaskItem
from pixelreasoner.eval.compare import (
    Run,
    budget_of,
    category_rows,
    common_items,
    compare_runs,
    disagreements,
    load_runs,
    render_markdown,
    trajectory_from_record,
    write_comparison,
)
from pixelreasoner.eval.harness import TaskReport, TaskRun, run_evaluation
from pixelreasoner.eval.protocol import ModelIdentity, build_protocol
from pixelreasoner.eval.tasks import get_task
from pixelreasoner.rollout.backend import TurnRequest
from pixelreasoner.rollout.scripted import ScriptedBackend
from pixelreasoner.tasks.families import make_family
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.viewer import REQUESTED_COLOR
from pixelreasoner.vision.budget import tiny
from pixelreasoner.vision.ops import CROP_TOOL

ROOT = Path(__file__).resolve().parent.parent
N = 4
OVERLAY_SRC = re.compile(r'<img class="overlay" src="data:image/png;base64,([^"]+)"')


def _crop(bbox: list[float], target: int) -> str:
    payload = json.dumps({"name": CROP_TOOL, "arguments": {"bbox_2d": bbox, "target_image": target}})
    return f"zoom in\n<tool_call>\n{payload}\n</tool_call>"


def _script(
    items: list[TaskItem], right: set[int], recrop: frozenset[int] = frozenset()
) -> Callable[[TurnRequest, int], str]:
    """Trajectory ``key`` (the engine numbers them in order: needle items, then read items) crops
    the item's cue (and, for keys in ``recrop``, the middle of the returned crop, image 2), then
    answers the gold when ``key`` is in ``right``, else a wrong answer."""

    def script(request: TurnRequest, turn: int) -> str:
        item = items[request.key]
        steps = [_crop(item.cue_bbox or [0, 0, 1, 1], 1)]
        if request.key in recrop:
            steps.append(_crop([0.25, 0.25, 0.75, 0.75], 2))
        if turn < len(steps):
            return steps[turn]
        answer = item.answers[0] if request.key in right else "zzz"
        return f"It is this. \\boxed{{{answer}}}"

    return script


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two runs of needle (accuracy) and read (ANLS), 4 items each, under protocols that differ in
    max_calls. Right answers (trajectory keys: needle 0-3, read 4-7):
    A: needle 0, 1, 2; read 4, 5, 6.  B: needle 0, 3; read 4, 5, 6, 7.
    So they disagree on needle items 1, 2, 3 and read item 3 (key 7)."""
    base = tmp_path_factory.mktemp("compare")
    data = base / "data"
    generate_dataset([make_family("needle"), make_family("read")], N, data, progress=False)
    tasks = [get_task("needle"), get_task("read")]
    loaded = [task.load(data).items[:N] for task in tasks]
    items = [item for group in loaded for item in group]
    model = ModelIdentity("in-memory", "oracle", "0" * 64, "state dict")
    plans = {
        "run-a": (build_protocol(budget="tiny"), {0, 1, 2, 4, 5, 6}),
        "run-b": (build_protocol(budget="tiny", max_calls=3), {0, 3, 4, 5, 6, 7}),
    }
    for name, (protocol, right) in plans.items():
        backend = ScriptedBackend(_script(items, right, recrop=frozenset({0})))
        task_runs = [TaskRun(task, group) for task, group in zip(tasks, loaded, strict=True)]
        run_evaluation(backend, task_runs, base / name, protocol, model, progress=False)
    return data, base / "run-a", base / "run-b"


def test_tables_protocol_and_disagreements(runs: tuple[Path, Path, Path]) -> None:
    data, a, b = runs
    comparison = compare_runs(load_runs([a, b]))
    assert [r.label for r in comparison.runs] == ["run-a", "run-b"]
    assert comparison.tasks == ["needle", "read"]
    needle_a, needle_b = (r.reports["needle"] for r in comparison.runs)
    assert (needle_a.score, needle_b.score) == (0.75, 0.5) and needle_a.n == needle_b.n == N
    assert (
        comparison.runs[1].reports["read"].score == 1.0
        and comparison.runs[0].reports["read"].metric == "anls"
    )
    # the protocols differ in max_calls only (the protocol id too, but that is not a field)
    assert comparison.protocol == [("limits.max_calls", ["4", "3"], [False, True])]
    # disagreements found by hand: needle 1, 2, 3 and read 3
    needle = [i.qid for i in get_task("needle").load(data).items[:N]]
    read = [i.qid for i in get_task("read").load(data).items[:N]]
    found = [(d.task, d.qid, d.values) for d in comparison.disagreements]
    assert found == [
        ("needle", needle[1], [1.0, 0.0]),
        ("needle", needle[2], [1.0, 0.0]),
        ("needle", needle[3], [0.0, 1.0]),
        ("read", read[3], [0.0, 1.0]),
    ]
    assert compare_runs(load_runs([a, a])).disagreements == []
    assert compare_runs(load_runs([a, a])).protocol == []


def _rec(qid: str, sample: int, score: float) -> dict[str, object]:
    return {
        "qid": qid,
        "sample": sample,
        "score": score,
        "n_calls": 0,
        "n_failed": 0,
        "turns": [],
        "gold": "A",
    }


def test_disagreement_by_sample0_or_by_mean() -> None:
    """Two samples per item: x differs in its share of correct samples only, y in sample 0 only,
    z not at all; an ANLS of 0.6 counts as correct, 0.4 (not possible from ANLS, kept as given) not."""
    one = [
        _rec("x", 0, 1),
        _rec("x", 1, 0),
        _rec("y", 1, 1),
        _rec("y", 0, 1),
        _rec("z", 0, 0.6),
        _rec("z", 1, 0),
    ]
    two = [
        _rec("x", 0, 1),
        _rec("x", 1, 1),
        _rec("y", 0, 0),
        _rec("y", 1, 1),
        _rec("z", 0, 1),
        _rec("z", 1, 0.4),
    ]
    runs = [
        Run(Path(name), name, None, {"t": TaskReport("t", "accuracy")}, {"t": records})
        for name, records in (("one", one), ("two", two))
    ]
    assert [(d.qid, d.values) for d in disagreements(runs, "sample0")] == [("y", [1.0, 0.0])]
    assert [(d.qid, d.values) for d in disagreements(runs, "mean")] == [("x", [0.5, 1.0]), ("y", [1.0, 0.5])]
    assert [r["sample"] for r in disagreements(runs, "mean")[1].records[0]] == [0, 1]  # sorted by sample
    assert compare_runs(runs).protocol == []  # no protocol recorded: nothing to compare
    with pytest.raises(ValueError, match="by must be"):
        disagreements(runs, "median")  # type: ignore[arg-type]


def test_categories_and_a_run_without_summary(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Per-category scores are compared where the summaries have them; a folder with JSONL only
    is summarised from it, and items only some runs evaluated are counted, not compared."""
    _, a, b = runs
    c = tmp_path / "run-c"
    shutil.copytree(b, c)
    summary = json.loads((c / "summary.json").read_text())
    summary["tasks"] = [t for t in summary["tasks"] if t["task"] == "needle"]
    summary["tasks"][0]["categories"] = [{"category": "attribute", "n": 4, "score": 0.5, "rapr": 1.0}]
    (c / "summary.json").write_text(json.dumps(summary))
    lines = (c / "read.jsonl").read_text().splitlines()
    (c / "read.jsonl").write_text("\n".join(lines[:3]) + "\n")  # read items 0-2 only
    comparison = compare_runs(load_runs([a, c]))
    assert comparison.runs[1].from_jsonl == ["read"]
    assert comparison.runs[1].reports["read"].n == 3 and comparison.runs[1].reports["read"].score == 1.0
    assert category_rows(comparison, "needle") == [("attribute", ["—", "50.0 (4)"])]
    assert category_rows(comparison, "read") == []
    assert [d.task for d in comparison.disagreements] == ["needle", "needle", "needle"]  # read 3: run-a only
    assert common_items(comparison.runs, "read") == (3, 1)
    text = render_markdown(comparison)
    assert "| needle category | run-a | run-c |" in text and "| attribute | — | 50.0 (4) |" in text
    assert "- read: 3 items evaluated by every run, 1 by only some" in text


def test_markdown_and_html(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, a, b = runs
    page, md, comparison = write_comparison([a, b], tmp_path / "cmp", data_root=data)
    text = md.read_text(encoding="utf-8")
    assert "| task | metric | run-a | run-b |" in text
    assert "| needle | accuracy | **75.0 [" in text and "| read | anls | " in text
    assert "| limits.max_calls | 4 | **3** |" in text
    assert "## Items on which the runs disagree (4)" in text
    needle1 = comparison.disagreements[0].qid
    assert f"| needle | [{needle1}](compare.html#item1) | " in text
    assert "zzz (✘ 0.00)" in text and "- needle: 4 items evaluated by every run, 0 by only some" in text

    doc = page.read_text(encoding="utf-8")
    assert doc.startswith("<!DOCTYPE html>") and "<script" not in doc
    # the differing protocol cell is highlighted, the same one is not
    assert '<td class="field">limits.max_calls</td><td class="num">4</td><td class="num diff">3</td>' in doc
    assert '<td class="num best">75.0 [' in doc
    # every disagreement has its anchor and one trajectory per run, with unique ids
    for k in range(1, 5):
        assert f'id="item{k}"' in doc and f'href="#item{k}-run1"' in doc and f'id="item{k}-run2"' in doc
    ids = re.findall(r' id="([^"]+)"', doc)
    assert len(ids) == len(set(ids))
    assert doc.count('<section class="trajectory"') == 8
    # the crops are drawn on the images they were cut from (the question image is loaded again)
    boxes = OVERLAY_SRC.findall(doc)
    assert len(boxes) == 8
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(boxes[0]))).convert("RGB"))
    assert (drawn == REQUESTED_COLOR).all(axis=-1).sum() > 50
    assert "images not shown" not in doc and "did not give the recorded result" not in doc


def test_trajectory_rebuilt_with_returned_images(runs: tuple[Path, Path, Path]) -> None:
    """Item 0's second crop targets the returned crop (image 2): re-executing the calls gives it back."""
    data, a, _ = runs
    record = json.loads((a / "needle.jsonl").read_text().splitlines()[0])
    item = get_task("needle").load(data).items[0]
    assert record["qid"] == item.qid and record["n_calls"] == 2
    budget = budget_of(load_runs([a])[0].record)
    assert budget == tiny()  # rebuilt from protocol.json
    trajectory, note = trajectory_from_record(record, item, budget)
    assert note is None
    observations = [t for t in trajectory.conversation.turns if t.kind.value == "observation"]
    assert [len(t.images) for t in observations] == [1, 1]
    assert trajectory.n_calls == 2 and trajectory.final_text.endswith(f"\\boxed{{{item.answer}}}")
    # without the item: the texts only, and a note saying so
    bare, note = trajectory_from_record(record)
    assert note and "images not shown" in note
    assert [t.text for t in bare.conversation.turns] == [t["text"] for t in record["turns"]]
    assert all(not t.images for t in bare.conversation.turns)


def test_compare_command(
    runs: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, a, b = runs
    out = tmp_path / "out"
    assert main(["compare", str(a), str(b), "--out", str(out), "--by", "sample0", "--max-items", "1"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "compare.html") in printed and "4 items on which the runs disagree" in printed
    doc = (out / "compare.html").read_text(encoding="utf-8")
    assert doc.count('<section class="trajectory"') == 2  # --max-items 1
    assert "No --data-root given" in doc
    with pytest.raises(SystemExit, match="holds no evaluation results"):
        main(["compare", str(a), str(tmp_path), "--out", str(out)])


# ------------------------------------------------------------------------------------ screenshot
@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="chromium is not installed"
)
def test_compare_page_screenshot(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from screenshot_viewer import screenshot
    finally:
        sys.path.pop(0)
    data, a, b = runs
    page, _, _ = write_comparison([a, b], tmp_path / "cmp", data_root=data)
    png = screenshot(page, tmp_path / "compare.png", window="1600,3000")
    shot = np.asarray(Image.open(png).convert("RGB"))
    assert shot.shape[:2] == (3000, 1600)
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 100  # not blank
    # the highlighted protocol cell (#ffe08a) and the drawn crop boxes are on screen
    assert (shot == (0xFF, 0xE0, 0x8A)).all(axis=-1).sum() > 200
    assert (shot == REQUESTED_COLOR).all(axis=-1).sum() > 50


def test_the_recorded_data_root_is_used_when_none_is_given(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """``protocol.json`` records where the items were read from; ``compare`` without ``--data-root``
    then rebuilds the trajectories with their images from there (a moved folder is passed over)."""
    data, a, b = runs
    copies = []
    for run, root in ((a, tmp_path / "gone"), (b, data)):
        copy = tmp_path / run.name
        shutil.copytree(run, copy)
        record = json.loads((copy / "protocol.json").read_text(encoding="utf-8"))
        assert "data_root" in record  # written by run_evaluation (None for these runs)
        record["data_root"] = str(root)
        (copy / "protocol.json").write_text(json.dumps(record), encoding="utf-8")
        copies.append(copy)
    page, _, _ = write_comparison(copies, tmp_path / "cmp", max_items=1)
    doc = page.read_text(encoding="utf-8")
    assert "No --data-root given" not in doc and "data:image/png;base64" in doc
