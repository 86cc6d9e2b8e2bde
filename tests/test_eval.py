"""Evaluation harness: task loading, scoring through trajectories, resumable JSONL, summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixelreasoner.cli import main
from pixelreasoner.data.formats import write_items
from pixelreasoner.data.items import TaskItem
from pixelreasoner.eval.harness import evaluate_task, format_table, summarize
from pixelreasoner.eval.tasks import get_task, task_for
from pixelreasoner.rollout.engine import RolloutEngine
from pixelreasoner.rollout.scripted import ScriptedBackend
from pixelreasoner.tasks.families import make_family
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.vision.budget import tiny

BUDGET = tiny()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaldata")
    generate_dataset([make_family("needle"), make_family("read")], 6, root, progress=False)
    return root


def oracle_script(items):  # type: ignore[no-untyped-def]
    """Zoom on the cue, then answer with the gold for even-numbered items, a wrong one for odd."""
    by_question = {}
    for n, item in enumerate(items):
        by_question[item.question, tuple(item.cue_bbox or ())] = (item, n)

    def script(request, turn):  # type: ignore[no-untyped-def]
        first_user = request.conversation.turns[1]
        text = first_user.text
        matches = [v for (q, _), v in by_question.items() if text.startswith(q)]
        item, n = matches[0]
        if turn == 0:
            payload = json.dumps(
                {"name": "crop_image_normalized", "arguments": {"bbox_2d": item.cue_bbox, "target_image": 1}}
            )
            return f"zoom\n<tool_call>\n{payload}\n</tool_call>"
        return f"\\boxed{{{item.answer if n % 2 == 0 else 'zzz'}}}"

    return script


def test_tasks_find_their_rows_and_score(data: Path) -> None:
    needle = get_task("needle").load(data)
    assert len(needle.items) == 6 and all(i.benchmark == "needle" for i in needle.items)
    assert task_for(needle.items[0]).name == "needle" and get_task("read").metric == "anls"
    with pytest.raises(FileNotFoundError, match="no rows of benchmark 'vstar'"):
        get_task("vstar").load(data)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("mmmu")


def test_evaluate_writes_records_and_resumes(data: Path, tmp_path: Path) -> None:
    items = get_task("needle").load(data).items
    script = oracle_script(items)
    first_backend = ScriptedBackend(script)
    engine = RolloutEngine(first_backend, BUDGET)
    evaluate_task(engine, get_task("needle"), items[:4], tmp_path, batch_size=2, progress=False)
    lines = (tmp_path / "needle.jsonl").read_text().splitlines()
    assert len(lines) == 4
    # a killed run leaves a cut-off line behind; the next run drops it and carries on
    (tmp_path / "needle.jsonl").write_text("\n".join(lines) + '\n{"qid": "needle-0000')
    second_backend = ScriptedBackend(script)
    records = evaluate_task(
        RolloutEngine(second_backend, BUDGET),
        get_task("needle"),
        items,
        tmp_path,
        batch_size=4,
        progress=False,
    )
    assert len(records) == 6 and sum(len(c) for c in second_backend.calls if c) == 2 * 2  # only 2 new items
    assert [r["qid"] for r in records] == [i.qid for i in items]
    report = summarize(get_task("needle"), records)
    # even-numbered items answer right: 3 of 6; every item zoomed once, without errors
    assert (report.n, report.score, report.rapr, report.mean_ops, report.tool_error_rate) == (
        6,
        0.5,
        1.0,
        1.0,
        0.0,
    )
    assert report.mean_turns == 2.0 and report.finish == {"answer": 6}
    assert "| needle | accuracy | 6 | 50.0 | 100.0% |" in format_table([report])


def test_anls_task_scores_partial_matches(data: Path) -> None:
    from pixelreasoner.trajectory import Conversation, Trajectory

    item = get_task("read").load(data).items[0]
    conversation = Conversation.from_question(item.question)
    conversation.add_model_turn(f"It reads \\boxed{{{item.answer}}}")
    assert get_task("read").score(Trajectory(conversation), item) == 1.0
    conversation.add_model_turn("no box here")  # only the final turn counts
    assert get_task("read").score(Trajectory(conversation), item) == 0.0


def test_eval_command_with_a_released_style_parquet(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    """The CLI end to end on an in-process tiny model and a parquet holding two benchmarks."""
    from pixelreasoner.models.tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model")
    dataset = generate_dataset([make_family("needle")], 2, tmp_path / "data", progress=False)
    extra = TaskItem(
        qid="vstar-1",
        question="Which?\n(A) a\n(B) b",
        answer="A",
        images=dataset.items[0].images,
        choices=["a", "b"],
    )
    write_items([*dataset.items, extra], tmp_path / "data" / "items.parquet", relative_to=tmp_path / "data")
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--tasks",
            "vstar,needle",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--budget",
            "tiny",
            "--max-new-tokens",
            "8",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["task"], r["n"]) for r in summary] == [("vstar", 1), ("needle", 2)]
    assert (out / "summary.md").read_text().startswith("| task |")
