"""Evaluation runs side by side: one HTML page (and its markdown) from several ``eval`` folders.

``pixelreasoner compare RUN_DIR... --out DIR`` reads each run folder written by
:func:`~pixelreasoner.eval.harness.run_evaluation` (``{task}.jsonl``, ``summary.json``,
``protocol.json``) and writes ``DIR/compare.html`` and ``DIR/compare.md`` with

- the runs: folder, protocol name, model and protocol id;
- the scores, runs x tasks: score with its 95% interval, then per task every run's RaPR, tool-error
  rate, operations, turns and finishes (the best score of a task in bold). The numbers are the
  run's ``summary.json``; a task without one is summarised from its JSONL
  (:func:`~pixelreasoner.eval.harness.summarize`);
- the protocol differences: every compared field (:func:`~pixelreasoner.eval.protocol.differences`
  against the first run) with each run's value, the values that differ from the first run's
  highlighted, and each run's whole protocol (:func:`~pixelreasoner.eval.protocol.describe`);
- the items on which the runs disagree, with each run's prediction and score;
- those items' trajectories, one column per run, drawn by :mod:`pixelreasoner.viewer` with the
  crop boxes on the images they were cut from.

**Disagreement.** A sample is correct when its score is at least :data:`CORRECT_AT` (accuracy is
0 or 1; an ANLS of 0.5 or more is an accepted answer, lower ANLS is already 0). An item's value in
a run is the correctness of sample 0 (``by="sample0"``) or the share of its samples that are
correct (``by="mean"``, the default; the same for greedy runs). The runs disagree on an item
(same task and qid, present in at least two runs) when these values are not all equal.

**Trajectories.** The JSONL keeps each turn's text and the number of images, not the images. With
``data_root`` (given, or else the one the runs' ``protocol.json`` recorded, if it still exists) the
items are loaded again (``get_task(task).load(data_root)``), the question is rebuilt as the run built it
(:meth:`~pixelreasoner.rollout.engine.Query.from_item` under the run's own pixel budget and prompt
mode), and every tool call is executed again on it, which gives back the returned crops and
frames (the operations are deterministic). An observation whose re-execution does not match the
record (error or image count) keeps its recorded text only, and later observations get no images.
Without ``data_root`` the trajectories are shown as text.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from pixelreasoner.data.items import TaskItem
from pixelreasoner.eval.harness import PROTOCOL_FILE, TaskReport, format_percent, read_records, summarize
from pixelreasoner.eval.protocol import budget_by_name, compared, describe, differences, protocol_id
from pixelreasoner.eval.tasks import TASKS, EvalTask
from pixelreasoner.protocol.prompts import PromptMode
from pixelreasoner.protocol.turns import execute_turn
from pixelreasoner.rollout.engine import Query
from pixelreasoner.trajectory import (
    Conversation,
    FinishReason,
    ImagePart,
    Part,
    Role,
    Text,
    Trajectory,
    Turn,
    TurnKind,
)
from pixelreasoner.viewer import STYLESHEET, render_trajectory_html
from pixelreasoner.vision.budget import PixelBudget, PixelRange
from pixelreasoner.vision.ops import VisualContext

CORRECT_AT = 0.5
"""A sample whose score is at least this is correct (see the module docstring)."""

DEFAULT_MAX_ITEMS = 30
"""Disagreements whose trajectories are drawn (all are listed)."""

By = Literal["sample0", "mean"]
ABSENT = "(absent)"


# ------------------------------------------------------------------------------------ reading
@dataclass
class Run:
    """One evaluation folder as read back."""

    path: Path
    label: str
    record: dict[str, Any] | None
    """``protocol.json`` (or the protocol in ``summary.json``); ``None`` when neither exists."""
    reports: dict[str, TaskReport]
    """Per task, in the run's order."""
    records: dict[str, list[dict[str, Any]]]
    """Per task, the JSONL lines."""
    from_jsonl: list[str] = field(default_factory=list)
    """Tasks summarised from their JSONL (no summary.json entry)."""

    @property
    def tasks(self) -> list[str]:
        return list(self.reports)

    @property
    def protocol_id(self) -> str | None:
        return protocol_id(self.record) if self.record is not None else None


