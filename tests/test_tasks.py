"""Synthetic task families: determinism, counterfactuals, the legibility property, datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pixelreasoner.data.formats import read_items
from pixelreasoner.tasks.drawing import BALANCED, PATTERNS, Canvas, Lattice, digit_mask
from pixelreasoner.tasks.families import FAMILIES, make_family, parse_knobs
from pixelreasoner.tasks.generate import generate_dataset, generate_item, item_seed
from pixelreasoner.tasks.legibility import measure
from pixelreasoner.vision.budget import tiny
from pixelreasoner.vision.ops import VisualContext, crop_image_normalized, pixel_box

BUDGET = tiny()
NAMES = sorted(FAMILIES)


def pixels(images) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_in_the_seed(name: str) -> None:
    family = make_family(name)
    a, b, c = family.sample(11), family.sample(11), family.sample(12)
    assert a.answer == b.answer and (pixels(a.images) == pixels(b.images)).all()
    assert a.question == b.question and a.cue_bbox == b.cue_bbox and a.cue_frames == b.cue_frames
    assert not (pixels(a.images) == pixels(c.images)).all()


@pytest.mark.parametrize("name", NAMES)
def test_counterfactuals_change_only_the_cue(name: str) -> None:
    family = make_family(name)
    base = family.sample(5)
    for answer in family.answer_space(base):
        other = family.sample(5, answer=answer)
        assert other.answer == answer
        changed = np.argwhere((pixels(other.images) != pixels(base.images)).any(axis=-1))
        if answer == base.answer:
            assert changed.size == 0
            continue
        assert changed.size > 0
        if base.is_video:
            assert set(changed[:, 0] + 1) == set(base.cue_frames or [])
        else:
            assert base.cue_bbox is not None
            size = base.images[0].width
            x0, y0, x1, y1 = (round(v * size) for v in base.cue_bbox)
            ys, xs = changed[:, 1], changed[:, 2]
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1


@pytest.mark.parametrize("name", NAMES)
def test_legibility_answer_needs_the_zoom(name: str) -> None:
    """The measured property: counterfactual answers differ by at most 2 grey levels in the global
    view (an ideal observer that knows every counterfactual exactly stays within 0.3 of chance)
    and by 25-45 levels on average in the crop (read perfectly)."""
    result = measure(make_family(name), BUDGET, items=16, seed=3)
    assert result.zoom_accuracy >= 0.95 and result.zoom_mean_delta >= 20
    assert result.global_max_delta <= 2
    assert result.global_accuracy <= result.chance + 0.3
    assert result.zoom_accuracy - result.global_accuracy >= 0.45


def test_full_contrast_stripes_leak_shapes_into_the_global_view() -> None:
    """Why the defaults use balanced, faded, half-contrast patterns: sharp stripes leak shapes."""
    leaky = make_family(
        "count", background="horizontal stripes", objects="vertical stripes", contrast=1.0, fade=0
    )
    leaky_result = measure(leaky, BUDGET, items=8, seed=3)
    default = measure(make_family("count"), BUDGET, items=8, seed=3)
    assert leaky_result.global_max_delta >= 5 * default.global_max_delta
    assert leaky_result.global_accuracy > default.global_accuracy


@pytest.mark.parametrize("grid,cell", [(4, 140), (5, 112), (2, 280)])
def test_every_cell_crop_reaches_the_model_unresized(grid: int, cell: int) -> None:
    """The lattice sizes Lattice's docstring recommends (the first is the default)."""
    lattice = Lattice(grid, cell)
    image = make_family("needle", grid=grid, cell=cell).sample(0).images[0]
    context = VisualContext.for_query([image], budget=BUDGET)
    for row in range(lattice.grid):
        for col in range(lattice.grid):
            box = lattice.box(row, col)
            result = crop_image_normalized(context, box, 1, BUDGET)
            left, top, right, bottom = pixel_box(box, image.width, image.height)
            assert result.images[0].size == (right - left, bottom - top)
            assert result.images[0].tobytes() == image.crop((left, top, right, bottom)).tobytes()


