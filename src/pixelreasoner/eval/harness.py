"""Evaluation: roll out every item of some benchmarks (K times each), score, summarise.

Per task, ``OUT/{task}.jsonl`` gets one line per (item, sample) as soon as it is done (the
trajectory's turns and counts, the prediction, the score, the sample index and the protocol's
id), so an interrupted evaluation continues where it stopped: pairs already in the file are
skipped. ``OUT/protocol.json`` records the protocol (:mod:`pixelreasoner.eval.protocol`);
:func:`run_evaluation` refuses to resume into a folder recorded under another one.
``OUT/summary.json`` and ``OUT/summary.md`` give the protocol, then per benchmark: accuracy (or
ANLS), RaPR (share of answers that used an operation), tool error rate (failed calls / calls),
each with a 95% interval, mean operations, mean turns, and how finishes broke down.

**Intervals.** With K samples per item (Avg@K), an item's score is the mean of its K scores,
and the benchmark's score the mean over the n items of those per-item means. Its 95% interval
is the normal (CLT) one over items, ``mean ± 1.96 · s / √n`` with ``s`` the standard deviation
(n - 1) of the per-item means, clipped to [0, 1]. Items are the independent units: per-item
means carry both the spread between items and the sampling noise within an item, so the
interval covers both (a greedy run's interval is the benchmark's sampling error alone). RaPR
is the same with "used an operation" (0/1) in place of the score. The tool error rate is a
ratio of sums (failed calls / calls, per-item means of each), so its interval uses the delta
method for a ratio over items: ``R ± 1.96 · s_d / (c̄ √n)`` with ``d_i = f_i - R c_i``
(``f_i``, ``c_i`` the item's mean failed calls and calls). Fewer than 2 items give no interval.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pixelreasoner.data.items import TaskItem
from pixelreasoner.eval.benchmarks import CategoryScore, category_scores, format_category_table
from pixelreasoner.eval.protocol import (
    EvalProtocol,
    ModelIdentity,
    ProtocolMismatch,
    describe,
    differences,
    protocol_id,
    protocol_record,
)
from pixelreasoner.eval.scoring import extract_boxed
from pixelreasoner.eval.tasks import EvalTask
from pixelreasoner.protocol.prompts import PromptMode
from pixelreasoner.rollout.backend import Backend
from pixelreasoner.rollout.engine import AsyncBackend, Query, RolloutEngine
from pixelreasoner.trajectory import Trajectory
from pixelreasoner.vision.budget import PixelBudget

Z95 = 1.959963984540054
"""The standard normal's 97.5% quantile: a two-sided 95% interval."""

Interval = tuple[float, float] | None


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, Interval]:
    """Mean of per-item values and its normal interval ``mean ± z · s / √n``, clipped to [0, 1].

    ``s`` is the sample standard deviation (n - 1); fewer than 2 values give no interval.
    """
    n = len(values)
    if n == 0:
        return 0.0, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * s / math.sqrt(n)
    return mean, (max(0.0, mean - half), min(1.0, mean + half))


_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
"""Student's t 97.5% quantiles for 1-10 degrees of freedom."""


def t_interval(values: Sequence[float]) -> tuple[float, Interval]:
    """Mean and 95% interval of a few independent runs' values (seeds): Student's t, n - 1 df.

    >>> mean, (low, high) = t_interval([0.5, 0.7])  # 0.6 ± 12.706 · 0.1414 / √2
    >>> round(mean, 2), round(low, 3), round(high, 3)
    (0.6, 0.0, 1.0)
    >>> t_interval([0.8])
    (0.8, None)
    """
    df = len(values) - 1
    return mean_interval(values, _T975[df - 1] if 1 <= df <= len(_T975) else Z95)


def ratio_interval(num: Sequence[float], den: Sequence[float], z: float = Z95) -> tuple[float, Interval]:
    """``R = Σnum / Σden`` over items and its delta-method interval, clipped to [0, 1].

    ``R ± z · s_d / (mean(den) · √n)``, ``s_d`` the standard deviation (n - 1) of
    ``d_i = num_i - R · den_i``. ``R`` is 0 with no interval when ``Σden`` is 0; fewer than 2
    items give no interval.
    """
    n = len(num)
    total = sum(den)
    if n == 0 or total <= 0:
        return 0.0, None
    ratio = sum(num) / total
    if n < 2:
        return ratio, None
    d = [a - ratio * b for a, b in zip(num, den, strict=True)]
    s = math.sqrt(sum(x * x for x in d) / (n - 1))
    half = z * s / ((total / n) * math.sqrt(n))
    return ratio, (max(0.0, ratio - half), min(1.0, ratio + half))


