"""The quickstart's report: the learning-trap figure, the table, the targets, and verdicts.

Everything shown is read from the run's own files: each evaluation's ``eval/{model}/DONE.json``
(held-out accuracy, greedy and sampled, split by path) and each RL run's ``metrics.jsonl`` (per
phase: RaPR, accuracy by path, bonus, penalty). Example trajectories are re-rolled greedily from
the first curiosity run. Writes ``report.md``, ``curves.png`` and a self-contained ``report.html``.

The verdicts are computed from the numbers they state, so the text cannot claim what the run did
not show: a bonus that never fired, an arm that never left its warm start, or a trap that did not
spring are each named as such.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from pixelreasoner.data.formats import read_items
from pixelreasoner.eval.harness import Interval, t_interval
from pixelreasoner.rl.reward import RewardConfig
from pixelreasoner.train.metrics import read_metrics
from pixelreasoner.viewer import STYLESHEET

if TYPE_CHECKING:
    from pixelreasoner.quickstart import QuickstartConfig

TRAP_RAPR = 0.1
"""Without curiosity, RaPR at the end of RL must fall below this (the trap sprang)."""
KEPT_RAPR = 0.25
"""With curiosity, RaPR must stay at or above this in every phase."""
MARGIN = 0.10
"""The curiosity arm's held-out accuracy must beat the other arm's by this much."""
GAIN = 0.20
"""RL must improve on its warm start's held-out accuracy by this much."""
PAPER = RewardConfig()
"""The paper's bonus constants (α, H), for the verdicts."""
FEW = 20
"""Fewer sampled trajectories than this on a path: too few to compare the paths."""


# ---------------------------------------------------------------------------------- reading
@dataclass
class ModelScores:
    """One model's held-out numbers (averaged over its families), greedy and sampled."""

    greedy: float
    greedy_rapr: float
    sampled: float
    sampled_rapr: float
    tool: float
    """What the sampled trajectories that called an operation earned (NaN: none did): their
    accuracy under RL's reward, which counts an answer after an unrepaired failed operation as 0."""
    tool_n: int
    direct: float
    direct_n: int


def model_scores(summary: Mapping[str, Any]) -> ModelScores:
    """An ``eval/{model}/DONE.json`` reduced to one number per quantity (family mean; paths pooled)."""

    def mean(decoding: str, key: str) -> float:
        values = [float(r[key]) for r in summary[decoding].values() if r["n"]]
        return sum(values) / len(values) if values else math.nan

    def path(name: str) -> tuple[float, int]:
        reports = [r for r in summary["sampled"].values() if r["n"]]
        n = sum(int(r["paths"][name]["n"]) for r in reports)
        correct = sum(
            float(r["paths"][name]["earned"]) * int(r["paths"][name]["n"])
            for r in reports
            if r["paths"][name]["n"]
        )
        return (correct / n if n else math.nan), n

    tool, tool_n = path("tool")
    direct, direct_n = path("direct")
    return ModelScores(
        greedy=mean("greedy", "score"),
        greedy_rapr=mean("greedy", "rapr"),
        sampled=mean("sampled", "score"),
        sampled_rapr=mean("sampled", "rapr"),
        tool=tool,
        tool_n=tool_n,
        direct=direct,
        direct_n=direct_n,
    )


@dataclass
class ArmRuns:
    """Every seed's run of one arm: its per-phase metrics and its held-out scores."""

    arm: str
    label: str
    ablation: bool
    seeds: list[int] = field(default_factory=list)
    phases: list[list[dict[str, float]]] = field(default_factory=list)
    scores: list[ModelScores] = field(default_factory=list)

    def series(self, key: str) -> list[list[float]]:
        """``train/{key}`` per phase, one list per seed (NaN where a phase lacks it)."""
        return [[float(r.get(f"train/{key}", math.nan)) for r in run] for run in self.phases]

    def interval(self, key: str) -> tuple[float, Interval]:
        return t_interval([getattr(s, key) for s in self.scores])


