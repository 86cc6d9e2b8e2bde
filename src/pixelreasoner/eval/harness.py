"""Evaluation: roll out every item of some benchmarks greedily, score, summarise.

Per task, ``OUT/{task}.jsonl`` gets one line per item as soon as it is done (the trajectory's
turns and counts, the prediction, the score), so an interrupted evaluation continues where it
stopped: items already in the file are skipped. ``OUT/summary.json`` and ``OUT/summary.md``
report per benchmark: accuracy (or ANLS), RaPR (share of answers that used an operation), tool
error rate (failed calls / calls), mean operations, mean turns, and how finishes broke down.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pixelreasoner.data.items import TaskItem
from pixelreasoner.eval.scoring import extract_boxed
from pixelreasoner.eval.tasks import EvalTask
from pixelreasoner.protocol.prompts import PromptMode
from pixelreasoner.rollout.engine import Query, RolloutEngine
from pixelreasoner.trajectory import Trajectory


@dataclass
class TaskReport:
    task: str
    metric: str
    n: int = 0
    score: float = 0.0
    rapr: float = 0.0
    tool_error_rate: float = 0.0
    mean_ops: float = 0.0
    mean_turns: float = 0.0
    finish: dict[str, int] = field(default_factory=dict)
    load_problems: int = 0


def summarize(task: EvalTask, records: Sequence[dict[str, Any]], load_problems: int = 0) -> TaskReport:
    """Aggregate per-item records of one task."""
    n = len(records)
    if n == 0:
        return TaskReport(task.name, task.metric, load_problems=load_problems)
    calls = sum(int(r["n_calls"]) for r in records)
    failed = sum(int(r["n_failed"]) for r in records)
    turns = sum(sum(1 for t in r["turns"] if t["role"] == "assistant") for r in records)
    return TaskReport(
        task=task.name,
        metric=task.metric,
        n=n,
        score=sum(float(r["score"]) for r in records) / n,
        rapr=sum(1 for r in records if int(r["n_calls"]) > 0) / n,
        tool_error_rate=failed / calls if calls else 0.0,
        mean_ops=calls / n,
        mean_turns=turns / n,
        finish=dict(Counter(str(r["finish_reason"]) for r in records)),
        load_problems=load_problems,
    )


def _record(trajectory: Trajectory, item: TaskItem, task: EvalTask) -> dict[str, Any]:
    record = trajectory.to_record()
    record.update(
        task=task.name,
        prediction=extract_boxed(trajectory.final_text) if trajectory.n_turns else None,
        gold=item.answer,
        score=task.score(trajectory, item),
    )
    return record


def _done(path: Path) -> list[dict[str, Any]]:
    """Records already written (a cut-off last line from a killed run is ignored)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def evaluate_task(
    engine: RolloutEngine,
    task: EvalTask,
    items: Sequence[TaskItem],
    out_dir: str | Path,
    mode: PromptMode = "vcot",
    batch_size: int = 16,
    concurrency: int | None = None,
    progress: bool = True,
    keep: list[Trajectory] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate ``items`` of ``task``, appending to ``OUT/{task}.jsonl``; returns all records.

    With ``concurrency`` the engine's async driver is used (HTTP backends); otherwise the
    lockstep driver in batches of ``batch_size``. ``keep`` collects the new trajectories.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{task.name}.jsonl"
    records = _done(path)
    finished = {str(r["qid"]) for r in records}
    todo = [i for i in items if i.qid not in finished]
    # Rewrite the file without a possibly cut-off last line before appending to it.
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    bar = tqdm(
        total=len(items),
        initial=len(items) - len(todo),
        desc=f"eval {task.name}",
        unit="item",
        disable=not progress,
    )
    with path.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            queries = [Query.from_item(i, engine.budget, mode) for i in chunk]
            if concurrency:
                trajectories = asyncio.run(engine.run_async(queries, concurrency=concurrency))
            else:
                trajectories = engine.run(queries)
            for trajectory, item in zip(trajectories, chunk, strict=True):
                record = _record(trajectory, item, task)
                records.append(record)
                f.write(json.dumps(record) + "\n")
                if keep is not None:
                    keep.append(trajectory)
            f.flush()
            bar.update(len(chunk))
    bar.close()
    return records


def format_table(reports: Sequence[TaskReport]) -> str:
    """A markdown table of task reports."""
    lines = [
        "| task | metric | n | score | RaPR | tool errors | ops/item | turns/item | finishes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        finishes = ", ".join(f"{k} {v}" for k, v in sorted(r.finish.items()))
        lines.append(
            f"| {r.task} | {r.metric} | {r.n} | {100 * r.score:.1f} | {100 * r.rapr:.1f}% | "
            f"{100 * r.tool_error_rate:.1f}% | {r.mean_ops:.2f} | {r.mean_turns:.2f} | {finishes} |"
        )
    return "\n".join(lines)


def write_summary(reports: Sequence[TaskReport], out_dir: str | Path) -> str:
    out = Path(out_dir)
    (out / "summary.json").write_text(json.dumps([r.__dict__ for r in reports], indent=2), encoding="utf-8")
    table = format_table(reports)
    (out / "summary.md").write_text(table + "\n", encoding="utf-8")
    return table