def task_named(name: str) -> EvalTask:
    """The registered task, or an accuracy task of that name (a benchmark this version lacks)."""
    return TASKS.get(name) or EvalTask(name, (name.lower(),))


def _report(data: Mapping[str, Any]) -> TaskReport:
    names = {f.name for f in dataclasses.fields(TaskReport)}
    values = {k: v for k, v in data.items() if k in names}
    for key in ("score_ci", "rapr_ci", "tool_error_ci"):
        if values.get(key) is not None:
            values[key] = (float(values[key][0]), float(values[key][1]))
    return TaskReport(**values)


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read an ``eval`` output folder; raises ``FileNotFoundError`` when it holds no results."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    summary: dict[str, Any] = {}
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    record: dict[str, Any] | None = None
    if (folder / PROTOCOL_FILE).is_file():
        record = json.loads((folder / PROTOCOL_FILE).read_text(encoding="utf-8"))
    elif summary.get("protocol"):
        record = dict(summary["protocol"])
    records = {p.stem: read_records(p) for p in sorted(folder.glob("*.jsonl"))}
    reports: dict[str, TaskReport] = {}
    for data in summary.get("tasks") or []:
        report = _report(data)
        reports[report.task] = report
    from_jsonl = []
    for name, lines in records.items():
        if name not in reports and lines:
            reports[name] = summarize(task_named(name), lines)
            from_jsonl.append(name)
    if not reports:
        raise FileNotFoundError(f"{folder} holds no evaluation results (summary.json or *.jsonl)")
    return Run(folder, label or folder.name, record, reports, records, from_jsonl)


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Read several folders; labels are the folder names, numbered where two are the same."""
    names = [Path(p).resolve().name or str(p) for p in paths]
    labels = [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]
    return [load_run(p, label) for p, label in zip(paths, labels, strict=True)]


def task_order(runs: Sequence[Run]) -> list[str]:
    """Every task of any run, in the order the runs list them."""
    order: list[str] = []
    for run in runs:
        order += [t for t in run.tasks if t not in order]
    return order


# ------------------------------------------------------------------------------------ protocol
def protocol_fields(runs: Sequence[Run]) -> list[str]:
    """The compared protocol fields on which some run differs from the first (sorted)."""
    if not runs or all(r.record is None for r in runs):
        return []
    base = runs[0].record or {}
    keys: set[str] = set()
    for run in runs[1:]:
        for line in differences(base, run.record or {}):
            keys.add(line.split(": ", 1)[0])
    return sorted(keys)


def protocol_value(run: Run, key: str) -> str:
    """A run's value of a flattened protocol field, as JSON (``(absent)`` when it has none)."""
    if run.record is None:
        return ABSENT
    values = compared(run.record)
    return json.dumps(values[key]) if key in values else ABSENT


def protocol_rows(runs: Sequence[Run]) -> list[tuple[str, list[str], list[bool]]]:
    """(field, each run's value, whether it differs from the first run's) for each differing field."""
    rows = []
    for key in protocol_fields(runs):
        values = [protocol_value(r, key) for r in runs]
        rows.append((key, values, [v != values[0] for v in values]))
    return rows


# ------------------------------------------------------------------------------------ disagreements
def correct(score: float) -> bool:
    return float(score) >= CORRECT_AT


@dataclass
class Disagreement:
    """An item (task, qid) whose correctness differs between runs."""

    task: str
    qid: str
    gold: Any
    values: list[float | None]
    """Per run: sample 0's correctness (0/1) or the share of correct samples; None if not evaluated."""
    records: list[list[dict[str, Any]]]
    """Per run: the item's records, by sample (empty if not evaluated)."""