def test_parse_knobs_types_values_and_rejects_unknown_keys() -> None:
    assert parse_knobs("read", ["digits=2", "contrast=1", "where=marker"]) == {
        "digits": 2,
        "contrast": 1.0,
        "where": "marker",
    }
    assert parse_knobs("needle", ["patterns=fine checkerboard, coarse checkerboard"])["patterns"] == (
        "fine checkerboard",
        "coarse checkerboard",
    )
    with pytest.raises(ValueError, match="knobs are KEY=VALUE"):
        parse_knobs("needle", ["digits=2"])
    assert parse_knobs("needle", ["digits=2", "grid=5"], skip_unknown=True) == {"grid": 5}
    with pytest.raises(ValueError, match="needs a int"):
        parse_knobs("needle", ["grid=five"], skip_unknown=True)


def test_chance_is_a_uniform_guess_over_the_answer_space() -> None:
    for name in ("needle", "count", "frames"):
        family = make_family(name)
        assert family.chance == pytest.approx(1 / len(family.answer_space(family.sample(0))))
    assert make_family("read").chance == pytest.approx(1 / 10)  # one digit by default
    assert make_family("read", layout="single", digits=2).chance == pytest.approx(1 / 90)


def test_patterns_are_half_ink_and_digits_render() -> None:
    canvas = Canvas(56, 56)
    y, x = canvas.y, canvas.x
    for name in PATTERNS:
        assert PATTERNS[name](x, y).mean() == 0.5
    assert set(BALANCED) <= set(PATTERNS)
    mask = digit_mask("47", scale=2)
    assert mask.shape == (14, 22) and mask.any()
    assert not (digit_mask("1", 1) == digit_mask("7", 1)).all()


def test_knobs_and_errors() -> None:
    assert make_family("read", digits=1).answer_space(make_family("read", digits=1).sample(0)) == [
        str(n) for n in range(10)
    ]
    assert len(make_family("frames", n_frames=8).sample(0).images) == 8
    with pytest.raises(ValueError, match="unknown task family"):
        make_family("maze")
    with pytest.raises(ValueError, match="bad knob"):
        make_family("needle", colour="red")
    with pytest.raises(ValueError, match="contrast"):
        make_family("needle", contrast=0.0).sample(0)


def test_generate_dataset_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    families = [make_family(n) for n in NAMES]
    dataset = generate_dataset(families, 3, tmp_path / "ds", seed=7, progress=False)
    assert len(dataset.items) == 12 and "12 items" in dataset.summary()
    loaded = read_items(tmp_path / "ds")
    assert not loaded.problems and len(loaded.items) == 12
    video = [i for i in loaded.items if i.is_video]
    assert len(video) == 3 and all(len(i.images) == 16 and i.cue_frames for i in video)
    assert {i.benchmark for i in loaded.items} == set(NAMES)
    # any single item regenerates identically from its seed
    again = generate_item(make_family("count"), 1, 7, tmp_path / "again")
    original = next(i for i in loaded.items if i.qid == "count-000001")
    assert again.answer == original.answer and again.cue_bbox == original.cue_bbox
    assert Path(again.images[0]).read_bytes() == Path(original.images[0]).read_bytes()
    assert item_seed(7, "count", 1) != item_seed(7, "read", 1)