@dataclass
class TaskReport:
    """One benchmark's numbers. ``n`` counts items; ``samples`` trajectories per item."""

    task: str
    metric: str
    n: int = 0
    samples: int = 0
    n_records: int = 0
    score: float = 0.0
    score_ci: Interval = None
    rapr: float = 0.0
    rapr_ci: Interval = None
    tool_error_rate: float = 0.0
    tool_error_ci: Interval = None
    mean_ops: float = 0.0
    mean_turns: float = 0.0
    finish: dict[str, int] = field(default_factory=dict)
    load_problems: int = 0
    sample_scores: list[float] = field(default_factory=list)
    """The score of each sample index over the items that have it (spread between runs)."""
    categories: list[dict[str, Any]] = field(default_factory=list)
    """Per category (V*: attribute, spatial; see ``eval.benchmarks.category_scores``): n, score, RaPR."""
    paths: dict[str, dict[str, float]] = field(default_factory=dict)
    """The score by path (:func:`path_scores`): ``tool`` (trajectories that called an operation)
    and ``direct`` (the rest), each with its trajectory count ``n``, mean ``score`` and mean
    ``earned`` (the reward's correctness: 0 after an unrepaired failed operation)."""


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def path_scores(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean score of the trajectories that used an operation (``tool``) and of those that did not
    (``direct``), each with its count and its ``earned`` mean: the score RL's reward would give,
    0 for a trajectory whose last operation failed and was never repaired. A path no trajectory
    took has ``n`` 0 and NaN means.

    Sampled trajectories show both of a policy's paths; greedy decoding shows only the likelier
    one. Pooled over all trajectories (not per item): the paths are taken by different items.

    >>> records = [{"n_calls": 1, "score": 1.0}, {"n_calls": 0, "score": 0.0}, {"n_calls": 2, "score": 0.0}]
    >>> records.append({"n_calls": 1, "score": 1.0, "final_error": True})
    >>> path_scores(records)["tool"]
    {'n': 3, 'score': 0.6666666666666666, 'earned': 0.3333333333333333}
    """
    split: dict[str, list[tuple[float, float]]] = {"tool": [], "direct": []}
    for r in records:
        score = float(r["score"])
        earned = 0.0 if r.get("final_error") else score
        split["tool" if int(r["n_calls"]) > 0 else "direct"].append((score, earned))
    nan = float("nan")
    return {
        path: {
            "n": len(pairs),
            "score": _mean([p[0] for p in pairs]) if pairs else nan,
            "earned": _mean([p[1] for p in pairs]) if pairs else nan,
        }
        for path, pairs in split.items()
    }


def summarize(task: EvalTask, records: Sequence[dict[str, Any]], load_problems: int = 0) -> TaskReport:
    """Aggregate the records of one task (one or more per item; see the module docstring)."""
    if not records:
        return TaskReport(task.name, task.metric, load_problems=load_problems)
    by_item: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_item.setdefault(str(r["qid"]), []).append(r)
    groups = list(by_item.values())

    def per_item(value: Any) -> list[float]:
        return [_mean([float(value(r)) for r in group]) for group in groups]

    score, score_ci = mean_interval(per_item(lambda r: r["score"]))
    rapr, rapr_ci = mean_interval(per_item(lambda r: int(r["n_calls"]) > 0))
    calls = per_item(lambda r: r["n_calls"])
    errors, errors_ci = ratio_interval(per_item(lambda r: r["n_failed"]), calls)
    turns = per_item(lambda r: sum(1 for t in r["turns"] if t["role"] == "assistant"))
    by_sample: dict[int, list[float]] = {}
    for r in records:
        by_sample.setdefault(int(r.get("sample", 0)), []).append(float(r["score"]))
    return TaskReport(
        task=task.name,
        metric=task.metric,
        n=len(groups),
        samples=max(len(g) for g in groups),
        n_records=len(records),
        score=score,
        score_ci=score_ci,
        rapr=rapr,
        rapr_ci=rapr_ci,
        tool_error_rate=errors,
        tool_error_ci=errors_ci,
        mean_ops=_mean(calls),
        mean_turns=_mean(turns),
        finish=dict(Counter(str(r["finish_reason"]) for r in records)),
        load_problems=load_problems,
        sample_scores=[_mean(by_sample[k]) for k in sorted(by_sample)],
        paths=path_scores(records),
    )


def _record(trajectory: Trajectory, item: TaskItem, task: EvalTask, sample: int) -> dict[str, Any]:
    record = trajectory.to_record()
    record.update(
        task=task.name,
        sample=sample,
        prediction=extract_boxed(trajectory.final_text) if trajectory.n_turns else None,
        gold=item.answer,
        score=task.score(trajectory, item),
    )
    return record


def read_records(path: Path) -> list[dict[str, Any]]:
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


def _key(record: Mapping[str, Any]) -> tuple[str, int]:
    """(qid, sample) of a record; lines written before samples existed are sample 0."""
    return str(record["qid"]), int(record.get("sample", 0))


def sample_seed(seed: int, task: str, qid: str, sample: int) -> int:
    """A 31-bit seed for one (task, item, sample), the same in every run."""
    digest = hashlib.sha256(f"{seed}/{task}/{qid}/{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _reseed(engine: RolloutEngine, seed: int) -> None:
    """Seed the engine's sampling and the backend's generator, where it has one."""
    engine.first = dataclasses.replace(engine.first, seed=seed)
    engine.later = dataclasses.replace(engine.later, seed=seed)
    generator = getattr(engine.backend, "generator", None)
    if generator is not None and hasattr(generator, "manual_seed"):
        generator.manual_seed(seed)


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
    samples: int = 1,
    seed: int | None = None,
    protocol: str | None = None,
) -> list[dict[str, Any]]:
    """Evaluate ``samples`` trajectories of each of ``items``, appending to ``OUT/{task}.jsonl``.

    Returns the records of the requested (item, sample) pairs, in item order then sample order
    (lines of other items stay in the file). Pairs already in the file are not redone. With
    ``concurrency`` the engine's async driver is used (HTTP backends); otherwise the lockstep
    driver in batches of ``batch_size`` trajectories. ``keep`` collects the new trajectories.

    ``seed`` (sampled runs): each batch reseeds the engine's sampling seed and the backend's
    generator from ``seed`` and the batch's first (item, sample), so a run is repeatable with the
    same batch size. ``protocol`` is the protocol's id, stamped on every new line; lines stamped
    with another id raise :class:`~pixelreasoner.eval.protocol.ProtocolMismatch`.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{task.name}.jsonl"
    records = read_records(path)
    if protocol is not None:
        foreign = {str(r["protocol_id"]) for r in records if r.get("protocol_id", protocol) != protocol}
        if foreign:
            raise ProtocolMismatch(
                f"{path} holds results of another protocol (id {', '.join(sorted(foreign))}; now {protocol})"
            )
    # Rewrite the file without a possibly cut-off last line before appending to it.
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        done.setdefault(_key(r), r)
    todo = [(item, k) for item in items for k in range(samples) if (item.qid, k) not in done]
    total = len(items) * samples
    bar = tqdm(
        total=total, initial=total - len(todo), desc=f"eval {task.name}", unit="traj", disable=not progress
    )
    with path.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            if seed is not None:
                _reseed(engine, sample_seed(seed, task.name, chunk[0][0].qid, chunk[0][1]))
            queries = [Query.from_item(item, engine.budget, mode) for item, _ in chunk]
            if concurrency:
                trajectories = asyncio.run(engine.run_async(queries, concurrency=concurrency))
            else:
                trajectories = engine.run(queries)
            for trajectory, (item, k) in zip(trajectories, chunk, strict=True):
                record = _record(trajectory, item, task, k)
                if protocol is not None:
                    record["protocol_id"] = protocol
                done[item.qid, k] = record
                f.write(json.dumps(record) + "\n")
                if keep is not None:
                    keep.append(trajectory)
            f.flush()
            bar.update(len(chunk))
    bar.close()
    return [done[item.qid, k] for item in items for k in range(samples) if (item.qid, k) in done]


def format_percent(value: float, interval: Interval, unit: str = "") -> str:
    text = f"{100 * value:.1f}{unit}"
    if interval is not None:
        text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return text


def format_table(reports: Sequence[TaskReport]) -> str:
    """A markdown table of task reports (95% intervals in brackets)."""
    lines = [
        "| task | metric | items | samples | score | RaPR | tool errors | ops/item | turns/item | finishes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        finishes = ", ".join(f"{k} {v}" for k, v in sorted(r.finish.items()))
        lines.append(
            f"| {r.task} | {r.metric} | {r.n} | {r.samples} | {format_percent(r.score, r.score_ci)} | "
            f"{format_percent(r.rapr, r.rapr_ci, '%')} | "
            f"{format_percent(r.tool_error_rate, r.tool_error_ci, '%')} | "
            f"{r.mean_ops:.2f} | {r.mean_turns:.2f} | {finishes} |"
        )
    return "\n".join(lines)


def format_path_table(reports: Sequence[TaskReport]) -> str:
    """The score by path (:func:`path_scores`): trajectories that zoomed and those that answered
    directly, each with its count, score and what RL's reward would pay (``earned``)."""
    lines = [
        "| task | zoomed: trajectories | score | earned | direct: trajectories | score | earned |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        cells = []
        for path in ("tool", "direct"):
            numbers = r.paths.get(path, {"n": 0})
            n = int(numbers["n"])
            cells += [str(n)] + (
                [f"{100 * numbers['score']:.1f}", f"{100 * numbers['earned']:.1f}"] if n else ["-", "-"]
            )
        lines.append(f"| {r.task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PATH_NOTE = (
    "By path: trajectories that called an operation and those that answered directly. Sampled runs "
    "(--samples K --temperature 1.0) show both of a policy's paths; greedy decoding shows only the "
    "likelier. Earned: the score RL's reward would give (0 after a failed operation left unrepaired)."
)


INTERVAL_NOTE = (
    "Brackets: 95% intervals over items (normal approximation on per-item means; delta method for "
    "the tool-error ratio). With several samples per item they include the sampling noise."
)


def write_summary(
    reports: Sequence[TaskReport], out_dir: str | Path, record: Mapping[str, Any] | None = None
) -> str:
    """Write ``summary.json`` (``{"protocol": record, "tasks": [...]}``) and ``summary.md``
    (the protocol, then the table); returns the markdown."""
    out = Path(out_dir)
    summary = {
        "protocol": dict(record) if record is not None else None,
        "tasks": [r.__dict__ for r in reports],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    parts = [describe(record)] if record is not None else []
    parts += [format_table(reports), INTERVAL_NOTE, format_path_table(reports), PATH_NOTE]
    for r in reports:
        if r.categories:
            scores = [CategoryScore(**c) for c in r.categories]
            parts.append(format_category_table(r.task, scores))
    text = "\n\n".join(parts)
    (out / "summary.md").write_text(text + "\n", encoding="utf-8")
    return text


PROTOCOL_FILE = "protocol.json"
_RESULTS = ("*.jsonl", "summary.json", "summary.md", PROTOCOL_FILE)


def _results_in(out: Path) -> list[Path]:
    return sorted({p for pattern in _RESULTS for p in out.glob(pattern) if p.is_file()})


def _set_aside(out: Path, files: Sequence[Path]) -> Path:
    n = 1
    while (out / f"superseded-{n}").exists():
        n += 1
    folder = out / f"superseded-{n}"
    folder.mkdir()
    for f in files:
        shutil.move(str(f), folder / f.name)
    return folder


def check_out(out_dir: str | Path, record: Mapping[str, Any]) -> str:
    """What stops resuming into ``OUT`` under ``record`` ('' when nothing does).

    A recorded protocol that differs in any compared field (see
    :func:`~pixelreasoner.eval.protocol.differences`), or results without a recorded protocol.
    """
    out = Path(out_dir)
    path = out / PROTOCOL_FILE
    if path.is_file():
        diffs = differences(json.loads(path.read_text(encoding="utf-8")), record)
        if diffs:
            listed = "\n  ".join(diffs)
            return f"{out} holds results of another evaluation protocol. Differing fields:\n  {listed}"
        return ""
    results = [p.name for p in _results_in(out) if p.suffix == ".jsonl"] if out.is_dir() else []
    if results:
        names = ", ".join(results)
        return f"{out} holds results ({names}) without a recorded protocol, so they cannot be checked."
    return ""


def refusal(out_dir: str | Path, problem: str) -> str:
    return (
        f"{problem}\nRefusing to mix or compare them. Use another --out, or --force to move the old "
        f"results to {Path(out_dir)}/superseded-N/ and start again."
    )


def prepare_out(out_dir: str | Path, record: Mapping[str, Any], force: bool = False) -> Path | None:
    """Check ``OUT`` against ``record`` (:func:`check_out`), then write ``OUT/protocol.json``.

    A problem raises :class:`~pixelreasoner.eval.protocol.ProtocolMismatch` listing it; with
    ``force`` the folder's results are moved to ``OUT/superseded-N/`` instead (returned) and the
    run starts afresh.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problem = check_out(out, record)
    moved = None
    if problem:
        if not force:
            raise ProtocolMismatch(refusal(out, problem))
        moved = _set_aside(out, _results_in(out))
    (out / PROTOCOL_FILE).write_text(json.dumps(dict(record), indent=2) + "\n", encoding="utf-8")
    return moved


def open_backend(
    model: str,
    budget: PixelBudget,
    served_model_name: str = "default",
    api_key: str | None = None,
) -> tuple[Backend | AsyncBackend, Any]:
    """A backend for ``model``: an OpenAI-compatible server's URL (checked to answer), or a
    checkpoint directory / hub id loaded in this process (GPU if there is one).

    Returns the backend and the loaded model (``None`` over HTTP). Raises ``ConnectionError`` when
    the server does not answer.
    """
    if model.startswith(("http://", "https://")):
        from pixelreasoner.rollout.http import OpenAIBackend

        server = OpenAIBackend(model, model=served_model_name, api_key=api_key, budget=budget)
        server.check_server()
        return server, None
    import torch

    from pixelreasoner.models.loading import load_model
    from pixelreasoner.rollout.hf import TransformersBackend

    dtype = "auto" if torch.cuda.is_available() else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded, processor = load_model(model, dtype=dtype, device=device)
    return TransformersBackend(loaded, processor, budget), loaded


@dataclass
class TaskRun:
    """One benchmark to evaluate: the task, its items, and how many rows failed to load."""

    task: EvalTask
    items: Sequence[TaskItem]
    load_problems: int = 0


def run_evaluation(
    backend: Backend | AsyncBackend,
    runs: Sequence[TaskRun],
    out_dir: str | Path,
    protocol: EvalProtocol,
    model: ModelIdentity,
    batch_size: int = 16,
    concurrency: int | None = None,
    progress: bool = True,
    force: bool = False,
    data_root: str | Path | None = None,
) -> list[TaskReport]:
    """Evaluate every task under ``protocol`` into ``OUT`` and write the summary.

    Checks ``OUT`` first (:func:`prepare_out`; ``force`` sets other results aside). The
    engine gets the protocol's budget, limits and decoding; ``backend`` must have been made with
    the same budget (it renders images with it).
    """
    record = protocol_record(protocol, model, data_root)
    moved = prepare_out(out_dir, record, force)
    if moved is not None and progress:
        print(f"results of another protocol moved to {moved}")
    decoding = protocol.decoding
    engine = RolloutEngine(backend, protocol.budget, protocol.limits, first=decoding.params())
    pid = protocol_id(record)
    reports = []
    for run in runs:
        records = evaluate_task(
            engine,
            run.task,
            run.items,
            out_dir,
            mode=protocol.mode,
            batch_size=batch_size,
            concurrency=concurrency,
            progress=progress,
            samples=decoding.samples,
            seed=decoding.seed,
            protocol=pid,
        )
        report = summarize(run.task, records, run.load_problems)
        report.categories = [c.__dict__ for c in category_scores(records, run.items)]
        reports.append(report)
    write_summary(reports, out_dir, record)
    return reports
