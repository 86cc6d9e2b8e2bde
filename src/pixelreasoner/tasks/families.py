"""Four synthetic task families that make pixel-space reasoning necessary.

Each mirrors one of the paper's benchmarks; in each, *where to look* is coarse and visible in
the global view (a red cell or frame) while *what is there* is a fine pattern that only a crop
(or a selected frame) at native resolution shows:

- ``needle`` (V*-like): which pattern fills the red cell of a 4x4 lattice; multiple choice.
- ``count`` (TallyQA-like): how many patterned squares each tile of the red cell holds; a number.
- ``read`` (InfoVQA-like): which digit is printed (in pattern strokes) in the red panel; free form.
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
TILE = 28
"""Side of one merged vision token (14 px patches, merged 2 x 2): the unit of the tiled layouts."""
MC_SUFFIX = "Answer with the option's letter from the given choices directly."


@dataclass
class Sample:
    """One generated question: images (or a video's frames), answer, cue and extra facts.

    ``meta`` holds ``cell`` (row, col) or ``frame``, the answer's text for multiple choice (or a
    ``finding``: what the zoomed view shows, in words, for the trace templates), and
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


def _favoured(seed: int, share: float, answer: str | None) -> str | None:
    """The answer to render: ``answer`` when given, else option A for a ``share`` of seeds.

    Drawn from its own stream of the seed, so a dataset made without a prior (``share`` 0) is
    unchanged by the knob's existence.
    """
    if answer is not None or share <= 0:
        return answer
    return "A" if np.random.default_rng([seed, 0xFA]).random() < share else None


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


