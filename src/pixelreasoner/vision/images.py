"""Loading user images safely: every failure is an :class:`ImageLoadError` naming the file.

Datasets contain arbitrary image files, so loading must never end in an obscure exception from
deep inside Pillow, and must not let one hostile file take all the memory. This module:

- opens files, bytes or ready :class:`PIL.Image.Image` objects and decodes them **fully**
  before returning, so a truncated file fails here (with its name) and not later in a batch;
- refuses images above ``max_pixels`` from the header alone, before any pixel is decoded
  (Pillow opens lazily, so the size is known first). The default is
  :attr:`PixelBudget.max_decode_pixels <pixelreasoner.vision.budget.PixelBudget>`;
- converts every Pillow mode to 8-bit RGB with explicit rules (see :func:`to_rgb`);
- applies the EXIF orientation (:func:`PIL.ImageOps.exif_transpose`), so photos taken with a
  rotated camera come out upright, as a person viewing the file would see them;
- returns images detached from their files: no file handle stays open.

Truncated images are never "repaired": ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone,
because silently padding a half-decoded image with grey would train on corrupt data.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import IO, TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

ImageSource: TypeAlias = "str | os.PathLike[str] | bytes | Image.Image"
"""What :func:`load_image` accepts: a path, encoded bytes, or a Pillow image."""

DEFAULT_MAX_PIXELS = 128_000_000
"""Default decode limit; equal to ``PixelBudget.max_decode_pixels`` (a test checks they agree)."""

BYTES_SOURCE = "<bytes>"
PIL_SOURCE = "<PIL image>"
FRAMES_SOURCE = "<frames>"

# Exceptions Pillow can raise on malformed input. Its plugins parse headers with struct and
# indexing and inflate with zlib, and do not wrap what fails there, so a corrupt file can end in
# any of these. They are caught only around calls into Pillow, never around our own code, so a
# bug of ours is not hidden. UnidentifiedImageError is an OSError and is handled before this.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Leading bytes of the formats a dataset is likely to hold (PNG, JPEG, GIF, TIFF; WebP is checked
# apart), used only to word the error for a file Pillow could not identify. BMP's two-byte "BM"
# is left out: too short to tell a broken bitmap from a text file starting with "BM".
_KNOWN_SIGNATURES = (_PNG_SIGNATURE, b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# Modes Pillow converts to RGB correctly by itself (no alpha, 8 bits per channel).
_PIL_CONVERTIBLE_MODES = frozenset({"1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"})
# Pillow's bomb messages start "Image size (N pixels) exceeds limit of ...".
_PIL_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageLoadError(ValueError):
    """An image could not be used. ``source`` names the file (or ``'<bytes>'``, ``'<PIL image>'``).

    The message is ``f"{source}: {reason}"``; ``reason`` is a short human phrase such as
    ``"file not found"`` or ``"truncated or corrupt image data"``. The Pillow exception behind
    it, if any, is chained as ``__cause__`` for debugging.
    """

    source: str
    reason: str

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageLoadError], tuple[str, str]]:
        # Images are often loaded in DataLoader worker processes; the default pickling would
        # call __init__ with the formatted message only and fail in the parent process.
        return (type(self), (self.source, self.reason))


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and convert to RGB (8-bit). Raises :class:`ImageLoadError` only.

    ``source`` is a path, the encoded bytes of a file (named ``'<bytes>'`` in errors) or a
    Pillow image (named ``'<PIL image>'``; it is validated and converted, never modified except
    that a lazily opened image gets loaded). Multi-frame files (GIF, multi-page TIFF, APNG) give
    their first frame. The EXIF orientation is applied. Images with more than ``max_pixels``
    pixels are refused from the header, before decoding. The result is a new, loaded RGB image
    that shares nothing with ``source`` and holds no open file.

    A wrong argument type (``TypeError``) or a non-positive ``max_pixels`` (``ValueError``) is a
    programming error and is not turned into :class:`ImageLoadError`.
    """
    _check_max_pixels(max_pixels)
    return _load(source, _source_name(source), max_pixels)


