"""Writing generated task families to disk: PNG images plus the released parquet layout.

A dataset directory holds ``items.parquet`` (paths relative to the directory) and
``images/{family}/{qid}.png`` (a video's frames in ``images/{family}/{qid}/{k:02d}.png``).
Item ``i`` of a family is generated from a seed derived from ``(seed, family, i)``, so any slice
of a dataset can be regenerated on its own and two families never share randomness.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pixelreasoner.data.formats import ITEMS_FILENAME, write_items
from pixelreasoner.data.items import TaskItem
from pixelreasoner.tasks.families import Family


def item_seed(seed: int, family: str, index: int) -> int:
    """The seed of item ``index`` of ``family`` in a dataset made with ``seed``."""
    sequence = np.random.SeedSequence([seed, zlib.crc32(family.encode()), index])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class GeneratedDataset:
    path: Path
    items: list[TaskItem]
    seconds: float

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.benchmark] = counts.get(item.benchmark, 0) + 1
        per_family = ", ".join(f"{name} {n}" for name, n in counts.items())
        rate = len(self.items) / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"wrote {len(self.items)} items ({per_family}) to {self.path} "
            f"in {self.seconds:.1f} s ({rate:.0f} items/s)"
        )


def generate_item(family: Family, index: int, seed: int, out_dir: Path) -> TaskItem:
    """Generate item ``index``, save its images under ``out_dir`` and return its record."""
    qid = f"{family.name}-{index:06d}"
    sample = family.sample(item_seed(seed, family.name, index))
    folder = out_dir / "images" / family.name
    if sample.is_video:
        frame_dir = folder / qid
        frame_dir.mkdir(parents=True, exist_ok=True)
        paths = [frame_dir / f"{k + 1:02d}.png" for k in range(len(sample.images))]
    else:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{qid}.png"]
    for image, path in zip(sample.images, paths, strict=True):
        image.save(path)
    meta = {**sample.meta, "family": family.name, "seed": seed}
    return TaskItem(
        qid=qid,
        question=sample.question,
        answer=sample.answer,
        images=[str(p) for p in paths],
        is_video=sample.is_video,
        choices=sample.choices,
        cue_bbox=sample.cue_bbox,
        cue_frames=sample.cue_frames,
        meta=meta,
    )


def generate_dataset(
    families: Sequence[Family],
    n: int,
    out_dir: str | Path,
    seed: int = 0,
    start: int = 0,
    progress: bool = True,
) -> GeneratedDataset:
    """Generate ``n`` items of each family (indices ``start .. start+n-1``) into ``out_dir``."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    items: list[TaskItem] = []
    bar = tqdm(total=n * len(families), desc="generating tasks", unit="item", disable=not progress)
    for family in families:
        for index in range(start, start + n):
            items.append(generate_item(family, index, seed, out))
            bar.update()
    bar.close()
    path = write_items(items, out / ITEMS_FILENAME, relative_to=out)
    return GeneratedDataset(path=path, items=items, seconds=time.perf_counter() - began)
