"""Drawing primitives of the synthetic tasks: fine patterns, texture-drawn digits, the cell lattice.

Every pattern has 50% ink and a period of 2 or 4 px, defined on absolute canvas coordinates, so
that (a) a 4x bicubic downscale turns every pattern's interior into the same grey (128), and
(b) at native resolution each 14 px vision patch holds the pattern aligned the same way in
every crop whose origin is a multiple of 14 px.

Edges matter as much as interiors: where two patterns meet sharply, the bicubic kernel's
negative lobes leave a line in the downscaled image. Stripes leave 10–17 grey levels there (a
square of vertical stripes shows its outline); the :data:`BALANCED` patterns alternate along
both axes and leave 2–4. :class:`Canvas` removes the rest by fading patterns in smoothly over
the kernel's reach, so the downscale sees only each region's flat tone. Stripes and sharp
edges stay available as knobs for variants where the global view may leak.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

Mask = np.ndarray  # bool [H, W]
PatternFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

PATTERNS: dict[str, PatternFn] = {
    "fine checkerboard": lambda x, y: (x + y) % 2 == 0,
    "counter checkerboard": lambda x, y: (x + y) % 2 == 1,
    "coarse checkerboard": lambda x, y: (x // 2 + y // 2) % 2 == 0,
    "rising diagonals": lambda x, y: ((x + y) // 2) % 2 == 0,
    "falling diagonals": lambda x, y: ((x - y) // 2) % 2 == 0,
    "horizontal stripes": lambda x, y: y % 2 == 0,
    "vertical stripes": lambda x, y: x % 2 == 0,
}
"""Pattern name → ink mask as a function of absolute pixel coordinates (all 50% ink)."""

BALANCED: tuple[str, ...] = (
    "fine checkerboard",
    "coarse checkerboard",
    "rising diagonals",
    "falling diagonals",
)
"""The default pattern set: no visible edges between them after a 4x downscale (see above)."""

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
MARKER = (220, 40, 40)
"""Paper colour of the cell or frame a question is about: visible at any resolution."""

# A 5x7 bitmap font for digits (ours): '#' = stroke.
_DIGITS = {
    "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    "1": ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    "3": ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
}


def digit_mask(text: str, scale: int, gap: int = 1) -> Mask:
    """Bool mask of ``text`` (digits only) in the 5x7 font, each font pixel ``scale`` px square."""
    glyphs = [np.array([[c == "#" for c in row] for row in _DIGITS[ch]], dtype=bool) for ch in text]
    spacer = np.zeros((7, gap), dtype=bool)
    joined = np.concatenate([part for g in glyphs for part in (g, spacer)][:-1], axis=1)
    return np.kron(joined, np.ones((scale, scale), dtype=bool))


@dataclass(frozen=True)
class Lattice:
    """A square canvas of ``grid x grid`` cells of ``cell`` px.

    With the protocol's 0.1 padding, a one-cell box crops ``cell + 0.2 * size`` px
    (``cell + 0.1 * size`` at a border). The crop reaches the model unresized, which keeps 1 px
    patterns intact, when those are multiples of 28 and cell edges fall on the 14 px patch
    grid: a 560 px canvas with 4 x 140 px cells (the default; crops of 252 and 196 px, boxes
    exact in quarters) or 5 x 112 px (224 and 168 px) or 2 x 280 px (336 px). A 3 x 3 grid has
    no such size with exact short box coordinates.
    """

    grid: int = 4
    cell: int = 140

    @property
    def size(self) -> int:
        return self.grid * self.cell

    def pixel_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        return col * self.cell, row * self.cell, (col + 1) * self.cell, (row + 1) * self.cell

    def box(self, row: int, col: int, rows: int = 1, cols: int = 1) -> list[float]:
        """Normalized box of a block of cells, rounded to 3 decimals (exact for the default grid)."""
        g = self.grid
        return [round(col / g, 3), round(row / g, 3), round((col + cols) / g, 3), round((row + rows) / g, 3)]


def soften(mask: Mask, radius: int) -> np.ndarray:
    """A bool mask as weights in [0, 1], blurred by a (2r+1)-px box filter (shapes kept, edges soft)."""
    weights = mask.astype(np.float32)
    if radius <= 0:
        return weights
    kernel = np.ones(2 * radius + 1, dtype=np.float32) / (2 * radius + 1)
    padded = np.pad(weights, radius)
    rows = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, rows)


def envelope(height: int, width: int, fade: int) -> np.ndarray:
    """Weights in [0, 1]: 1 inside, a raised-cosine ramp to 0 over ``fade`` px at the edges."""
    if fade <= 0:
        return np.ones((height, width), dtype=np.float32)

    def ramp(n: int) -> np.ndarray:
        distance = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)  # px to the nearer edge
        t = np.clip((distance + 0.5) / fade, 0.0, 1.0)
        return 0.5 - 0.5 * np.cos(np.pi * t)

    return np.outer(ramp(height), ramp(width)).astype(np.float32)


class Canvas:
    """An image built as a flat *tone* plus a pattern *detail* layer, in absolute coordinates.

    A pattern is stored as its deviation (±half the paper–ink difference) around its mean tone,
    weighted by a soft mask. With a fade as wide as the downscaling kernel, the kernel only ever
    sees the tone: no pattern, and no boundary between two patterns, survives the global view.
    The tone (e.g. the red marker) keeps sharp edges.
    """

    def __init__(self, width: int, height: int, paper: tuple[int, int, int] = WHITE) -> None:
        self.tone = np.empty((height, width, 3), dtype=np.float32)
        self.tone[:] = paper
        self.detail = np.zeros((height, width, 3), dtype=np.float32)
        self.y, self.x = np.mgrid[0:height, 0:width]

    def fill(
        self,
        box: tuple[int, int, int, int],
        paper: tuple[int, int, int],
        pattern: str | None,
        ink: tuple[int, int, int] = BLACK,
        where: Mask | None = None,
        fade: int = 0,
        set_tone: bool = True,
    ) -> None:
        """Paint ``pattern`` (``ink`` on ``paper``) into ``box``, where ``where`` is true.

        ``fade`` blends the pattern in over that many pixels from the box edge (cross-fading with
        the pattern underneath); ``set_tone`` also sets the region's flat tone to the pattern's
        mean colour (paper alone when ``pattern`` is None).
        """
        x0, y0, x1, y1 = box
        weight = envelope(y1 - y0, x1 - x0, fade)
        if where is not None:
            weight = weight * where
        paper_a, ink_a = np.asarray(paper, np.float32), np.asarray(ink, np.float32)
        if set_tone:
            inside = weight > 0 if where is not None else np.ones_like(weight, dtype=bool)
            self.tone[y0:y1, x0:x1][inside] = paper_a if pattern is None else (paper_a + ink_a) / 2
        if pattern is None:
            new = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
        else:
            is_ink = PATTERNS[pattern](self.x[y0:y1, x0:x1], self.y[y0:y1, x0:x1])
            sign = np.where(is_ink[..., None], np.float32(-1.0), np.float32(1.0))
            new = (sign * (paper_a - ink_a) / 2).astype(np.float32)
        region = self.detail[y0:y1, x0:x1]
        region[:] = (region * (1 - weight[..., None]) + new * weight[..., None]).astype(np.float32)

    def image(self, contrast: float = 1.0) -> Image.Image:
        """The canvas as an 8-bit image; ``contrast`` scales the pattern layer (not the tone).

        Lower contrast shrinks whatever faint trace of a pattern survives downscaling, while the
        pattern at native resolution stays far above noise.
        """
        if not 0 < contrast <= 1:
            raise ValueError(f"contrast must be in (0, 1], got {contrast}")
        pixels = self.tone + contrast * self.detail
        return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
