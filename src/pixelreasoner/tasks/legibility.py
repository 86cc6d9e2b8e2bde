"""Measured check that a family needs zooming: the answer is legible in the crop, not globally.

For each item, the family re-renders it once per possible answer (counterfactuals that differ
only in what the question asks about). Each rendering goes through the model's two views, using
the real pixel budget and the real operations:

- *global*: the image resized into ``budget.inputs`` (a video's frames into ``budget.video``);
- *zoom*: the crop of the cue box (or the selected cue frames), as the operation returns it.

Two figures per view:

- **delta**: how far apart, in grey levels, the counterfactuals are. The mean is over the
  pixels that differ at all; the maximum is over all pixels. If the global view's maximum is a
  few levels and the zoom's mean is over a hundred, the answer is in the crop and not in the
  global view.
- **oracle accuracy**: a nearest-counterfactual classifier that sees the true rendering plus
  Gaussian pixel noise (σ = ``noise`` grey levels) and picks the closest counterfactual, ties
  broken at random. It is an upper bound on what any model could read off that view at that
  noise level. Chance is ``1 / len(answer_space)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pixelreasoner.tasks.families import Family, Sample
from pixelreasoner.vision.budget import PixelBudget
from pixelreasoner.vision.ops import VisualContext, crop_image_normalized, select_frames


@dataclass(frozen=True)
class Legibility:
    family: str
    items: int
    noise: float
    chance: float
    global_max_delta: float
    global_mean_delta: float
    zoom_max_delta: float
    zoom_mean_delta: float
    global_accuracy: float
    zoom_accuracy: float

    def summary(self) -> str:
        return (
            f"{self.family}: global view Δ max {self.global_max_delta:.1f} / mean "
            f"{self.global_mean_delta:.1f} grey levels, oracle {self.global_accuracy:.2f}; "
            f"zoom Δ max {self.zoom_max_delta:.1f} / mean {self.zoom_mean_delta:.1f}, "
            f"oracle {self.zoom_accuracy:.2f} (chance {self.chance:.2f}, "
            f"σ={self.noise:g}, {self.items} items)"
        )


def _stack(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])


def global_view(sample: Sample, budget: PixelBudget) -> np.ndarray:
    """The images as the model first sees them: ``[N, H, W, 3]`` float grey levels."""
    resize = budget.video if sample.is_video else budget.inputs
    return _stack([resize.resize(im, budget.factor) for im in sample.images])


def zoom_view(sample: Sample, budget: PixelBudget) -> np.ndarray:
    """What the right operation returns: the cue crop, or the cue frames."""
    if sample.is_video:
        context = VisualContext.for_query(video=sample.images, budget=budget)
        result = select_frames(context, sample.cue_frames, budget)
    else:
        context = VisualContext.for_query(sample.images, budget=budget)
        result = crop_image_normalized(context, sample.cue_bbox, 1, budget)
    if not result.ok:
        raise ValueError(f"the cue operation failed on a generated item: {result.error}")
    return _stack(list(result.images))


def _deltas(views: dict[str, np.ndarray], truth: str) -> tuple[float, list[float]]:
    worst, means = 0.0, []
    for answer, view in views.items():
        if answer == truth:
            continue
        diff = np.abs(view - views[truth])
        worst = max(worst, float(diff.max()))
        changed = diff[diff > 0.5]
        means.append(float(changed.mean()) if changed.size else 0.0)
    return worst, means


def _oracle(views: dict[str, np.ndarray], truth: str, noise: float, rng: np.random.Generator) -> bool:
    seen = np.clip(np.round(views[truth] + rng.normal(0.0, noise, views[truth].shape)), 0, 255)
    distances = {a: float(((seen - v) ** 2).sum()) for a, v in views.items()}
    best = min(distances.values())
    tied = [a for a, d in distances.items() if d <= best + 1e-6]
    return bool(tied[int(rng.integers(len(tied)))] == truth)


def measure(
    family: Family, budget: PixelBudget, items: int = 24, seed: int = 0, noise: float = 8.0
) -> Legibility:
    """Measure a family's legibility property on ``items`` generated items."""
    rng = np.random.default_rng(seed)
    g_worst = z_worst = 0.0
    g_means: list[float] = []
    z_means: list[float] = []
    g_hits = z_hits = 0
    chances = []
    for i in range(items):
        item_seed = seed * 1_000_003 + i
        sample = family.sample(item_seed)
        answers = family.answer_space(sample)
        chances.append(1 / len(answers))
        renders = {a: family.sample(item_seed, answer=a) for a in answers}
        g_views = {a: global_view(s, budget) for a, s in renders.items()}
        z_views = {a: zoom_view(s, budget) for a, s in renders.items()}
        worst, means = _deltas(g_views, sample.answer)
        g_worst, g_means = max(g_worst, worst), g_means + means
        worst, means = _deltas(z_views, sample.answer)
        z_worst, z_means = max(z_worst, worst), z_means + means
        g_hits += _oracle(g_views, sample.answer, noise, rng)
        z_hits += _oracle(z_views, sample.answer, noise, rng)
    return Legibility(
        family=family.name,
        items=items,
        noise=noise,
        chance=float(np.mean(chances)),
        global_max_delta=g_worst,
        global_mean_delta=float(np.mean(g_means)),
        zoom_max_delta=z_worst,
        zoom_mean_delta=float(np.mean(z_means)),
        global_accuracy=g_hits / items,
        zoom_accuracy=z_hits / items,
    )
