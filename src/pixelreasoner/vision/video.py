"""Video input for Qwen2.5-VL without torchvision.

transformers' video processor needs torchvision, which cannot be installed on our CPU machines.
The released model reads a video as ``<|video_pad|>`` tokens whose patches group frames in
temporal pairs; this module computes exactly that input from PIL frames:

1. every frame is resized (bicubic) to the size that :func:`smart_resize` gives the first one;
2. pixels are rescaled to [0, 1] and normalized with the image processor's mean and std;
3. the frame count is padded to a multiple of the temporal patch size by repeating the last
   frame, and frames are cut into ``temporal_patch_size x 14 x 14`` patches, ordered like the
   image processor's (2x2 merge blocks contiguous) with the temporal pair inside each patch.

An image is, in this layout, a video of two identical frames; the tests check our patches
against the image processor's on such input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pixelreasoner.vision.budget import PixelRange


@dataclass(frozen=True)
class PatchSpec:
    """The vision tower's patching constants and the processor's normalization."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    rescale: float = 1 / 255

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_image_processor(cls, processor: object) -> PatchSpec:
        """Read the constants from a Qwen2-VL image processor, so video and images agree."""
        return cls(
            patch_size=int(getattr(processor, "patch_size", 14)),
            merge_size=int(getattr(processor, "merge_size", 2)),
            temporal_patch_size=int(getattr(processor, "temporal_patch_size", 2)),
            mean=tuple(getattr(processor, "image_mean", cls.mean)),
            std=tuple(getattr(processor, "image_std", cls.std)),
            rescale=float(getattr(processor, "rescale_factor", 1 / 255)),
        )


def patchify_video(frames: np.ndarray, spec: PatchSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Cut normalized frames ``[T, C, H, W]`` into flat patches ``[t*h*w, C*tp*p*p]``.

    Returns the patches and the grid ``(t, h, w)`` in patch units (t = temporal groups).
    """
    if frames.ndim != 4:
        raise ValueError(f"frames must be [T, C, H, W], got shape {frames.shape}")
    p, m, tp = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    count, channels, height, width = frames.shape
    if height % (p * m) or width % (p * m):
        raise ValueError(f"frame size {width}x{height} is not a multiple of {p * m}")
    if count % tp:
        # Qwen pads the frame count by repeating the last frame.
        pad = np.repeat(frames[-1:], tp - count % tp, axis=0)
        frames = np.concatenate([frames, pad], axis=0)
    grid_t, grid_h, grid_w = frames.shape[0] // tp, height // p, width // p
    patches = frames.reshape(grid_t, tp, channels, grid_h // m, m, p, grid_w // m, m, p)
    # -> [grid_t, h/m, w/m, m_h, m_w, C, tp, p_h, p_w]: merge blocks contiguous, as for images.
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * tp * p * p)
    return np.ascontiguousarray(flat, dtype=np.float32), (grid_t, grid_h, grid_w)


def normalize_frames(frames: Sequence[Image.Image], pixel_range: PixelRange, spec: PatchSpec) -> np.ndarray:
    """Resize frames to one common size within ``pixel_range`` and normalize: ``[T, C, H, W]``."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    size = pixel_range.target_size(frames[0].width, frames[0].height, spec.factor)
    arrays = []
    for frame in frames:
        rgb = frame.convert("RGB")
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.BICUBIC)
        arrays.append(np.asarray(rgb, dtype=np.float32))
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    stacked: np.ndarray = (np.stack(arrays) * np.float32(spec.rescale) - mean) / std  # [T, H, W, C]
    return stacked.transpose(0, 3, 1, 2)


def encode_video(
    frames: Sequence[Image.Image], pixel_range: PixelRange, spec: PatchSpec
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Frames → (patches, grid), ready to be passed as ``pixel_values_videos``/``video_grid_thw``."""
    return patchify_video(normalize_frames(frames, pixel_range, spec), spec)