def to_rgb(image: Image.Image, source: str = PIL_SOURCE) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; always returns a new image.

    Rules (``source`` only names the image in errors):

    - ``RGB``: copied unchanged.
    - Anything with transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, a
      palette with alpha, or a ``transparency`` colour key on ``1``/``L``/``P``/``RGB``):
      alpha-composited over **white**, so transparent pixels become white rather than black
      (a model has never seen "black means transparent").
    - ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: Pillow's own
      conversion. (Embedded ICC profiles are not applied; we do no colour management.)
    - 16-bit ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``: scaled linearly from 0..65535 to 0..255
      as ``round(v / 257)`` (257 = 65535 / 255, so an 8-bit value stored as ``v * 257``
      comes back exactly). Pillow's own ``convert`` would clip everything above 255 to white.
    - ``I`` (32-bit int): kept if its maximum is ≤ 255 (an 8-bit image stored wide), otherwise
      treated as 16-bit and scaled by ``1 / 257`` as above; the result is clipped to [0, 255]
      (negative values become 0).
    - ``F`` (float): if its maximum is ≤ 1.0 it is taken as 0..1 and scaled by 255; otherwise it
      is clipped to [0, 255]. NaN becomes 0.
    - Grey results are replicated to three channels. A colour key on an ``I``/``I;16`` image
      makes the keyed pixels white.
    """
    if image.width <= 0 or image.height <= 0:
        raise ImageLoadError(source, "image has zero size")
    _decode_pixels(image, source)
    mode = image.mode
    try:
        if mode == "RGB" and "transparency" not in image.info:
            return image.copy()
        if mode in _SIXTEEN_BIT_MODES or mode == "I":
            return _grey_to_rgb(_int_to_uint8(image))
        if mode == "F":
            return _grey_to_rgb(_float_to_uint8(image))
        if _has_transparency(image):
            return _over_white(image)
        if mode in _PIL_CONVERTIBLE_MODES:
            return image.convert("RGB")
    except DECODE_ERRORS as exc:
        raise ImageLoadError(source, f"cannot convert image mode {mode!r} to RGB") from exc
    raise ImageLoadError(source, f"unsupported image mode {mode!r}")


def load_frames(sources: Sequence[ImageSource], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
    """Load video frames with :func:`load_image`; all come back at the first frame's size.

    An empty sequence is an error (:class:`ImageLoadError` with source ``'<frames>'``). Frames
    whose size differs from the first are resized to it (bicubic, as Qwen's processor resizes),
    because a video is encoded as one tensor of equally sized frames. ``max_pixels`` applies to
    each frame; bound the number of frames separately. A path frame is named by its path in
    errors; an in-memory frame as e.g. ``'<bytes> (frame 3)'`` so the bad one can be found.
    """
    _check_max_pixels(max_pixels)
    if isinstance(sources, (str, bytes, bytearray, os.PathLike, Image.Image)):
        # A single path is itself a Sequence (of characters); refuse it rather than load "a".
        raise TypeError(f"load_frames takes a sequence of frames, not one {type(sources).__name__}")
    if len(sources) == 0:
        raise ImageLoadError(FRAMES_SOURCE, "no frames given")
    frames: list[Image.Image] = []
    for index, source in enumerate(sources):
        name = _source_name(source)
        if name in (BYTES_SOURCE, PIL_SOURCE):
            name = f"{name} (frame {index})"
        frame = _load(source, name, max_pixels)
        if frames and frame.size != frames[0].size:
            frame = frame.resize(frames[0].size, Image.Resampling.BICUBIC)
        frames.append(frame)
    return frames


# --------------------------------------------------------------------------------------------
# Opening and decoding


def _check_max_pixels(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")


def _source_name(source: object) -> str:
    """The name errors use for ``source``; raises TypeError for an unsupported type."""
    if isinstance(source, Image.Image):
        return PIL_SOURCE
    if isinstance(source, (bytes, bytearray)):
        return BYTES_SOURCE
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return path if isinstance(path, str) else os.fsdecode(path)
    raise TypeError(f"cannot load an image from {type(source).__name__}; pass a path, bytes or PIL image")


def _load(source: ImageSource, name: str, max_pixels: int) -> Image.Image:
    if isinstance(source, Image.Image):
        return _finish(source, name, max_pixels)
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageLoadError(name, "no image data (0 bytes)")
        return _decode_stream(io.BytesIO(source), name, max_pixels)
    return _load_path(name, max_pixels)


def _load_path(path: str, max_pixels: int) -> Image.Image:
    # We open the file ourselves (rather than handing Pillow the path) so that file-system
    # problems get their own reasons and the handle is closed by this `with`, whatever happens.
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the `with` just below
    except FileNotFoundError as exc:
        raise ImageLoadError(path, "file not found") from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(path, "is a directory, not an image file") from exc
    except PermissionError as exc:
        raise ImageLoadError(path, "permission denied") from exc
    except OSError as exc:
        raise ImageLoadError(path, f"cannot open file ({exc.strerror or exc})") from exc
    with file:
        try:
            info = os.fstat(file.fileno())
        except OSError as exc:
            raise ImageLoadError(path, f"cannot open file ({exc.strerror or exc})") from exc
        if stat.S_ISDIR(info.st_mode):
            raise ImageLoadError(path, "is a directory, not an image file")
        if stat.S_ISREG(info.st_mode) and info.st_size == 0:
            raise ImageLoadError(path, "file is empty (0 bytes)")
        return _decode_stream(file, path, max_pixels)


def _decode_stream(stream: IO[bytes], name: str, max_pixels: int) -> Image.Image:
    """Open ``stream`` with Pillow, check the header size, decode and convert to RGB."""
    with warnings.catch_warnings():
        _bomb_warnings_filter(max_pixels)
        try:
            opened = Image.open(stream)
        except UnidentifiedImageError as exc:
            raise ImageLoadError(name, _unidentified_reason(stream)) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(name, exc, max_pixels) from exc
        except MemoryError as exc:
            raise ImageLoadError(name, "not enough memory to read the image header") from exc
        except DECODE_ERRORS as exc:
            raise ImageLoadError(name, "truncated or corrupt image data") from exc
        # Drops Pillow's reference to the stream (multi-frame images keep one for seeking); the
        # caller's `with` closes the file itself, and the result is a detached RGB copy anyway.
        with opened:
            return _finish(opened, name, max_pixels)


def _finish(image: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """Size check from the header, full decode, orientation and RGB conversion."""
    # Before load(): for a file Pillow has only read the header, so nothing big is allocated yet.
    _check_pixels(image.size, name, max_pixels)
    with warnings.catch_warnings():
        _bomb_warnings_filter(max_pixels)
        _decode_pixels(image, name, max_pixels)
    # Some formats (GIF frames reaching past the logical screen) grow while decoding.
    _check_pixels(image.size, name, max_pixels)
    return to_rgb(_apply_exif_orientation(image), name)


def _decode_pixels(image: Image.Image, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """``image.load()``, with every decoder failure turned into :class:`ImageLoadError`."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(name, exc, max_pixels) from exc
    except MemoryError as exc:
        raise ImageLoadError(name, "not enough memory to decode the image") from exc
    except DECODE_ERRORS as exc:
        # Truncation (OSError "image file is truncated"), bad checksums, broken zlib or JPEG
        # streams: all the same to a user, whose file needs replacing.
        raise ImageLoadError(name, "truncated or corrupt image data") from exc


def _bomb_warnings_filter(max_pixels: int) -> None:
    """Set, inside an active ``warnings.catch_warnings()``, what Pillow's bomb warning does.

    Pillow warns above ``Image.MAX_IMAGE_PIXELS`` (about 89.5 M) and raises above twice that.
    Our limit (``max_pixels``) is the one that counts, so the warning is an error exactly when
    it proves the image is above our limit (``max_pixels <= MAX_IMAGE_PIXELS``). With a larger
    ``max_pixels`` (the 128 M default) the warning is ignored: our own size checks, before and
    after decoding, decide, and an image of 100 M pixels is accepted as configured.
    ``catch_warnings`` restores the filters afterwards, so no global state changes. (Before
    Python 3.14 the filter list is process-wide while the block runs, so another thread may see
    this one filter briefly; it only concerns ``DecompressionBombWarning``.)
    """
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and max_pixels <= pil_limit:
        warnings.simplefilter("error", Image.DecompressionBombWarning)
    else:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(name, "image has zero size")
    pixels = width * height
    if pixels > max_pixels:
        raise ImageLoadError(
            name, f"image is {width} x {height} = {pixels} pixels, above the limit of {max_pixels}"
        )


def _bomb_error(name: str, exc: Exception, max_pixels: int) -> ImageLoadError:
    """Report Pillow's own decompression-bomb refusal like ours (Pillow gives no width/height)."""
    pil_limit = Image.MAX_IMAGE_PIXELS or max_pixels
    if isinstance(exc, Image.DecompressionBombError):
        pil_limit *= 2
    limit = min(max_pixels, pil_limit)
    found = _PIL_BOMB_PIXELS.search(str(exc))
    if found is None:
        return ImageLoadError(name, f"image is above the limit of {limit} pixels ({exc})")
    return ImageLoadError(name, f"image is {found.group(1)} pixels, above the limit of {limit}")


def _unidentified_reason(stream: IO[bytes]) -> str:
    """Why Pillow could not identify ``stream``, as precisely as its first bytes allow.

    Pillow reports a file whose header it cannot parse as "cannot identify", even when the file
    clearly starts as a PNG or JPEG. For the common formats, the signature tells us the file is
    an image with a broken (cut or zero-sized) header, which is what the user needs to hear.
    """
    try:
        stream.seek(0)
        head = stream.read(32)
    except (OSError, ValueError):
        return "not a recognised image format"
    if head.startswith(_PNG_SIGNATURE) and len(head) >= 24 and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            return "image has zero size"
    if head.startswith(_KNOWN_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "truncated or corrupt image data"
    return "not a recognised image format"


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """The image rotated/flipped as its EXIF Orientation tag says (a new image), else ``image``."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except DECODE_ERRORS:
        # Unreadable EXIF says nothing reliable about orientation, and the pixels themselves
        # decoded fine, so the image is kept as stored rather than refused.
        return image
    if orientation not in range(2, 9):
        return image  # saves exif_transpose's unconditional copy for the common case
    try:
        return ImageOps.exif_transpose(image)
    except DECODE_ERRORS:
        return image


# --------------------------------------------------------------------------------------------
# Mode conversion helpers


def _has_transparency(image: Image.Image) -> bool:
    # The rule of Pillow's ``has_transparency_data``, written out: in Pillow 13 that is a property,
    # and relying on its exact form across the Pillow versions we allow (>= 11) gains nothing.
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode.endswith("A")


def _over_white(image: Image.Image) -> Image.Image:
    """Composite an image with transparency over an opaque white background."""
    if image.mode == "La":
        image = image.convert("LA")  # Pillow has no direct La -> RGBA conversion
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    # paste with the RGBA image as its own mask blends by alpha, in C, without float copies.
    background.paste(rgba, (0, 0), rgba)
    return background


def _int_to_uint8(image: Image.Image) -> npt.NDArray[np.uint8]:
    """8-bit grey from a 16-bit (``I;16*``) or 32-bit (``I``) integer image; see :func:`to_rgb`."""
    values = np.asarray(image)
    if values.ndim != 2:
        raise ValueError(f"expected a single-channel image, got array shape {values.shape}")
    if image.mode == "I" and int(values.max()) <= 255:
        grey = np.clip(values, 0, 255).astype(np.uint8)
    else:
        # round(v / 257) in integers: (v + 128) // 257, with v first limited to 0..65535.
        wide = np.clip(values, 0, 65535).astype(np.uint32)
        grey = ((wide + 128) // 257).astype(np.uint8)
    key = image.info.get("transparency")
    if isinstance(key, int) and not isinstance(key, bool):
        grey[values == key] = 255  # fully transparent over white
    return grey


def _float_to_uint8(image: Image.Image) -> npt.NDArray[np.uint8]:
    """8-bit grey from a float (``F``) image; see :func:`to_rgb`."""
    values = np.array(image, dtype=np.float32)  # a private copy, modified in place below
    np.nan_to_num(values, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    if float(values.max()) <= 1.0:
        values *= 255.0
    np.clip(values, 0.0, 255.0, out=values)
    np.rint(values, out=values)
    return values.astype(np.uint8)


def _grey_to_rgb(grey: npt.NDArray[np.uint8]) -> Image.Image:
    return Image.fromarray(grey).convert("RGB")