def _red_cell(sample, lattice: Lattice) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Signed detail of the red cell's red channel: + where ink is darker than the cell's tone."""
    row, col = sample.meta["cell"]
    x0, y0, x1, y1 = lattice.pixel_box(row, col)
    red = np.asarray(sample.images[0], dtype=np.float32)[y0:y1, x0:x1, 0]
    return red.mean() - red


def test_tiled_count_puts_the_answer_in_every_token_tile() -> None:
    """Every 28 px tile of the red cell holds exactly ``answer`` patch-sized squares: a 14 px
    patch holds a square when its centre matches the square pattern better than the background."""
    family = make_family("count", contrast=1.0)
    ys, xs = np.mgrid[0:140, 0:140]  # the default cell starts at a multiple of every period
    ink = {n: np.where(PATTERNS[n](xs, ys), 1.0, -1.0) for n in (family.objects, family.background)}
    for seed in range(6):
        sample = family.sample(seed)
        detail = _red_cell(sample, family.lattice)
        for ty in range(1, 4):  # the interior tiles (the border ones fade into the cell edge)
            for tx in range(1, 4):
                squares = 0
                for py in range(2):
                    for px in range(2):
                        y, x = ty * 28 + py * 14, tx * 28 + px * 14
                        patch = detail[y + 4 : y + 10, x + 4 : x + 10]
                        score = {n: (patch * ink[n][y + 4 : y + 10, x + 4 : x + 10]).sum() for n in ink}
                        squares += score[family.objects] > score[family.background]
                assert squares == int(sample.answer), (seed, ty, tx)


def test_tiled_read_draws_the_answer_digit_in_every_token_tile() -> None:
    """Every interior 28 px tile of the red panel holds the answer's glyph as a counter-phase flip
    of the background texture: the flip mask correlates best with the answer's 5x7 glyph."""
    family = make_family("read", contrast=1.0)
    background = np.where(PATTERNS[family.background](*np.mgrid[0:28, 0:28][::-1]), 1.0, -1.0)
    glyphs = {str(d): np.pad(digit_mask(str(d), 4), ((0, 0), (4, 4))).astype(np.float32) for d in range(10)}
    for seed in range(6):
        sample = family.sample(seed)
        detail = _red_cell(sample, family.lattice)
        for ty in range(1, 4):
            for tx in range(1, 4):
                flipped = (detail[ty * 28 : ty * 28 + 28, tx * 28 : tx * 28 + 28] * background) < 0
                best = max(glyphs, key=lambda d: ((glyphs[d] > 0) == flipped).mean())
                assert best == sample.answer, (seed, ty, tx)


def test_layout_knobs_are_refused_where_they_do_nothing() -> None:
    with pytest.raises(ValueError, match="layout=scattered"):
        make_family("count", object_px=28)
    with pytest.raises(ValueError, match="layout=single"):
        make_family("read", digits=2)
    with pytest.raises(ValueError, match="layout must be"):
        make_family("count", layout="grid")
    scattered = make_family("count", layout="scattered", object_px=28)
    assert scattered.chance == pytest.approx(1 / 5)
    single = make_family("read", layout="single", digits=2, scale=6).sample(1)
    assert 10 <= int(single.answer) <= 99


@pytest.mark.parametrize("name", ["needle", "frames"])
def test_answer_prior_favours_option_a_and_changes_nothing_else(name: str) -> None:
    """favour_a = f makes A right on f + (1 - f) / n of the items; the rest of an item is unchanged."""
    small = {"grid": 2, "cell": 28} if name == "needle" else {"n_frames": 4, "size": 28}
    plain, favoured = make_family(name, **small), make_family(name, favour_a=0.6, **small)
    seeds = range(400)  # deterministic: the seeds are fixed
    share = sum(favoured.sample(s).answer == "A" for s in seeds) / len(seeds)
    n = len(plain.answer_space(plain.sample(0)))
    assert abs(share - (0.6 + 0.4 / n)) < 0.07
    assert abs(sum(plain.sample(s).answer == "A" for s in seeds) / len(seeds) - 1 / n) < 0.07
    always = make_family(name, favour_a=1.0, **small)
    for s in range(5):
        a, b = plain.sample(s), always.sample(s)
        assert b.answer == "A" and a.question == b.question and a.cue_bbox == b.cue_bbox
        assert a.cue_frames == b.cue_frames
        assert b.images[0].tobytes() == plain.sample(s, answer="A").images[0].tobytes()
    # without the knob, samples are what they always were (the prior draws from its own stream)
    unset = make_family(name, favour_a=0.0, **small)
    assert unset.sample(3).images[-1].tobytes() == plain.sample(3).images[-1].tobytes()
