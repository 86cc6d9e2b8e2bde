"""Drawing primitives of the synthetic tasks: fine patterns, texture-drawn digits, the cell lattice.

Every pattern has 50% ink and a period of 2 or 4 px, defined on absolute canvas coordinates, so
that (a) a 4x bicubic downscale turns every pattern's interior into the same grey (128), and
(b) at native resolution each 14 px vision patch holds the pattern aligned the same way in
every crop whose origin is a multiple of 14 px.

Edges matter as much as interiors: where two patterns meet, the bicubic kernel's negative lobes
leave a line in the downscaled image. Stripes leave 10–17 grey levels there (a square of
vertical stripes shows its outline), so the default :data:`BALANCED` patterns alternate along
*both* axes, which cancels the ringing to at most 2–4 levels on edge pixels. Stripes stay
available as a knob for variants where the global view may leak shapes.
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

    With the protocol's 0.1 padding, a one-cell box crops ``cell + 0.2 * size`` px; the
    defaults (5 x 112 px on 560 px) make that 224 px (168 px at a border), a multiple of 28, so
    the crop reaches the model unresized.
    """

    grid: int = 5
    cell: int = 112

    @property
    def size(self) -> int:
        return self.grid * self.cell

    def pixel_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        return col * self.cell, row * self.cell, (col + 1) * self.cell, (row + 1) * self.cell

    def box(self, row: int, col: int, rows: int = 1, cols: int = 1) -> list[float]:
        """Normalized box of a block of cells, rounded to 3 decimals (exact for the default grid)."""
        g = self.grid
        return [round(col / g, 3), round(row / g, 3), round((col + cols) / g, 3), round((row + rows) / g, 3)]


class Canvas:
    """An RGB uint8 image painted with patterns in absolute coordinates."""

    def __init__(self, width: int, height: int, paper: tuple[int, int, int] = WHITE) -> None:
        self.pixels = np.empty((height, width, 3), dtype=np.uint8)
        self.pixels[:] = paper
        self.y, self.x = np.mgrid[0:height, 0:width]

    def fill(
        self,
        box: tuple[int, int, int, int],
        paper: tuple[int, int, int],
        pattern: str | None,
        ink: tuple[int, int, int] = BLACK,
        where: Mask | None = None,
    ) -> None:
        """Paint ``box`` with ``paper`` and then ``pattern`` in ``ink`` (only where ``where``)."""
        x0, y0, x1, y1 = box
        region = self.pixels[y0:y1, x0:x1]
        keep = np.ones(region.shape[:2], dtype=bool) if where is None else where
        region[keep] = paper
        if pattern is not None:
            ink_mask = PATTERNS[pattern](self.x[y0:y1, x0:x1], self.y[y0:y1, x0:x1]) & keep
            region[ink_mask] = ink

    def image(self, contrast: float = 1.0) -> Image.Image:
        """The canvas as an image, its grey range squeezed to ``contrast`` around mid-grey.

        Lower contrast shrinks the faint edge lines that survive downscaling (the leak) in
        proportion, while the pattern at native resolution stays far above noise.
        """
        if not 0 < contrast <= 1:
            raise ValueError(f"contrast must be in (0, 1], got {contrast}")
        if contrast == 1:
            return Image.fromarray(self.pixels)
        squeezed = 127.5 + (self.pixels.astype(np.float32) - 127.5) * contrast
        return Image.fromarray(np.round(squeezed).astype(np.uint8))
