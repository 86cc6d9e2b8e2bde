"""The task registry: a benchmark is a name, where its rows are, a metric and a scorer.

One :class:`EvalTask` serves evaluation and the RL correctness reward alike
(:meth:`EvalTask.score`). Benchmarks are read from the released evaluation parquet layout
under a data root; a task finds its rows by the benchmark prefix of ``qid`` (the part before
the first ``-``), in ``ROOT/{name}.parquet``, ``ROOT/{name}/items.parquet`` or any parquet in
``ROOT`` that has the released columns. A task with ``sources`` also reads its benchmark's own
release files (HR-Bench's TSV, MME-RealWorld's JSON, V*'s JSON Lines; see
:mod:`pixelreasoner.eval.benchmarks`), looked for under ``ROOT`` after the released parquet
names and before the catch-all scan. ``ROOT`` may also be one such file.

Items carry their category in ``meta["category"]`` where the benchmark has a breakdown (V*:
``attribute``/``spatial``); :func:`~pixelreasoner.eval.benchmarks.category_scores` aggregates
records by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from pixelreasoner.data.formats import ITEMS_FILENAME, REQUIRED_COLUMNS, LoadedItems, LoadProblem, read_items
from pixelreasoner.data.items import TaskItem
from pixelreasoner.eval.benchmarks import item_category, read_benchmark
from pixelreasoner.eval.scoring import anls, extract_boxed, score_answer
from pixelreasoner.trajectory import Trajectory


@dataclass(frozen=True)
class EvalTask:
    name: str
    prefixes: tuple[str, ...]
    """qid prefixes (before the first ``-``, case-insensitive) that belong to this benchmark."""
    metric: Literal["accuracy", "anls"] = "accuracy"
    description: str = ""
    sources: tuple[str, ...] = ()
    """The benchmark's own release files, as glob patterns relative to the data root, in the order
    tried; read with :func:`~pixelreasoner.eval.benchmarks.read_benchmark` (qids ``{name}-{id}``)."""

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
        """This benchmark's rows under ``root`` (problems with other rows are reported, not fatal).

        Tried in order, the first file with rows of this benchmark wins: ``ROOT/{name}.parquet``,
        ``ROOT/{name}/items.parquet``, ``ROOT/items.parquet`` (or ``ROOT`` itself when it is a
        file), the ``sources`` patterns, then every parquet in ``ROOT`` with the released
        columns (others, such as a benchmark's own parquet, are passed over).
        """
        folder = Path(root)
        if not folder.exists():
            raise FileNotFoundError(f"data root {folder} does not exist")
        for path, native in self._candidates(folder):
            loaded = read_benchmark(path, self.name) if native else self._released(path)
            if loaded is None:
                continue
            if not loaded.items and native:
                raise FileNotFoundError(f"no usable rows of benchmark {self.name!r}: {loaded.summary()}")
            if loaded.items:
                for item in loaded.items:
                    category = item.meta.get("category") if native else item_category(self.name, item)
                    if category is not None:
                        item.meta["category"] = category
                return loaded
        expected = [f"{self.name}.parquet", f"{self.name}/{ITEMS_FILENAME}", *self.sources]
        raise FileNotFoundError(
            f"no rows of benchmark {self.name!r} (qid prefixes {', '.join(self.prefixes)}) under {folder}; "
            f"expected {', '.join(expected)} or a parquet with such qids"
        )

    def _candidates(self, folder: Path) -> list[tuple[Path, bool]]:
        """(file, read in the benchmark's own layout) pairs, in the order tried, each once."""
        released = [folder / f"{self.name}.parquet", folder / self.name / ITEMS_FILENAME]
        candidates = [(p, False) for p in released]
        if folder.is_dir():
            candidates.append((folder / ITEMS_FILENAME, False))
            candidates += [(p, True) for pattern in self.sources for p in sorted(folder.glob(pattern))]
            candidates += [(p, False) for p in sorted(folder.glob("*.parquet"))]
        else:
            own = {Path(pattern).name.lower() for pattern in self.sources}
            candidates.append((folder, folder.name.lower() in own and not _is_released(folder)))
        seen: set[Path] = set()
        unique = []
        for path, native in candidates:
            if path not in seen and path.is_file():
                seen.add(path)
                unique.append((path, native))
        return unique

    def _released(self, path: Path) -> LoadedItems | None:
        """This benchmark's rows of a released-layout parquet; None for a file in another layout."""
        if not _is_released(path):
            return None
        loaded = read_items(path)
        owned = {i for i, item in enumerate(loaded.items) if self.owns(item)}
        problems = [
            p
            for p in loaded.problems
            if p.qid is None or p.qid.split("-", 1)[0].lower() in self.prefixes or p.row in owned
        ]
        mine = [item for item in loaded.items if self.owns(item)]
        return LoadedItems(items=mine, problems=problems, root=loaded.root, source=path)


def _is_released(path: Path) -> bool:
    """Whether ``path`` is a parquet with the released columns (an unreadable parquet counts, so
    that :func:`read_items` reports it; a file of another type does not)."""
    if path.suffix.lower() != ".parquet":
        return False
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError):
        return True
    return all(column in names for column in REQUIRED_COLUMNS)


VSTAR_SOURCES = ("vstar_bench/test_questions.jsonl", "vstar/test_questions.jsonl")
"""``craigwu/vstar_bench`` downloaded into ``ROOT/vstar_bench`` (images in its two folders)."""


def _hrbench_sources(size: str) -> tuple[str, ...]:
    """``DreamMr/HR-Bench``'s ``hr_bench_{size}.tsv`` (or ``.parquet``) in ``ROOT`` or one folder down."""
    names = (f"hr_bench_{size}.tsv", f"hr_bench_{size}.parquet")
    return (*names, *(f"*/{name}" for name in names))


MME_REALWORLD_LITE_SOURCES = tuple(
    f"{folder}{name}"
    for name in ("MME-RealWorld-Lite.json", "MME-RealWorld-Lite.tsv", "MME_RealWorld_Lite.tsv")
    for folder in ("", "*/", "*/*/")
)
"""``yifanzhang114/MME-RealWorld-Lite``'s ``data.zip`` unpacked under ``ROOT`` (the JSON beside
``imgs/``), or VLMEvalKit's TSV with the images inline."""


TASKS: dict[str, EvalTask] = {
    task.name: task
    for task in (
        EvalTask(
            "vstar",
            ("vstar", "v*", "vstarbench"),
            description="V* bench: 191 multiple-choice items (115 attribute, 76 spatial)",
            sources=VSTAR_SOURCES,
        ),
        EvalTask(
            "hrbench_4k",
            ("hrbench_4k", "hr_bench_4k", "hrbench4k"),
            description="HR-Bench 4K: 800 multiple-choice items on 4K images (FSP, FCP)",
            sources=_hrbench_sources("4k"),
        ),
        EvalTask(
            "hrbench_8k",
            ("hrbench_8k", "hr_bench_8k", "hrbench8k"),
            description="HR-Bench 8K: 800 multiple-choice items on 8K images (FSP, FCP)",
            sources=_hrbench_sources("8k"),
        ),
        EvalTask(
            "mme_realworld_lite",
            ("mme_realworld_lite", "mme-realworld-lite", "mmerealworldlite"),
            description="MME-RealWorld-Lite: 1,919 multiple-choice items, by task/domain",
            sources=MME_REALWORLD_LITE_SOURCES,
        ),
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