def _by_item(records: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    items: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        items.setdefault(str(r["qid"]), []).append(dict(r))
    for group in items.values():
        group.sort(key=lambda r: int(r.get("sample", 0)))
    return items


def item_value(records: Sequence[Mapping[str, Any]], by: By = "mean") -> float:
    """An item's correctness in one run (see the module docstring)."""
    if by == "sample0":
        first = next((r for r in records if int(r.get("sample", 0)) == 0), records[0])
        return float(correct(first["score"]))
    return sum(correct(r["score"]) for r in records) / len(records)


def disagreements(runs: Sequence[Run], by: By = "mean") -> list[Disagreement]:
    """Items on which the runs disagree, by task (in :func:`task_order`) then the first run's item order."""
    if by not in ("sample0", "mean"):
        raise ValueError(f"by must be 'sample0' or 'mean', got {by!r}")
    found = []
    for task in task_order(runs):
        per_run = [_by_item(r.records.get(task, [])) for r in runs]
        qids = list(dict.fromkeys(q for items in per_run for q in items))
        for qid in qids:
            groups = [items.get(qid, []) for items in per_run]
            values = [item_value(g, by) if g else None for g in groups]
            present = [v for v in values if v is not None]
            if len(present) >= 2 and len(set(present)) > 1:
                gold = next(g[0].get("gold") for g in groups if g)
                found.append(Disagreement(task, qid, gold, values, groups))
    return found


def common_items(runs: Sequence[Run], task: str) -> tuple[int, int]:
    """(items every run evaluated, items only some did) of one task."""
    sets = [{str(r["qid"]) for r in run.records.get(task, [])} for run in runs]
    sets = [s for s in sets if s] or [set()]
    every = set.intersection(*sets)
    return len(every), len(set.union(*sets) - every)


# ------------------------------------------------------------------------------------ trajectories
def budget_of(record: Mapping[str, Any] | None) -> PixelBudget:
    """The pixel budget a protocol record holds (every field), else its preset's, else released-eval."""
    if record is None:
        return budget_by_name("released-eval")
    try:
        fields: dict[str, Any] = {
            k: PixelRange(**v) if isinstance(v, Mapping) else v for k, v in dict(record["budget"]).items()
        }
        return PixelBudget(**fields)
    except (KeyError, TypeError, ValueError):
        return budget_by_name(str(record.get("budget_name", "released-eval")))


def mode_of(record: Mapping[str, Any] | None) -> PromptMode:
    mode = (record or {}).get("mode", "vcot")
    return "notool" if mode == "notool" else "vcot"


def trajectory_from_record(
    record: Mapping[str, Any],
    item: TaskItem | None = None,
    budget: PixelBudget | None = None,
    mode: PromptMode = "vcot",
) -> tuple[Trajectory, str | None]:
    """Rebuild a JSONL record's trajectory; returns it and a note when images are missing.

    With ``item`` and ``budget`` the question gets the item's images (as
    :meth:`Query.from_item` loads them) and every executed call is run again on them, which
    restores the returned images (see the module docstring).
    """
    note: str | None = None
    visuals: list[Part] = []
    context: VisualContext | None = None
    if item is not None and budget is not None:
        query = Query.from_item(item, budget, mode)
        if query.error is None:
            question = query.conversation.turns[-1]
            visuals = [p for p in question.parts if not isinstance(p, Text)]
            context = query.context
        else:
            note = f"the item's images could not be loaded: {query.error}"
    else:
        note = "images not shown (no data root given, or the item was not found in it)"
    conversation = Conversation()
    question_done = False
    last_model = ""
    for t in record.get("turns", []):
        kind, role, text = TurnKind(t["kind"]), t["role"], str(t.get("text", ""))
        if kind is TurnKind.PROMPT:
            parts: list[Part] = [Text(text)]
            if role == "user" and not question_done:
                parts = [*visuals, Text(text)]
                question_done = True
            conversation.turns.append(Turn(cast(Role, role), kind, parts))
        elif role == "assistant":
            conversation.add_model_turn(text, erroneous=kind is TurnKind.ERRONEOUS)
            last_model = text
        else:
            parts = [Text(text)]
            error = t.get("error")
            if context is not None and budget is not None:
                observation = execute_turn(last_model, context, budget)
                if (
                    observation is not None
                    and (observation.error is None) == (error is None)
                    and len(observation.images) == int(t.get("images", 0))
                ):
                    parts += [ImagePart(image=image, returned=True) for image in observation.images]
                    context.add(observation)
                else:
                    note = "a tool call did not give the recorded result again: later images are not shown"
                    context = None
            conversation.turns.append(Turn("user", TurnKind.OBSERVATION, parts, error=error))
    trajectory = Trajectory(
        conversation,
        qid=record.get("qid"),
        finish_reason=cast(FinishReason, record.get("finish_reason", "answer")),
        n_calls=int(record.get("n_calls", 0)),
        n_failed=int(record.get("n_failed", 0)),
        final_error=bool(record.get("final_error", False)),
        prompt_tokens=int(record.get("prompt_tokens", 0) or 0),
        generated_tokens=int(record.get("generated_tokens", 0) or 0),
        error=record.get("error"),
    )
    return trajectory, note


def load_items(
    tasks: Sequence[str], data_root: str | Path | None
) -> tuple[dict[str, dict[str, TaskItem]], list[str]]:
    """Each task's items by qid under ``data_root``, and the problems met (a task not found)."""
    items: dict[str, dict[str, TaskItem]] = {}
    problems: list[str] = []
    if data_root is None:
        return items, problems
    for task in tasks:
        try:
            loaded = task_named(task).load(data_root)
        except (FileNotFoundError, ValueError) as exc:
            problems.append(f"{task}: {exc}")
            continue
        items[task] = {item.qid: item for item in loaded.items}
    return items, problems


# ------------------------------------------------------------------------------------ the comparison
@dataclass
class Comparison:
    runs: list[Run]
    tasks: list[str]
    protocol: list[tuple[str, list[str], list[bool]]]
    disagreements: list[Disagreement]
    by: By = "mean"


def compare_runs(runs: Sequence[Run], by: By = "mean") -> Comparison:
    return Comparison(list(runs), task_order(runs), protocol_rows(runs), disagreements(runs, by), by)


def _score(report: TaskReport | None) -> str:
    return "—" if report is None else format_percent(report.score, report.score_ci)


def _best(comparison: Comparison, task: str) -> float | None:
    scores = [r.reports[task].score for r in comparison.runs if task in r.reports]
    return max(scores) if len(scores) > 1 else None


def _metric(comparison: Comparison, task: str) -> str:
    report = next(r.reports[task] for r in comparison.runs if task in r.reports)
    return report.metric


def _model(run: Run) -> str:
    if run.record is None:
        return "(no protocol recorded)"
    model = run.record.get("model") or {}
    sha = model.get("sha256")
    return f"{model.get('path', '?')} ({'sha256 ' + str(sha)[:12] if sha else 'no hash'})"


def _detail_cells(report: TaskReport) -> list[str]:
    finishes = ", ".join(f"{k} {v}" for k, v in sorted(report.finish.items()))
    return [
        str(report.n),
        str(report.samples),
        format_percent(report.score, report.score_ci),
        format_percent(report.rapr, report.rapr_ci, "%"),
        format_percent(report.tool_error_rate, report.tool_error_ci, "%"),
        f"{report.mean_ops:.2f}",
        f"{report.mean_turns:.2f}",
        finishes,
    ]


def category_rows(comparison: Comparison, task: str) -> list[tuple[str, list[str]]]:
    """(category, each run's "score (n items)") for a task whose runs report categories (V*, ...)."""
    per_run = [
        {str(c["category"]): c for c in (r.reports[task].categories if task in r.reports else [])}
        for r in comparison.runs
    ]
    names = sorted({name for cats in per_run for name in cats})
    rows = []
    for name in names:
        cells = []
        for cats in per_run:
            c = cats.get(name)
            cells.append("—" if c is None else f"{100 * float(c['score']):.1f} ({int(c['n'])})")
        rows.append((name, cells))
    return rows


DETAIL_HEAD = ["items", "samples", "score", "RaPR", "tool errors", "ops/item", "turns/item", "finishes"]


def _rule(by: By) -> str:
    value = "sample 0's correctness" if by == "sample0" else "the share of its samples that are correct"
    return (
        f"Same task and qid, evaluated by at least two runs, and a different value of {value} "
        f"(a sample is correct when its score is at least {CORRECT_AT:g})."
    )


def _prediction(records: Sequence[Mapping[str, Any]], by: By) -> tuple[str, str]:
    """(prediction of sample 0, its score; with several samples the correct share too)."""
    if not records:
        return "—", "not evaluated"
    first = records[0]
    prediction = first.get("prediction")
    shown = "(no answer)" if prediction in (None, "") else str(prediction)
    mark = "✔" if correct(first["score"]) else "✘"
    score = f"{mark} {float(first['score']):.2f}"
    if len(records) > 1:
        share = item_value(records, by="mean")
        score += f" (sample 0; {share:.0%} of {len(records)} correct)"
    return shown, score


def _md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------------------------ markdown
def render_markdown(comparison: Comparison, html_name: str = "compare.html") -> str:
    runs = comparison.runs
    out = [f"# Comparison of {len(runs)} evaluation runs", "", "## Runs", ""]
    out += ["| # | run | folder | protocol | model | protocol id |", "|---|---|---|---|---|---|"]
    for i, run in enumerate(runs, start=1):
        name = (run.record or {}).get("name", "(none)")
        out.append(
            f"| {i} | {_md_cell(run.label)} | {_md_cell(run.path)} | {_md_cell(name)} | "
            f"{_md_cell(_model(run))} | {run.protocol_id or '—'} |"
        )
    out += ["", "## Scores", "", "Score with its 95% interval in brackets; the best of a task in bold.", ""]
    out.append("| task | metric | " + " | ".join(_md_cell(r.label) for r in runs) + " |")
    out.append("|---|---|" + "---|" * len(runs))
    for task in comparison.tasks:
        best = _best(comparison, task)
        cells = []
        for run in runs:
            report = run.reports.get(task)
            text = _score(report)
            if report is not None and best is not None and report.score == best:
                text = f"**{text}**"
            cells.append(text)
        out.append(f"| {task} | {_metric(comparison, task)} | " + " | ".join(cells) + " |")
    for task in comparison.tasks:
        out += ["", f"### {task}", ""]
        out.append("| run | " + " | ".join(DETAIL_HEAD) + " |")
        out.append("|---|" + "---|" * len(DETAIL_HEAD))
        for run in runs:
            report = run.reports.get(task)
            cells = _detail_cells(report) if report is not None else ["not evaluated"] + [""] * 7
            out.append(f"| {_md_cell(run.label)} | " + " | ".join(_md_cell(c) for c in cells) + " |")
        categories = category_rows(comparison, task)
        if categories:
            out += ["", f"| {task} category | " + " | ".join(_md_cell(r.label) for r in runs) + " |"]
            out.append("|---|" + "---|" * len(runs))
            out += [f"| {_md_cell(name)} | " + " | ".join(cells) + " |" for name, cells in categories]
    out += ["", "## Protocol differences", ""]
    if all(r.record is None for r in runs):
        out.append("No run recorded its protocol.")
    elif not comparison.protocol:
        out.append("The runs' protocols are the same in every compared field.")
    else:
        out.append("Fields that differ from the first run's value are in bold.")
        out.append("")
        out.append("| field | " + " | ".join(_md_cell(r.label) for r in runs) + " |")
        out.append("|---|" + "---|" * len(runs))
        for key, values, differs in comparison.protocol:
            cells = [f"**{_md_cell(v)}**" if d else _md_cell(v) for v, d in zip(values, differs, strict=True)]
            out.append(f"| {key} | " + " | ".join(cells) + " |")
    missing = [r.label for r in runs if r.record is None]
    if missing:
        out += ["", f"No protocol recorded: {', '.join(missing)}."]
    out += ["", f"## Items on which the runs disagree ({len(comparison.disagreements)})", ""]
    out.append(_rule(comparison.by))
    out.append("")
    for task in comparison.tasks:
        every, some = common_items(runs, task)
        out.append(f"- {task}: {every} items evaluated by every run, {some} by only some")
    if comparison.disagreements:
        out += ["", "| task | qid | gold | " + " | ".join(_md_cell(r.label) for r in runs) + " |"]
        out.append("|---|---|---|" + "---|" * len(runs))
        for k, d in enumerate(comparison.disagreements, start=1):
            cells = []
            for records in d.records:
                prediction, score = _prediction(records, comparison.by)
                cells.append(f"{_md_cell(prediction)} ({_md_cell(score)})")
            qid = f"[{_md_cell(d.qid)}]({html_name}#item{k})"
            out.append(f"| {d.task} | {qid} | {_md_cell(_gold(d.gold))} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _gold(gold: Any) -> str:
    return " / ".join(str(g) for g in gold) if isinstance(gold, list) else str(gold)


# ------------------------------------------------------------------------------------ html
COMPARE_STYLESHEET = """
main.compare{max-width:1880px}
.box{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:12px 18px;margin-bottom:18px}
.box h2{margin-top:2px}.box h3{font-size:15px;margin:14px 0 4px}
table.grid{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
table.grid th,table.grid td{border:1px solid #d8dce3;padding:4px 9px;text-align:left;vertical-align:top}
table.grid th{background:#eef0f4;font-weight:600}
table.grid td.num{font-family:ui-monospace,"DejaVu Sans Mono",monospace;white-space:nowrap}
table.grid td.best{font-weight:700;background:#e3f6e8;color:#0d5c26}
table.grid td.diff{background:#ffe08a;font-weight:700;color:#5c3d00;box-shadow:inset 3px 0 0 #d18b00}
table.grid td.field{font-family:ui-monospace,"DejaVu Sans Mono",monospace}
table.grid tr.differs td.field{color:#8a5a00}
.note{color:#5f6673;font-size:13px;margin:4px 0}.warnnote{color:#8a5a00;font-size:13px;margin:4px 0}
.ok{color:#137333;font-weight:700}.no{color:#b3261e;font-weight:700}
.pred{font-family:ui-monospace,"DejaVu Sans Mono",monospace}
details.proto{margin:6px 0}details.proto summary{cursor:pointer;font-weight:600}
details.proto pre{background:#fafbfc;border:1px solid #e3e6eb;border-radius:4px;padding:6px}
.item{background:#eef0f4;border:1px solid #c9ced8;border-radius:8px;padding:10px 12px;margin-bottom:22px}
.item>h3{margin:2px 0 8px;font-size:16px}
.side{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:12px;align-items:start}
.side>.col>h4{margin:0 0 6px;font-size:14px}
.side section.trajectory{margin-bottom:0}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(head: Sequence[str], rows: Sequence[Sequence[tuple[str, str]]]) -> str:
    """A table of already-escaped cells ``(html, css class)``."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{css}">{cell}</td>' if css else f"<td>{cell}</td>" for cell, css in row)
        + "</tr>"
        for row in rows
    )
    return f'<table class="grid"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _html_runs(comparison: Comparison) -> str:
    rows = []
    for i, run in enumerate(comparison.runs, start=1):
        name = (run.record or {}).get("name", "(none)")
        rows.append(
            [
                (str(i), ""),
                (f"<b>{_e(run.label)}</b>", ""),
                (_e(run.path), "field"),
                (_e(name), ""),
                (_e(_model(run)), ""),
                (_e(run.protocol_id or "—"), "num"),
            ]
        )
    table = _table(["#", "run", "folder", "protocol", "model", "protocol id"], rows)
    notes = "".join(
        f'<p class="warnnote">{_e(r.label)}: no summary.json entry for {_e(", ".join(r.from_jsonl))}; '
        "summarised from the JSONL.</p>"
        for r in comparison.runs
        if r.from_jsonl
    )
    return f'<section class="box"><h2>Runs</h2>{table}{notes}</section>'


def _html_scores(comparison: Comparison) -> str:
    runs = comparison.runs
    rows = []
    for task in comparison.tasks:
        best = _best(comparison, task)
        row = [(f"<b>{_e(task)}</b>", ""), (_e(_metric(comparison, task)), "")]
        for run in runs:
            report = run.reports.get(task)
            css = "num best" if report is not None and best is not None and report.score == best else "num"
            row.append((_e(_score(report)), css))
        rows.append(row)
    parts = [
        '<section class="box"><h2>Scores</h2>',
        '<p class="note">Score with its 95% interval in brackets; the best of a task is green.</p>',
        _table(["task", "metric", *(_e(r.label) for r in runs)], rows),
    ]
    for task in comparison.tasks:
        best = _best(comparison, task)
        detail = []
        for run in runs:
            report = run.reports.get(task)
            if report is None:
                detail.append([(_e(run.label), ""), ("not evaluated", "")] + [("", "")] * 7)
                continue
            cells = [(_e(c), "num") for c in _detail_cells(report)]
            if best is not None and report.score == best:
                cells[2] = (cells[2][0], "num best")
            detail.append([(f"<b>{_e(run.label)}</b>", ""), *cells])
        parts.append(f"<h3>{_e(task)}</h3>" + _table(["run", *DETAIL_HEAD], detail))
        categories = category_rows(comparison, task)
        if categories:
            rows = [[(_e(name), ""), *((_e(c), "num") for c in cells)] for name, cells in categories]
            head = [f"{_e(task)} category: score (items)", *(_e(r.label) for r in runs)]
            parts.append(_table(head, rows))
    parts.append("</section>")
    return "".join(parts)


def _html_protocol(comparison: Comparison) -> str:
    runs = comparison.runs
    parts = ['<section class="box"><h2>Protocol differences</h2>']
    if all(r.record is None for r in runs):
        parts.append('<p class="warnnote">No run recorded its protocol.</p>')
    elif not comparison.protocol:
        parts.append('<p class="note">The runs\' protocols are the same in every compared field.</p>')
    else:
        parts.append(
            '<p class="note">Every compared field on which a run differs from the first; '
            "the values that differ from the first run's are highlighted.</p>"
        )
        rows = []
        for key, values, differs in comparison.protocol:
            row = [(_e(key), "field")]
            row += [(_e(v), "num diff" if d else "num") for v, d in zip(values, differs, strict=True)]
            rows.append(row)
        parts.append(_table(["field", *(_e(r.label) for r in runs)], rows))
    for run in runs:
        if run.record is None:
            parts.append(f'<p class="warnnote">{_e(run.label)}: no protocol recorded.</p>')
            continue
        try:
            text = describe(run.record)
        except (KeyError, TypeError, ValueError) as exc:
            text = f"(the record cannot be described: {type(exc).__name__}: {exc})"
        parts.append(
            f'<details class="proto"><summary>{_e(run.label)}: whole protocol</summary><pre>{_e(text)}</pre>'
            "</details>"
        )
    parts.append("</section>")
    return "".join(parts)


def _html_disagreements(comparison: Comparison, shown: int) -> str:
    runs, found = comparison.runs, comparison.disagreements
    parts = [
        f'<section class="box"><h2>Items on which the runs disagree ({len(found)})</h2>',
        f'<p class="note">{_e(_rule(comparison.by))}</p><ul class="note">',
    ]
    for task in comparison.tasks:
        every, some = common_items(runs, task)
        parts.append(f"<li>{_e(task)}: {every} items evaluated by every run, {some} by only some</li>")
    parts.append("</ul>")
    if not found:
        parts.append('<p class="note">None.</p></section>')
        return "".join(parts)
    if shown < len(found):
        parts.append(f'<p class="warnnote">Trajectories are drawn for the first {shown} only.</p>')
    rows = []
    for k, d in enumerate(found, start=1):
        qid = f'<a href="#item{k}">{_e(d.qid)}</a>' if k <= shown else _e(d.qid)
        row = [(_e(d.task), ""), (qid, "field"), (_e(_gold(d.gold)), "pred")]
        for i, records in enumerate(d.records):
            prediction, score = _prediction(records, comparison.by)
            css = "ok" if records and correct(records[0]["score"]) else "no"
            link = f' <a href="#item{k}-run{i + 1}">trajectory</a>' if records and k <= shown else ""
            row.append(
                (
                    f'<span class="pred">{_e(prediction)}</span> '
                    f'<span class="{css}">{_e(score)}</span>{link}',
                    "",
                )
            )
        rows.append(row)
    parts.append(_table(["task", "qid", "gold", *(_e(r.label) for r in runs)], rows))
    parts.append("</section>")
    return "".join(parts)


_SECTION_ID = re.compile(r'(<section class="trajectory") id="trajectory"')


def _html_trajectories(
    comparison: Comparison, shown: int, items: Mapping[str, Mapping[str, TaskItem]]
) -> str:
    runs = comparison.runs
    budgets = [budget_of(r.record) for r in runs]
    modes = [mode_of(r.record) for r in runs]
    parts = []
    for k, d in enumerate(comparison.disagreements[:shown], start=1):
        item = items.get(d.task, {}).get(d.qid)
        cols = []
        for i, (run, records) in enumerate(zip(runs, d.records, strict=True)):
            anchor = f"item{k}-run{i + 1}"
            if not records:
                cols.append(f'<div class="col" id="{anchor}"><h4>{_e(run.label)}</h4>not evaluated</div>')
                continue
            record = records[0]
            trajectory, note = trajectory_from_record(
                record, item, budgets[i] if item is not None else None, modes[i]
            )
            title = f"{run.label} · sample 0" + (f" of {len(records)}" if len(records) > 1 else "")
            section = render_trajectory_html(
                trajectory,
                title,
                _gold(record.get("gold", d.gold)),
                correct(record["score"]),
                budget=budgets[i],
            )
            section = _SECTION_ID.sub(r"\1", section, count=1)
            extra = f'<p class="warnnote">{_e(note)}</p>' if note else ""
            cols.append(f'<div class="col" id="{anchor}">{extra}{section}</div>')
        parts.append(
            f'<div class="item" id="item{k}">'
            f"<h3>{k}. {_e(d.task)} · {_e(d.qid)} · gold {_e(_gold(d.gold))}</h3>"
            f'<div class="side">{"".join(cols)}</div></div>'
        )
    if not parts:
        return ""
    return f"<h2>Trajectories of the items on which the runs disagree</h2>{''.join(parts)}"


def render_html(
    comparison: Comparison,
    items: Mapping[str, Mapping[str, TaskItem]] | None = None,
    max_items: int = DEFAULT_MAX_ITEMS,
    notes: Sequence[str] = (),
) -> str:
    """The whole page: self-contained (inline style, images as data URLs, no JavaScript)."""
    title = f"Comparison of {len(comparison.runs)} evaluation runs"
    shown = max(0, min(max_items, len(comparison.disagreements)))
    note_html = "".join(f'<p class="warnnote">{_e(n)}</p>' for n in notes)
    body = (
        f"<h1>{_e(title)}</h1>{note_html}{_html_runs(comparison)}{_html_scores(comparison)}"
        f"{_html_protocol(comparison)}{_html_disagreements(comparison, shown)}"
        f"{_html_trajectories(comparison, shown, items or {})}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{STYLESHEET}{COMPARE_STYLESHEET}</style></head>"
        f'<body><main class="compare">{body}</main></body></html>\n'
    )


def recorded_data_root(runs: Sequence[Run]) -> Path | None:
    """The first data root recorded in the runs' protocols that still exists, if any."""
    for run in runs:
        root = (run.record or {}).get("data_root")
        if root and Path(root).is_dir():
            return Path(root)
    return None


def write_comparison(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    data_root: str | Path | None = None,
    by: By = "mean",
    max_items: int = DEFAULT_MAX_ITEMS,
) -> tuple[Path, Path, Comparison]:
    """Compare ``run_dirs``; writes ``OUT/compare.html`` and ``OUT/compare.md`` (returned, with the data)."""
    runs = load_runs(run_dirs)
    data_root = data_root or recorded_data_root(runs)
    comparison = compare_runs(runs, by)
    needed = sorted({d.task for d in comparison.disagreements[: max(0, max_items)]})
    items, notes = load_items(needed, data_root)
    if data_root is None and comparison.disagreements:
        notes = ["No --data-root given: trajectories are shown without their images."]
    else:
        notes = [f"Items not loaded from {data_root}: {n}" for n in notes]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page, markdown = out / "compare.html", out / "compare.md"
    page.write_text(render_html(comparison, items, max_items, notes), encoding="utf-8")
    markdown.write_text(render_markdown(comparison, page.name), encoding="utf-8")
    return page, markdown, comparison


__all__ = [
    "CORRECT_AT",
    "Comparison",
    "Disagreement",
    "Run",
    "category_rows",
    "common_items",
    "compare_runs",
    "disagreements",
    "load_run",
    "load_runs",
    "protocol_rows",
    "render_html",
    "render_markdown",
    "trajectory_from_record",
    "write_comparison",
]