def _load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_arms(out: Path, config: QuickstartConfig) -> list[ArmRuns]:
    """The finished RL runs of each configured arm (runs not yet evaluated are left out)."""
    from pixelreasoner.quickstart import ARMS, rl_runs

    arms = {arm: ArmRuns(arm, ARMS[arm].label, ARMS[arm].ablation) for arm in config.arms}
    for name, arm, seed in rl_runs(config):
        evaluation = _load_json(out / "eval" / name / "DONE.json")
        metrics = out / name / "metrics.jsonl"
        if evaluation is None or not metrics.is_file():
            continue
        arms[arm].seeds.append(seed)
        arms[arm].phases.append(read_metrics(metrics))
        arms[arm].scores.append(model_scores(evaluation))
    return [a for a in arms.values() if a.seeds]


# ---------------------------------------------------------------------------------- text
def pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def pct_interval(mean: float, interval: Interval) -> str:
    text = pct(mean)
    return text + (f" [{pct(interval[0])}, {pct(interval[1])}]" if interval is not None else "")


def results_table(warm: ModelScores, arms: Sequence[ArmRuns]) -> str:
    """Held-out accuracy per model; RL arms as the mean over seeds with a 95% t-interval."""
    head = (
        "| model | seeds | greedy accuracy | greedy RaPR | sampled accuracy | sampled RaPR "
        "| zoomed: earned (share) | direct: earned (share) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]

    def row(label: str, seeds: str, scores: Sequence[ModelScores], interval: Any) -> str:
        mean = lambda key: sum(getattr(s, key) for s in scores) / len(scores)  # noqa: E731
        tool_n, direct_n = sum(s.tool_n for s in scores), sum(s.direct_n for s in scores)
        total = max(tool_n + direct_n, 1)
        tool = sum(s.tool * s.tool_n for s in scores if s.tool_n) / tool_n if tool_n else math.nan
        direct = sum(s.direct * s.direct_n for s in scores if s.direct_n) / direct_n if direct_n else math.nan
        return (
            f"| {label} | {seeds} | {interval('greedy')} | {pct(mean('greedy_rapr'))}% "
            f"| {interval('sampled')} | {pct(mean('sampled_rapr'))}% "
            f"| {pct(tool)} ({100 * tool_n / total:.0f}%) | {pct(direct)} ({100 * direct_n / total:.0f}%) |"
        )

    lines.append(row("SFT warm start", "-", [warm], lambda key: pct(getattr(warm, key))))
    for arm in arms:
        lines.append(
            row(
                arm.label,
                ", ".join(map(str, arm.seeds)),
                arm.scores,
                lambda key, arm=arm: pct_interval(*arm.interval(key)),
            )
        )
    return "\n".join(lines)


def family_table(summary: Mapping[str, Any]) -> str:
    """The warm start's probe per family: what each path earned, sampled, and the RaPR."""
    lines = [
        "| family | zoomed: earned (trajectories) | direct: earned (trajectories) | sampled RaPR |",
        "|---|---|---|---|",
    ]
    for family, report in summary["sampled"].items():
        cells = []
        for path in ("tool", "direct"):
            numbers = report["paths"][path]
            cells.append(f"{pct(numbers['earned'] if numbers['n'] else math.nan)} ({numbers['n']})")
        lines.append(f"| {family} | {cells[0]} | {cells[1]} | {pct(report['rapr'])}% |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Check:
    target: str
    ok: bool | None
    numbers: str


def _by_arm(arms: Sequence[ArmRuns], name: str) -> ArmRuns | None:
    return next((a for a in arms if a.arm == name), None)


def check_targets(warm: ModelScores, arms: Sequence[ArmRuns]) -> list[Check]:
    """The issue's four targets, each met / not met with the numbers behind it (None: no run)."""
    plain, curious = _by_arm(arms, "plain"), _by_arm(arms, "curiosity")
    checks = []
    target = f"without curiosity, RaPR falls below {TRAP_RAPR} by the end of RL (every seed)"
    if plain:
        last = [run[-1] for run in plain.series("rapr")]
        numbers = "final-phase RaPR " + ", ".join(f"{v:.2f}" for v in last)
        checks.append(Check(target, all(v < TRAP_RAPR for v in last), numbers))
    else:
        checks.append(Check(target, None, "no run"))
    target = f"with curiosity, RaPR stays >= {KEPT_RAPR} in every phase (every seed)"
    if curious:
        lowest = [min(run) for run in curious.series("rapr")]
        numbers = "lowest phase RaPR " + ", ".join(f"{v:.2f}" for v in lowest)
        checks.append(Check(target, all(v >= KEPT_RAPR for v in lowest), numbers))
    else:
        checks.append(Check(target, None, "no run"))
    target = (
        f"curiosity's held-out greedy accuracy beats the other arm's by >= {100 * MARGIN:.0f} points, "
        "intervals apart"
    )
    if plain and curious:
        (a, ia), (b, ib) = curious.interval("greedy"), plain.interval("greedy")
        apart = ia is not None and ib is not None and (ia[0] > ib[1])
        numbers = f"{pct_interval(a, ia)} vs {pct_interval(b, ib)}"
        if ia is None or ib is None:
            numbers += " (one seed: no interval over seeds)"
        checks.append(Check(target, a - b >= MARGIN and apart, numbers))
    else:
        checks.append(Check(target, None, "no run"))
    target = (
        f"RL with curiosity improves held-out greedy accuracy on its warm start by >= {100 * GAIN:.0f} points"
    )
    if curious:
        a, ia = curious.interval("greedy")
        numbers = f"{pct(warm.greedy)} -> {pct_interval(a, ia)}"
        checks.append(Check(target, a - warm.greedy >= GAIN, numbers))
    else:
        checks.append(Check(target, None, "no run"))
    return checks


# ---------------------------------------------------------------------------------- verdicts
def _mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _seed_means(series: list[list[float]], phases: slice) -> float:
    return _mean([_mean(run[phases]) for run in series])


def verdicts(warm: ModelScores, arms: Sequence[ArmRuns]) -> list[str]:
    """What happened, in sentences derived from the numbers they quote."""
    lines = []
    gap = warm.direct - warm.tool
    if math.isnan(gap):
        path = "zoomed" if math.isnan(warm.direct) else "answered directly"
        lines.append(
            f"Warm start: every sampled held-out trajectory {path}, so the two paths cannot be"
            " compared; the experiment's premise (competing paths) is not there."
        )
    else:
        if min(warm.tool_n, warm.direct_n) < FEW:
            premise = f"one path has fewer than {FEW} trajectories, too few to say which pays more"
        elif gap > 0:
            ceiling = PAPER.alpha * PAPER.target_rapr
            premise = (
                "the paper's premise holds: answering directly pays more than the nascent pixel-space skill"
                + (
                    f", by more than the most the paper's bonus pays a zooming rollout (α·H ="
                    f" {100 * ceiling:.0f} points), so the bonus alone cannot make zooming pay"
                    if gap > ceiling
                    else f", by less than the most the paper's bonus pays a zooming rollout (α·H ="
                    f" {100 * ceiling:.0f} points)"
                )
            )
        elif gap < 0:
            premise = (
                "the paper's premise does not hold: zooming already pays more than answering directly,"
                " so plain RL has no reason to abandon it"
            )
        else:
            premise = "neither path pays more"
        lines.append(
            f"Warm start (sampled, held-out): zooming earned {pct(warm.tool)}% on {warm.tool_n} trajectories,"
            f" answering directly {pct(warm.direct)}% on {warm.direct_n} (earned: right, and no failed"
            f" operation left unrepaired, as RL's reward counts it); RaPR {pct(warm.sampled_rapr)}%."
            f" Direct minus zoomed: {100 * gap:+.1f} points; {premise}."
        )
    for arm in arms:
        rapr = arm.series("rapr")
        first, last = _seed_means(rapr, slice(0, 1)), _seed_means(rapr, slice(-1, None))
        lowest = min(min(run) for run in rapr)
        tool_end = _seed_means(arm.series("accuracy_tool"), slice(-3, None))
        direct_end = _seed_means(arm.series("accuracy_direct"), slice(-3, None))
        bonus = arm.series("curiosity")
        fired = sum(v > 0 for run in bonus for v in run)
        phases = sum(len(run) for run in bonus)
        movement = (
            "fell"
            if last < first - 0.1
            else "rose"
            if last > first + 0.1
            else "stayed within 0.1 of its start"
        )
        line = (
            f"{arm.label} ({len(arm.seeds)} seed{'s' if len(arm.seeds) > 1 else ''}): RaPR {first:.2f} in the"
            f" first phase -> {last:.2f} in the last (lowest {lowest:.2f}); it {movement}. Over the last 3"
            f" phases, zoomed rollouts were right {pct(tool_end)}% and direct ones {pct(direct_end)}%."
        )
        if arm.arm != "plain":
            if fired:
                line += (
                    f" The bonus was paid in {fired} of {phases} phases"
                    f" (mean {_mean([v for run in bonus for v in run]):.3f} per rollout)."
                )
            else:
                line += (
                    " The bonus was never paid: in every group either at least H of the rollouts zoomed"
                    " or none did (the paper's bonus pays only the zooming rollouts of groups below H)"
                    + (
                        "; once no rollout zoomed there was nobody to pay."
                        if lowest == 0
                        else ", so this arm optimised the same reward as RL without curiosity."
                    )
                )
        gap_end = direct_end - tool_end
        ceiling = PAPER.alpha * PAPER.target_rapr
        if last < first - 0.1 and gap_end > ceiling:
            line += (
                f" Direct answers out-earned zooms by {100 * gap_end:.0f} points at the end, more than the"
                f" most the paper's bonus pays a zooming rollout ({100 * ceiling:.0f})."
            )
        line += _collapse(rapr)
        lines.append(line)
    plain, curious = _by_arm(arms, "plain"), _by_arm(arms, "curiosity")
    if plain and curious:
        same = plain.series("reward") == curious.series("reward") and plain.seeds == curious.seeds
        if same:
            lines.append(
                "RL with and without curiosity computed identical rewards in every phase: with the same"
                " seeds they are the same runs."
            )
        (a, _), (b, _) = curious.interval("greedy"), plain.interval("greedy")
        lines.append(
            f"Held-out greedy accuracy: warm start {pct(warm.greedy)}%, with curiosity {pct(a)}%, without"
            f" {pct(b)}% ({100 * (a - b):+.1f} points for curiosity)."
        )
    return lines


def _collapse(rapr: list[list[float]]) -> str:
    """A sentence on total collapse: phases in which no rollout zoomed, and whether zooming came back."""
    collapsed = [(k, run.index(0.0)) for k, run in enumerate(rapr) if 0.0 in run]
    if not collapsed:
        return ""
    back = [k for k, at in collapsed if max(rapr[k][at:]) > TRAP_RAPR]
    where = ", ".join(f"phase {at + 1}" for _, at in collapsed)
    return (
        f" No rollout zoomed at all from {where} in {len(collapsed)} of {len(rapr)} seeds (total collapse);"
        f" RaPR came back above {TRAP_RAPR} afterwards in {len(back)} of them."
    )


def rl_signal(out: Path, names: Sequence[str]) -> list[str]:
    """One line per RL run: how much it trained on, and why when it did not."""
    lines = []
    for name in names:
        path = out / name / "metrics.jsonl"
        if not path.is_file():
            continue
        records = read_metrics(path)
        trained = sum(int(r.get("train/trained_samples", 0)) for r in records)
        uniform = sum(r.get("train/uniform_group_ratio", 0.0) for r in records) / max(len(records), 1)
        line = (
            f"{name}: trained on {trained} samples in {len(records)} phases; {uniform:.0%} of groups uniform"
        )
        if trained == 0:
            line += (
                " — every group's rollouts scored alike (all right or all wrong), so the group-relative"
                " advantage was zero and this model is its warm start unchanged"
            )
        lines.append(line)
    return lines


# ---------------------------------------------------------------------------------- figure
_PANELS = (
    ("rapr", "RaPR (share of rollouts that zoom)"),
    ("accuracy", "accuracy of sampled rollouts"),
    ("accuracy_tool", "accuracy: zoomed (solid) / direct (dashed)"),
    ("curiosity", "bonus (solid) / penalty (dashed) per rollout"),
)
_SECOND = {"accuracy_tool": "accuracy_direct", "curiosity": "penalty"}


def curves_png(arms: Sequence[ArmRuns]) -> bytes | None:
    """The learning-trap figure: per RL phase, each arm's mean over seeds and its min-max band."""
    if not arms:
        return None
    figure, axes = plt.subplots(1, len(_PANELS), figsize=(16, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, arm in enumerate(arms):
        colour = colours[k % len(colours)]
        for axis, (key, _) in zip(axes, _PANELS, strict=True):
            for name, style in ((key, "-"), (_SECOND.get(key), "--")):
                if name is None:
                    continue
                series = arm.series(name)
                length = min(len(run) for run in series)
                steps = list(range(1, length + 1))
                columns = [[run[i] for run in series if not math.isnan(run[i])] for i in range(length)]
                mean = [sum(c) / len(c) if c else math.nan for c in columns]
                label = f"{arm.label} (n={len(series)})" if style == "-" else None
                axis.plot(steps, mean, style, color=colour, label=label, marker="o", markersize=3)
                if len(series) > 1:
                    low = [min(c) if c else math.nan for c in columns]
                    high = [max(c) if c else math.nan for c in columns]
                    axis.fill_between(steps, low, high, color=colour, alpha=0.15)
    for axis, (key, title) in zip(axes, _PANELS, strict=True):
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("RL phase")
        axis.grid(alpha=0.3)
        if key != "curiosity":
            axis.set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------- the page
def _examples(out: Path, model: str, max_new_tokens: int, count: int = 3) -> str:
    """A few held-out trajectories of ``model``, greedy, drawn by the viewer."""
    from dataclasses import replace

    from pixelreasoner.eval.tasks import task_for
    from pixelreasoner.models.loading import load_model
    from pixelreasoner.rollout.backend import GREEDY
    from pixelreasoner.rollout.engine import RolloutEngine, rollout_items
    from pixelreasoner.rollout.hf import TransformersBackend
    from pixelreasoner.viewer import render_trajectory_html
    from pixelreasoner.vision.budget import tiny

    model_dir = out / model / "final"
    if not model_dir.is_dir():
        return f"<p>(no {html.escape(model)} model to show)</p>"
    budget = tiny()
    network, processor = load_model(model_dir, dtype=torch.float32)
    items = read_items(out / "tasks" / "heldout").items[:count]
    engine = RolloutEngine(
        TransformersBackend(network, processor, budget),
        budget,
        first=replace(GREEDY, max_new_tokens=max_new_tokens),
    )
    sections = []
    for trajectory, item in zip(rollout_items(engine, items), items, strict=True):
        correct = task_for(item).score(trajectory, item) > 0.5
        sections.append(
            render_trajectory_html(
                trajectory, title=item.qid, gold=str(item.answer), correct=correct, budget=budget
            )
        )
    return "\n".join(sections)


def _word(ok: bool | None) -> str:
    return "met" if ok else "NOT met" if ok is not None else "not measured"


def _setup(config: QuickstartConfig) -> str:
    knobs = "; ".join(
        f"{family}: " + ", ".join(f"{k}={v}" for k, v in config.knobs.get(family, {}).items())
        for family in config.families
    )
    return (
        f"Task {knobs}; {config.train_per_family} training and {config.heldout_per_family} held-out items"
        f" per family. Warm start: {100 * config.direct:.0f}% of traces answer directly, the rest zoom once;"
        f" {config.sft_steps} SFT steps x {config.sft_batch}. RL: {config.rl_steps} phases of"
        f" {config.rl_queries} queries x {config.rl_group} rollouts, lr {config.rl_lr:g}; seeds"
        f" {config.seed}..{config.seed + config.seeds - 1}. Held-out evaluation: greedy, and"
        f" {config.probe_samples} samples per item with RL's sampling (temperature 1 then 0.9, top-p 0.95,"
        " top-k 40), whose trajectories are split into those that zoomed and those that answered directly."
        " Intervals are 95% Student-t intervals over seeds (none with one seed)."
    )


def _markdown_table_html(table: str) -> str:
    lines = [line for line in table.splitlines() if not line.startswith("|---")]
    cells = [[html.escape(c.strip()) for c in line.strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{c}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out: str | Path, config: QuickstartConfig) -> Path:
    from pixelreasoner.quickstart import rl_runs

    folder = Path(out)
    warm_summary = _load_json(folder / "eval" / "sft" / "DONE.json")
    if warm_summary is None:
        raise FileNotFoundError(f"{folder / 'eval' / 'sft'}: the warm start was not evaluated")
    warm = model_scores(warm_summary)
    arms = read_arms(folder, config)
    table = results_table(warm, arms)
    families = family_table(warm_summary)
    checks = check_targets(warm, arms)
    lines = verdicts(warm, arms)
    names = [name for name, _, _ in rl_runs(config)]
    signal = rl_signal(folder, names)
    png = curves_png(arms)
    stages = {}
    for stage in ("tasks", "traces", "sft", *names, "eval/sft", *(f"eval/{n}" for n in names)):
        marker = _load_json(folder / stage / "DONE.json")
        if marker is not None:
            stages[stage] = marker.get("seconds", 0)
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
    setup = _setup(config)
    targets = "\n".join(f"- {_word(c.ok)}: {c.target} — measured {c.numbers}" for c in checks)
    markdown = (
        "# Pixel Reasoner quickstart: the learning trap\n\n"
        f"{setup}\n\n{table}\n\nThe warm start by family (sampled, held-out):\n\n{families}\n\n"
        f"## Targets\n\n{targets}\n\n## What happened\n\n"
        + "\n".join(f"- {line}" for line in lines)
        + "\n\n## What RL trained on\n\n"
        + "\n".join(f"- {line}" for line in signal)
        + "\n\nThe figure (`curves.png`): per RL phase, each arm's mean over seeds, with the band from"
        " the lowest to the highest seed.\n" + f"\n## Stage times\n\n{timing}\n"
    )
    (folder / "report.md").write_text(markdown, encoding="utf-8")
    image = ""
    if png:
        (folder / "curves.png").write_bytes(png)
        image = f'<img alt="RL curves" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    rows = "".join(
        f"<li class={'ok' if c.ok else 'bad'}><b>{_word(c.ok)}</b>: {html.escape(c.target)} — "
        f"measured {html.escape(c.numbers)}</li>"
        for c in checks
    )
    example_model = next(
        (n for n, arm, _ in rl_runs(config) if arm == "curiosity"), names[0] if names else "sft"
    )
    examples = _examples(folder, example_model, config.max_turn_tokens)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Pixel Reasoner quickstart</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:24px auto;padding:0 16px;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}li.ok{{color:#176a1d}}li.bad{{color:#a3161b}}img{{max-width:100%}}</style>
<style>{STYLESHEET}</style></head>
<body><h1>Pixel Reasoner quickstart: the learning trap</h1>
<p>{html.escape(setup)}</p>
{_markdown_table_html(table)}
<p>The warm start by family (sampled, held-out):</p>{_markdown_table_html(families)}
<h2>The learning trap: RL phases, both arms</h2>{image}
<p>Each arm's mean over seeds, with the band from the lowest to the highest seed.</p>
<h2>Targets</h2><ul>{rows}</ul>
<h2>What happened</h2><ul>{"".join(f"<li>{html.escape(line)}</li>" for line in lines)}</ul>
<h2>What RL trained on</h2><ul>{"".join(f"<li>{html.escape(line)}</li>" for line in signal)}</ul>
<h2>Stage times</h2><p>{html.escape(timing)}</p>
<h2>Example trajectories ({html.escape(example_model)}, greedy)</h2>{examples}
</body></html>"""
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