def _only_for(layout: str, family: Any, *knobs: str) -> None:
    """Refuse ``knobs`` changed from their defaults when they only act in another ``layout``."""
    defaults = {f.name: f.default for f in fields(family)}
    changed = [k for k in knobs if getattr(family, k) != defaults[k]]
    if changed:
        raise ValueError(
            f"{family.name}: {', '.join(changed)} only act with layout={layout!r}; "
            f"add the knob layout={layout}"
        )


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
    favour_a: float = 0.0
    """Share of items whose answer is forced to option A (0: uniform answers). An answer prior,
    like real benchmarks have: answering without looking then beats chance (A is right on
    ``favour_a + (1 - favour_a) / len(patterns)`` of the items), which gives a warm start direct
    competence to fall back to (the learning-trap experiment)."""
    name: str = "needle"

    def sample(self, seed: int, answer: str | None = None) -> Sample:
        answer = _favoured(seed, self.favour_a, answer)
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

    Two layouts:

    - ``"tiled"`` (the default): the red cell is covered by 28 px tiles (one merged vision
      token each), and every tile holds the same number (0-4) of 14 px squares (one vision
      patch each) in randomly chosen corners. The count is local to each token, so the tiny
      model reads it the way it reads a texture.
    - ``"scattered"``: 0-``max_count`` squares of ``object_px`` (default 56 px, 2 x 2 merged
      tokens) in randomly chosen slots of the whole cell. Counting then means comparing how much
      of the cell the squares cover; the tiny CPU model did not learn it in runs of 4-7 minutes
      (bench/RESULTS.md), so it is the harder knob setting.
    """

    grid: int = Lattice.grid
    cell: int = Lattice.cell
    layout: Literal["tiled", "scattered"] = "tiled"
    object_px: int = 56
    max_count: int = 4
    background: str = "fine checkerboard"
    objects: str = "counter checkerboard"
    contrast: float = 0.5
    fade: int = 8
    where: Where = "marker+text"
    name: str = "count"

    def __post_init__(self) -> None:
        if self.layout not in ("tiled", "scattered"):
            raise ValueError(f"count layout must be 'tiled' or 'scattered', got {self.layout!r}")
        if self.layout == "tiled":
            if self.cell % TILE or self.max_count > 4:
                raise ValueError(
                    f"the tiled count needs a cell that is a multiple of {TILE} px and max_count <= 4"
                )
            _only_for("scattered", self, "object_px")
        if self.layout == "scattered" and self.max_count > (self.cell // self.object_px) ** 2:
            raise ValueError(f"max_count {self.max_count} exceeds the cell's {self.object_px} px slots")

    def sample(self, seed: int, answer: str | None = None) -> Sample:
        rng = np.random.default_rng(seed)
        g, cell = self.lattice.grid, self.lattice.cell
        tiled = self.layout == "tiled"
        size = TILE // 2 if tiled else self.object_px
        per_side = 2 if tiled else cell // self.object_px
        groups = (cell // TILE) ** 2 if tiled else 1  # groups of slots that share the count
        row, col = _pick_target(rng, g)
        counts = rng.integers(self.max_count + 1, size=(g, g))
        # Slot orders are always drawn, so changing one count moves nothing else.
        orders = rng.permuted(np.tile(np.arange(per_side**2), (g * g * groups, 1)), axis=1)
        if answer is not None:
            counts[row, col] = int(answer)
        canvas = Canvas(self.lattice.size, self.lattice.size)
        for r in range(g):
            for c in range(g):
                paper = MARKER if (r, c) == (row, col) else WHITE
                box = self.lattice.pixel_box(r, c)
                canvas.fill(box, paper, self.background, fade=self.fade)
                for k in range(groups):
                    ty, tx = divmod(k, cell // TILE) if tiled else (0, 0)
                    for slot in orders[(r * g + c) * groups + k][: counts[r, c]]:
                        sy, sx = divmod(int(slot), per_side)
                        x0 = box[0] + tx * TILE + sx * size
                        y0 = box[1] + ty * TILE + sy * size
                        square = (x0, y0, x0 + size, y0 + size)
                        fade = 2 if tiled else self.fade // 2
                        canvas.fill(square, paper, self.objects, fade=fade, set_tone=False)
        question = (
            f"The red cell is covered by tiles that each hold the same number of {self.objects} "
            "squares. How many squares does one tile hold?"
            if tiled
            else f"How many squares of {self.objects} are inside the red cell?"
        )
        return Sample(
            question=_located(question, self.where, _cell_words(row, col)) + " Answer with a number.",
            answer=str(int(counts[row, col])),
            images=[canvas.image(self.contrast)],
            cue_bbox=self.lattice.box(row, col),
            meta={**_lattice_meta(row, col, g), "finding": self._finding(int(counts[row, col]))},
        )

    def _finding(self, n: int) -> str:
        squares = f"{n} square{'' if n == 1 else 's'} of {self.objects}"
        if self.layout == "tiled":
            return f"each tile of the red cell holds {squares}"
        return f"there {'is' if n == 1 else 'are'} {squares} in the red cell"

    def answer_space(self, sample: Sample) -> list[str]:
        return [str(n) for n in range(self.max_count + 1)]

    @property
    def chance(self) -> float:
        return 1 / (self.max_count + 1)


@dataclass(frozen=True)
class Read(_OnLattice):
    """Which number is written in the red panel. Two layouts:

    - ``"tiled"`` (the default): the panel is printed all over with one digit, a 20 x 28 px
      glyph (the 5x7 font at 4 px) in every 28 px tile (one merged vision token). The strokes
      are a ``stroke`` pattern in counter-phase to the ``background`` pattern: at native
      resolution each stroke is a sign flip of the texture, in the downscaled view both average
      to the same grey. Every token of the panel holds the whole digit, so the tiny model reads
      it locally, like a texture.
    - ``"single"``: one number of ``digits`` digits, each font pixel ``scale`` px, centred in
      the panel, in ``stroke`` on ``background``. Reading it means recognising a shape spread
      over several tokens; the tiny CPU model did not learn one digit at scale 12 within
      minutes (bench/RESULTS.md), so it is the harder knob setting.
    """

    grid: int = Lattice.grid
    cell: int = Lattice.cell
    layout: Literal["tiled", "single"] = "tiled"
    digits: int = 1
    scale: int = 12
    stroke: str = "counter checkerboard"
    background: str = "fine checkerboard"
    contrast: float = 0.5
    fade: int = 8
    where: Where = "marker+text"
    name: str = "read"

    def __post_init__(self) -> None:
        if self.layout not in ("tiled", "single"):
            raise ValueError(f"read layout must be 'tiled' or 'single', got {self.layout!r}")
        if self.layout == "tiled":
            if self.cell % TILE:
                raise ValueError(f"the tiled read needs a cell that is a multiple of {TILE} px")
            _only_for("single", self, "digits", "scale")

    def _number_range(self) -> tuple[int, int]:
        low = 10 ** (self.digits - 1) if self.digits > 1 else 0
        return low, 10**self.digits

    def _glyph_boxes(self, box: tuple[int, int, int, int], glyph: np.ndarray) -> list[tuple[int, int]]:
        """Top-left corners of the copies of ``glyph`` drawn in the panel ``box``."""
        x0, y0, x1, y1 = box
        gh, gw = glyph.shape
        if self.layout == "single":
            return [(x0 + (x1 - x0 - gw) // 2, y0 + (y1 - y0 - gh) // 2)]
        inset = (TILE - gw) // 2, (TILE - gh) // 2
        return [(x + inset[0], y + inset[1]) for y in range(y0, y1, TILE) for x in range(x0, x1, TILE)]

    def sample(self, seed: int, answer: str | None = None) -> Sample:
        rng = np.random.default_rng(seed)
        g = self.lattice.grid
        row, col = _pick_target(rng, g)
        low, high = self._number_range()
        numbers = rng.integers(low, high, size=(g, g))
        if answer is not None:
            numbers[row, col] = int(answer)
        tiled = self.layout == "tiled"
        canvas = Canvas(self.lattice.size, self.lattice.size)
        for r in range(g):
            for c in range(g):
                paper = MARKER if (r, c) == (row, col) else WHITE
                box = self.lattice.pixel_box(r, c)
                canvas.fill(box, paper, self.background, fade=self.fade)
                mask = digit_mask(str(int(numbers[r, c])), TILE // 7 if tiled else self.scale)
                glyph = soften(mask, 1 if tiled else self.fade // 4)
                gh, gw = glyph.shape
                for gx, gy in self._glyph_boxes(box, glyph):
                    canvas.fill((gx, gy, gx + gw, gy + gh), paper, self.stroke, where=glyph, set_tone=False)
        stem = (
            "The red panel is printed all over with one digit. Which digit is it?"
            if tiled
            else "What number is written in the red panel?"
        )
        return Sample(
            question=_located(stem, self.where, _cell_words(row, col, "red panel"))
            + " Answer with the number.",
            answer=str(int(numbers[row, col])),
            images=[canvas.image(self.contrast)],
            cue_bbox=self.lattice.box(row, col),
            meta={
                **_lattice_meta(row, col, g),
                "finding": f"the red panel is printed with the digit {numbers[row, col]}"
                if tiled
                else f"the red panel shows the number {numbers[row, col]}",
            },
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
    favour_a: float = 0.0
    """Share of items whose answer is forced to option A (0: uniform answers). An answer prior,
    like real benchmarks have: answering without looking then beats chance (A is right on
    ``favour_a + (1 - favour_a) / len(patterns)`` of the items), which gives a warm start direct
    competence to fall back to (the learning-trap experiment)."""
    name: str = "frames"

    def sample(self, seed: int, answer: str | None = None) -> Sample:
        answer = _favoured(seed, self.favour_a, answer)
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
