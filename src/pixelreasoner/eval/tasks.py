"""The task registry: a benchmark is a name, where its rows are, a metric and a scorer.

One :class:`EvalTask` serves evaluation and the RL correctness reward alike
(:meth:`EvalTask.score`). Benchmarks are read from the released evaluation parquet layout
under a data root; a task finds its rows by the benchmark prefix of ``qid`` (the part before
the first ``-``), in ``ROOT/{name}.parquet``, ``ROOT/{name}/items.parquet`` or any parquet in
``ROOT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pixelreasoner.data.formats import ITEMS_FILENAME, LoadedItems, LoadProblem, read_items
from pixelreasoner.data.items import TaskItem
from pixelreasoner.eval.scoring import anls, extract_boxed, score_answer
from pixelreasoner.trajectory import Trajectory


@dataclass(frozen=True)
class EvalTask:
    name: str
    prefixes: tuple[str, ...]
    """qid prefixes (before the first ``-``, case-insensitive) that belong to this benchmark."""
    metric: Literal["accuracy", "anls"] = "accuracy"
    description: str = ""

    def owns(self, item: TaskItem) -> bool:
        return item.benchmark.lower() in self.prefixes

    def score(self, trajectory: Trajectory, item: TaskItem) -> float:
        """1/0 accuracy (or ANLS in [0, 1]) of the trajectory's final answer.

        The answer is the last ``\\boxed{}`` of the model's *final* turn; no box scores 0.
        """
        prediction = extract_boxed(trajectory.final_text) if trajectory.n_turns else None
        if not prediction:
            return 0.0
        if self.metric == "anls":
            return anls(prediction, item.answers)
        return float(score_answer(prediction, item.answer, item.choices))

    def load(self, root: str | Path) -> LoadedItems:
        """This benchmark's rows under ``root`` (problems with other rows are reported, not fatal)."""
        folder = Path(root)
        if not folder.exists():
            raise FileNotFoundError(f"data root {folder} does not exist")
        candidates = [folder / f"{self.name}.parquet", folder / self.name / ITEMS_FILENAME]
        candidates += [folder / ITEMS_FILENAME] if folder.is_dir() else [folder]
        candidates += sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        seen: set[Path] = set()
        for path in candidates:
            if path in seen or not path.is_file():
                continue
            seen.add(path)
            loaded = read_items(path)
            mine = [i for i in loaded.items if self.owns(i)]
            if mine:
                owned = {i for i, item in enumerate(loaded.items) if self.owns(item)}
                problems = [
                    p
                    for p in loaded.problems
                    if p.qid is None or p.qid.split("-", 1)[0].lower() in self.prefixes or p.row in owned
                ]
                return LoadedItems(items=mine, problems=problems, root=loaded.root, source=path)
        raise FileNotFoundError(
            f"no rows of benchmark {self.name!r} (qid prefixes {', '.join(self.prefixes)}) under {folder}; "
            f"expected {self.name}.parquet, {self.name}/{ITEMS_FILENAME} or a parquet with such qids"
        )


TASKS: dict[str, EvalTask] = {
    task.name: task
    for task in (
        EvalTask("vstar", ("vstar", "v*", "vstarbench"), description="V* bench: 191 multiple-choice items"),
        EvalTask(
            "tallyqa_complex",
            ("tallyqa", "tallyqa_complex", "tallyqacomplex"),
            description="TallyQA complex counting",
        ),
        EvalTask(
            "infovqa",
            ("infovqa", "infographicvqa", "infographic"),
            metric="anls",
            description="InfographicVQA, scored with ANLS",
        ),
        EvalTask("mvbench", ("mvbench",), description="MVBench, 16 pre-extracted frames per video"),
        EvalTask("needle", ("needle",), description="synthetic V*-like (ours)"),
        EvalTask("count", ("count",), description="synthetic TallyQA-like (ours)"),
        EvalTask("read", ("read",), metric="anls", description="synthetic InfoVQA-like (ours)"),
        EvalTask("frames", ("frames",), description="synthetic MVBench-like (ours)"),
    )
}


def get_task(name: str) -> EvalTask:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def task_for(item: TaskItem) -> EvalTask:
    """The registered task an item belongs to (by its qid prefix); accuracy scoring otherwise."""
    for task in TASKS.values():
        if task.owns(item):
            return task
    return EvalTask(item.benchmark, (item.benchmark.lower(),))


__all__ = ["TASKS", "EvalTask", "LoadProblem", "get_task", "task_for"]
