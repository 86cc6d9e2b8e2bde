"""Four synthetic task families that make pixel-space reasoning necessary.

Each mirrors one of the paper's benchmarks; in each, *where to look* is coarse and visible in
the global view (a red cell or frame) while *what is there* is a fine pattern that only a crop
(or a selected frame) at native resolution shows:

- ``needle`` (V*-like): which pattern fills the red cell of a 4x4 lattice; multiple choice.
- ``count`` (TallyQA-like): how many striped squares lie inside the red cell; a number.
- ``read`` (InfoVQA-like): which number is drawn (in pattern strokes) in the red panel; free form.
- ``frames`` (MVBench-like): which pattern the red frame of a 16-frame clip shows; multiple choice.

Every family is deterministic in its seed and can re-render an item with another answer while
everything else stays the same (:meth:`Family.sample` with ``answer=``); the legibility check
(:mod:`pixelreasoner.tasks.legibility`) uses these counterfactuals. Difficulty knobs are the
dataclass fields; the defaults are what the tiny CPU model is trained on. ``contrast`` (default 0.5)
scales the patterns, and ``fade`` (default 8 px, the bicubic kernel's reach at 4x) blends each
pattern in smoothly, so that no pattern edge survives the global view (see
:mod:`pixelreasoner.tasks.drawing`); ``contrast=1, fade=0`` gives sharp black-on-white patterns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

from pixelreasoner.tasks.drawing import BALANCED, MARKER, WHITE, Canvas, Lattice, digit_mask, soften

LETTERS = "ABCDEFGH"
MC_SUFFIX = "Answer with the option's letter from the given choices directly."


@dataclass
class Sample:
    """One generated question: images (or a video's frames), answer, cue and extra facts.

    ``meta`` holds ``cell`` (row, col) or ``frame``, the answer's text for multiple choice, and
    a ``global_question`` / ``global_answer`` pair answerable from the global view alone (used
    for text-only traces).
    """

    question: str
    answer: str
    images: list[Image.Image]
    is_video: bool = False
    choices: list[str] | None = None
    cue_bbox: list[float] | None = None
    cue_frames: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Family(Protocol):
    @property
    def name(self) -> str: ...

    def sample(self, seed: int, answer: str | None = None) -> Sample: ...

    def answer_space(self, sample: Sample) -> list[str]:
        """Answers to render counterfactuals for (all of them, or a sample for large spaces)."""
        ...

    @property
    def chance(self) -> float:
        """Expected score of a uniform guess over the possible answers (answers are uniform)."""
        ...


def _choices_question(stem: str, choices: list[str]) -> str:
    options = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{stem}\n{options}\n{MC_SUFFIX}"


def _pick_target(rng: np.random.Generator, grid: int) -> tuple[int, int]:
    row, col = rng.integers(grid, size=2)
    return int(row), int(col)


Where = Literal["marker", "marker+text"]
"""How a question shows where to look: the red marker plus the position in words ("the red cell
is in row 2, column 4"; the default), or the red marker alone (``"marker"``: visual search, the
harder setting). Naming the place is a concession to CPU budgets: localising from pixels is the
slowest thing for a tiny model to learn (bench/RESULTS.md). Either way the answer itself is
only legible after zooming, and the model must still turn the place into a box or frame list."""


def _located(stem: str, where: Where, place: str) -> str:
    return stem if where == "marker" else f"{stem} ({place}.)"


def _cell_words(row: int, col: int, thing: str = "red cell") -> str:
    return f"the {thing} is in row {row + 1}, column {col + 1}"


def _lattice_meta(row: int, col: int, grid: int) -> dict[str, Any]:
    """Facts every lattice item keeps: its cell, and a question the global view answers alone."""
    return {
        "cell": [row, col],
        "grid": grid,
        "global_question": _row_question(grid),
        "global_answer": str(row + 1),
    }


def _row_question(grid: int) -> str:
    return f"In which row of the {grid}x{grid} grid is the red cell? Answer with a number from 1 to {grid}."


class _OnLattice:
    """A family drawn on a ``grid x grid`` lattice of ``cell`` px squares (both are knobs)."""

    grid: int
    cell: int

    @property
    def lattice(self) -> Lattice:
        return Lattice(self.grid, self.cell)


@dataclass(frozen=True)
class Needle(_OnLattice):
    """Which pattern fills the red cell. Knobs: lattice, pattern set, share of patterned distractors."""

    grid: int = Lattice.grid
    cell: int = Lattice.cell
    patterns: tuple[str, ...] = BALANCED
    distractor_share: float = 1.0
    shuffle_choices: bool = False
    contrast: float = 0.5
    fade: int = 8
    where: Where = "marker+text"
    name: str = "needle"

    def sample(self, seed: int, answer: str | None = None) -> Sample:
        rng = np.random.default_rng(seed)
        g = self.lattice.grid
        row, col = _pick_target(rng, g)
        cells = rng.integers(len(self.patterns), size=(g, g))
        filled = rng.random((g, g)) < self.distractor_share
        order = rng.permutation(len(self.patterns)) if self.shuffle_choices else np.arange(len(self.patterns))
        choices = [self.patterns[i] for i in order]
        if answer is not None:
            cells[row, col] = self.patterns.index(choices[LETTERS.index(answer)])
        filled[row, col] = True
        canvas = Canvas(self.lattice.size, self.lattice.size)
        for r in range(g):
            for c in range(g):
                paper = MARKER if (r, c) == (row, col) else WHITE
                pattern = self.patterns[cells[r, c]] if filled[r, c] else None
                canvas.fill(self.lattice.pixel_box(r, c), paper, pattern, fade=self.fade)
        target = self.patterns[cells[row, col]]
        letter = LETTERS[choices.index(target)]
        return Sample(
            question=_choices_question(
                _located("What pattern fills the red cell?", self.where, _cell_words(row, col)), choices
            ),
            answer=letter,
            images=[canvas.image(self.contrast)],
            choices=choices,
            cue_bbox=self.lattice.box(row, col),
            meta={**_lattice_meta(row, col, g), "answer_text": target},
        )

    def answer_space(self, sample: Sample) -> list[str]:
        return list(LETTERS[: len(self.patterns)])

    @property
    def chance(self) -> float:
        return 1 / len(self.patterns)


@dataclass(frozen=True)
class Count(_OnLattice):
    """How many squares of ``objects`` pattern lie in the red cell (on a ``background`` pattern).

    Knobs: lattice, square size (``object_px``: the default 56 px squares cover 2 x 2 merged
    vision tokens in a 2 x 2 arrangement of slots; 28 px, one merged token in 25 slots, is
    harder), the largest count.
    """

    grid: int = Lattice.grid
    cell: int = Lattice.cell
    object_px: int = 56
    max_count: int = 4
    background: str = "fine checkerboard"
    objects: str = "coarse checkerboard"
    contrast: float = 0.5
    fade: int = 8
    where: Where = "marker+text"
    name: str = "count"

    def sample(self, seed: int, answer: str | None = None) -> Sample:
        rng = np.random.default_rng(seed)
        g, cell = self.lattice.grid, self.lattice.cell
        slots_per_side = cell // self.object_px
        row, col = _pick_target(rng, g)
        counts = rng.integers(self.max_count + 1, size=(g, g))
        # One permutation of slots per cell, always drawn, so changing one count moves nothing else.
        orders = [rng.permutation(slots_per_side**2) for _ in range(g * g)]
        if answer is not None:
            counts[row, col] = int(answer)
        canvas = Canvas(self.lattice.size, self.lattice.size)
        for r in range(g):
            for c in range(g):
                paper = MARKER if (r, c) == (row, col) else WHITE
                box = self.lattice.pixel_box(r, c)
                canvas.fill(box, paper, self.background, fade=self.fade)
                for slot in orders[r * g + c][: counts[r, c]]:
                    sy, sx = divmod(int(slot), slots_per_side)
                    x0, y0 = box[0] + sx * self.object_px, box[1] + sy * self.object_px
                    square = (x0, y0, x0 + self.object_px, y0 + self.object_px)
                    canvas.fill(square, paper, self.objects, fade=self.fade // 2, set_tone=False)
        return Sample(
            question=_located(
                f"How many squares of {self.objects} are inside the red cell?",
                self.where,
                _cell_words(row, col),
            )
            + " Answer with a number.",
            answer=str(int(counts[row, col])),
            images=[canvas.image(self.contrast)],
            cue_bbox=self.lattice.box(row, col),
            meta=_lattice_meta(row, col, g),
        )

    def answer_space(self, sample: Sample) -> list[str]:
        return [str(n) for n in range(self.max_count + 1)]

    @property
    def chance(self) -> float:
        return 1 / (self.max_count + 1)


@dataclass(frozen=True)
class Read(_OnLattice):
    """Which number is drawn in the red panel. Digits are drawn with ``stroke`` pattern on a
    ``background`` pattern (same grey when downscaled); knobs: number of digits, glyph scale
    (px per pixel of the 5x7 font). The default, one digit at scale 12 (60 x 84 px), is what the
    tiny CPU model learns; two digits at scale 6 are much harder for it."""

    grid: int = Lattice.grid
    cell: int = Lattice.cell
    digits: int = 1
    scale: int = 12
    stroke: str = "coarse checkerboard"
    background: str = "fine checkerboard"
    contrast: float = 0.5
    fade: int = 8
    where: Where = "marker+text"
    name: str = "read"

    def _number_range(self) -> tuple[int, int]:
        low = 10 ** (self.digits - 1) if self.digits > 1 else 0
        return low, 10**self.digits

    def sample(self, seed: int, answer: str | None = None) -> Sample:
        rng = np.random.default_rng(seed)
        g = self.lattice.grid
        row, col = _pick_target(rng, g)
        low, high = self._number_range()
        numbers = rng.integers(low, high, size=(g, g))
        if answer is not None:
            numbers[row, col] = int(answer)
        canvas = Canvas(self.lattice.size, self.lattice.size)
        for r in range(g):
            for c in range(g):
                paper = MARKER if (r, c) == (row, col) else WHITE
                x0, y0, x1, y1 = self.lattice.pixel_box(r, c)
                canvas.fill((x0, y0, x1, y1), paper, self.background, fade=self.fade)
                glyph = soften(digit_mask(str(int(numbers[r, c])), self.scale), self.fade // 4)
                gh, gw = glyph.shape
                gx, gy = x0 + (x1 - x0 - gw) // 2, y0 + (y1 - y0 - gh) // 2
                canvas.fill((gx, gy, gx + gw, gy + gh), paper, self.stroke, where=glyph, set_tone=False)
        return Sample(
            question=_located(
                "What number is written in the red panel?", self.where, _cell_words(row, col, "red panel")
            )
            + " Answer with the number.",
            answer=str(int(numbers[row, col])),
            images=[canvas.image(self.contrast)],
            cue_bbox=self.lattice.box(row, col),
            meta=_lattice_meta(row, col, g),
        )

    @property
    def chance(self) -> float:
        """A wrong guess of the same length is at least half wrong: ANLS 0 (threshold 0.5)."""
        low, high = self._number_range()
        return 1 / (high - low)

    def answer_space(self, sample: Sample) -> list[str]:
        low, high = self._number_range()
        if high - low <= 10:
            return [str(n) for n in range(low, high)]
        # Counterfactuals for a large answer space: the true answer and 9 others, fixed per item.
        rng = np.random.default_rng(int(sample.answer))
        others = [
            n for n in rng.choice(np.arange(low, high), size=10, replace=False) if str(n) != sample.answer
        ]
        return [sample.answer, *[str(n) for n in others[:9]]]


@dataclass(frozen=True)
class Frames:
    """Which pattern the red frame of a clip shows. Knobs: frame count, frame size, pattern set."""

    n_frames: int = 16
    size: int = 112
    patterns: tuple[str, ...] = BALANCED
    contrast: float = 0.5
    fade: int = 8
    where: Where = "marker+text"
    name: str = "frames"

    def sample(self, seed: int, answer: str | None = None) -> Sample:
        rng = np.random.default_rng(seed)
        marked = int(rng.integers(self.n_frames))
        kinds = rng.integers(len(self.patterns), size=self.n_frames)
        choices = list(self.patterns)
        if answer is not None:
            kinds[marked] = LETTERS.index(answer)
        frames = []
        for k in range(self.n_frames):
            canvas = Canvas(self.size, self.size)
            paper = MARKER if k == marked else WHITE
            canvas.fill((0, 0, self.size, self.size), paper, self.patterns[kinds[k]], fade=self.fade)
            frames.append(canvas.image(self.contrast))
        return Sample(
            question=_choices_question(
                _located(
                    "What pattern is shown in the frame with the red background?",
                    self.where,
                    f"it is frame {marked + 1}",
                ),
                choices,
            ),
            answer=LETTERS[int(kinds[marked])],
            images=frames,
            is_video=True,
            choices=choices,
            cue_frames=[marked + 1],
            meta={
                "frame": marked + 1,
                "answer_text": self.patterns[kinds[marked]],
                "global_question": "Which frame has a red background? Answer with the frame number.",
                "global_answer": str(marked + 1),
            },
        )

    def answer_space(self, sample: Sample) -> list[str]:
        return list(LETTERS[: len(self.patterns)])

    @property
    def chance(self) -> float:
        return 1 / len(self.patterns)


FAMILIES: dict[str, type[Needle] | type[Count] | type[Read] | type[Frames]] = {
    "needle": Needle,
    "count": Count,
    "read": Read,
    "frames": Frames,
}


def parse_knobs(name: str, pairs: Sequence[str], skip_unknown: bool = False) -> dict[str, Any]:
    """``KEY=VALUE`` difficulty knobs of family ``name``, typed like the field's default.

    Booleans are ``true``/``false``, tuples comma lists. An unknown key is an error unless
    ``skip_unknown`` (for knobs meant for several families at once); a bad value always is.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; choose from {', '.join(FAMILIES)}")
    defaults = {f.name: getattr(FAMILIES[name](), f.name) for f in fields(FAMILIES[name]) if f.name != "name"}
    knobs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in defaults:
            if sep and skip_unknown:
                continue
            raise ValueError(
                f"bad knob {pair!r} for {name}; knobs are KEY=VALUE with KEY in: {', '.join(defaults)}"
            )
        default = defaults[key]
        try:
            if isinstance(default, bool):
                knobs[key] = {"true": True, "false": False}[value.lower()]
            elif isinstance(default, tuple):
                knobs[key] = tuple(v.strip() for v in value.split(","))
            else:
                knobs[key] = type(default)(value)
        except (ValueError, KeyError):
            raise ValueError(
                f"knob {key} of {name} needs a {type(default).__name__}, got {value!r}"
            ) from None
    return knobs


def make_family(name: str, **knobs: Any) -> Family:
    """A family by name with difficulty knobs overridden, e.g. ``make_family("read", digits=3)``."""
    try:
        cls = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown task family {name!r}; choose from {', '.join(FAMILIES)}") from None
    try:
        return cls(**knobs)
    except TypeError as exc:
        raise ValueError(f"bad knob for family {name!r}: {exc}") from None
