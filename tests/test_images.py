"""Tests for pixelreasoner.vision.images: every broken file fails clearly, every mode becomes RGB.

All inputs are built in ``tmp_path`` or in memory; nothing is downloaded. The bomb cases write
only a PNG header (a few dozen bytes) and check that nothing was decoded.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import resource
import struct
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pixelreasoner.vision.budget import PixelBudget
from pixelreasoner.vision.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    load_frames,
    load_image,
    to_rgb,
)

WHITE = (255, 255, 255)
RED = (255, 0, 0)
BLUE = (0, 0, 255)

# --------------------------------------------------------------------------------------------
# Helpers


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random RGB pixels: they compress badly, so half a file really is half of the data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_header_only(width: int, height: int, color_type: int = 0) -> bytes:
    """A well-formed PNG whose header claims ``width x height`` but holds only a few bytes.

    Decoding it would allocate the full image, so a fast, low-memory rejection proves the size
    was checked from the header.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _pixels(image: Image.Image) -> list[tuple[int, ...]]:
    """All pixels, row by row."""
    return [tuple(int(v) for v in p) for p in np.asarray(image).reshape(-1, len(image.getbands()))]


def _assert_rgb(image: Image.Image, size: tuple[int, int]) -> None:
    assert image.mode == "RGB"
    assert image.size == size
    # A plain in-memory image: decoded, and not tied to any file.
    assert not isinstance(image, ImageFile.ImageFile)


def _assert_close(actual: list[tuple[int, ...]], expected: list[tuple[int, ...]], tol: int) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert all(abs(g - w) <= tol for g, w in zip(got, want, strict=True)), (actual, expected)


def _open_fds_to(path: Path) -> list[str]:
    """File descriptors of this process that point at ``path`` (Linux /proc)."""
    if not os.path.isdir("/proc/self/fd"):
        return []  # not Linux: the check is skipped
    target = os.path.realpath(path)
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                found.append(fd)
        except OSError:
            continue
    return found


def _expect_error(call: Callable[[], object], source: str, reason: str) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        call()
    error = info.value
    assert error.source == source
    assert error.reason == reason
    assert str(error) == f"{source}: {reason}"
    return error


# --------------------------------------------------------------------------------------------
# Broken files


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "does_not_exist.png"


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "a_directory.png"
    path.mkdir()
    return path


def _empty(tmp_path: Path) -> Path:
    return _write(tmp_path, "empty.png", b"")


def _text(tmp_path: Path) -> Path:
    return _write(tmp_path, "notes.jpg", b"this is a text file, not a picture\n")


def _random_bytes(tmp_path: Path) -> Path:
    return _write(tmp_path, "noise.png", np.random.default_rng(1).bytes(4096))


def _png_cut_in_half(tmp_path: Path) -> Path:
    data = _encode(_noise(64, 64), "PNG")
    return _write(tmp_path, "half.png", data[: len(data) // 2])


def _jpeg_cut_in_half(tmp_path: Path) -> Path:
    data = _encode(_noise(64, 64), "JPEG", quality=90)
    return _write(tmp_path, "half.jpg", data[: len(data) // 2])


def _png_header_cut(tmp_path: Path) -> Path:
    data = _encode(_noise(8, 8), "PNG")
    return _write(tmp_path, "header_cut.png", data[:20])


def _png_bad_checksum(tmp_path: Path) -> Path:
    data = bytearray(_encode(_noise(64, 64), "PNG"))
    data[100:120] = b"\xff" * 20  # inside the IDAT chunk: its CRC no longer matches
    return _write(tmp_path, "bad_crc.png", bytes(data))


def _gif_cut_in_half(tmp_path: Path) -> Path:
    data = _encode(_noise(64, 64).convert("P"), "GIF")
    return _write(tmp_path, "half.gif", data[: len(data) // 2])


def _zero_width_png(tmp_path: Path) -> Path:
    return _write(tmp_path, "zero_width.png", _png_header_only(0, 10))


def _zero_height_png(tmp_path: Path) -> Path:
    return _write(tmp_path, "zero_height.png", _png_header_only(10, 0))


NOT_AN_IMAGE = "not a recognised image format"
CORRUPT = "truncated or corrupt image data"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(_missing, "file not found", id="missing"),
        pytest.param(_directory, "is a directory, not an image file", id="directory"),
        pytest.param(_empty, "file is empty (0 bytes)", id="empty-file"),
        pytest.param(_text, NOT_AN_IMAGE, id="text-file"),
        pytest.param(_random_bytes, NOT_AN_IMAGE, id="random-bytes"),
        pytest.param(_png_cut_in_half, CORRUPT, id="png-truncated"),
        pytest.param(_jpeg_cut_in_half, CORRUPT, id="jpeg-truncated"),
        pytest.param(_gif_cut_in_half, CORRUPT, id="gif-truncated"),
        pytest.param(_png_header_cut, CORRUPT, id="png-header-cut"),
        pytest.param(_png_bad_checksum, CORRUPT, id="png-bad-crc"),
        pytest.param(_zero_width_png, "image has zero size", id="png-zero-width"),
        pytest.param(_zero_height_png, "image has zero size", id="png-zero-height"),
    ],
)
def test_broken_file_raises_image_load_error(
    tmp_path: Path, make: Callable[[Path], Path], reason: str
) -> None:
    path = make(tmp_path)
    error = _expect_error(lambda: load_image(path), str(path), reason)
    assert isinstance(error, ValueError)
    assert str(path) in str(error)
    # Failing must not leak the file handle either.
    if path.is_file():
        assert _open_fds_to(path) == []


def test_truncated_images_are_not_silently_repaired(tmp_path: Path) -> None:
    path = _jpeg_cut_in_half(tmp_path)
    _expect_error(lambda: load_image(path), str(path), CORRUPT)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_path_objects_and_strings_name_the_file(tmp_path: Path) -> None:
    path = _png_cut_in_half(tmp_path)
    _expect_error(lambda: load_image(str(path)), str(path), CORRUPT)
    _expect_error(lambda: load_image(path), str(path), CORRUPT)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"", "no image data (0 bytes)", id="empty"),
        pytest.param(b"GIF87a? no", CORRUPT, id="gif-signature-only"),
        pytest.param(b"hello", NOT_AN_IMAGE, id="text"),
        pytest.param(b"\xff\xd8\xff\xe0\x00", CORRUPT, id="jpeg-signature-only"),
        pytest.param(b"II*\x00\x08\x00", CORRUPT, id="tiff-signature-only"),
        pytest.param(b"RIFF\x10\x00\x00\x00WEBPVP8 ", CORRUPT, id="webp-signature-only"),
        pytest.param(_encode(_noise(32, 32), "PNG")[:300], CORRUPT, id="png-truncated"),
        pytest.param(_png_header_only(0, 4), "image has zero size", id="png-zero-size"),
    ],
)
def test_broken_bytes_are_named_bytes(data: bytes, reason: str) -> None:
    _expect_error(lambda: load_image(data), "<bytes>", reason)


def test_zero_size_pil_image() -> None:
    _expect_error(lambda: load_image(Image.new("RGB", (0, 5))), "<PIL image>", "image has zero size")
    _expect_error(lambda: to_rgb(Image.new("L", (5, 0)), "frame.png"), "frame.png", "image has zero size")


def test_wrong_argument_types_are_programming_errors() -> None:
    with pytest.raises(TypeError):
        load_image(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(Image.new("RGB", (1, 1)), max_pixels=0)


def test_error_pickles_for_worker_processes() -> None:
    error = ImageLoadError("/data/a.png", "file not found")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.source, copy.reason, str(copy)) == ("/data/a.png", "file not found", str(error))


# --------------------------------------------------------------------------------------------
# Pixel limits and decompression bombs


def test_default_limit_matches_pixel_budget() -> None:
    field = {f.name: f for f in dataclasses.fields(PixelBudget)}["max_decode_pixels"]
    assert field.default == DEFAULT_MAX_PIXELS == 128_000_000


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


@pytest.mark.parametrize(
    ("width", "height", "max_pixels", "reason"),
    [
        # Above Pillow's hard limit too: Pillow refuses in Image.open, we report it our way.
        pytest.param(
            60_000,
            60_000,
            DEFAULT_MAX_PIXELS,
            "image is 3600000000 pixels, above the limit of 128000000",
            id="60000x60000-pillow-hard-limit",
        ),
        # Between Pillow's warning (89.5 M) and its hard limit: our header check decides.
        pytest.param(
            12_000,
            12_000,
            DEFAULT_MAX_PIXELS,
            "image is 12000 x 12000 = 144000000 pixels, above the limit of 128000000",
            id="12000x12000-our-limit",
        ),
        pytest.param(
            10_000,
            10_000,
            99_999_999,
            "image is 10000 x 10000 = 100000000 pixels, above the limit of 99999999",
            id="10000x10000-custom-limit",
        ),
        # A limit below Pillow's warning level: the warning itself becomes the error.
        pytest.param(
            10_000,
            10_000,
            50_000_000,
            "image is 100000000 pixels, above the limit of 50000000",
            id="10000x10000-pillow-warning-as-error",
        ),
    ],
)
def test_bomb_rejected_from_header_before_decoding(
    tmp_path: Path, width: int, height: int, max_pixels: int, reason: str
) -> None:
    path = _write(tmp_path, "bomb.png", _png_header_only(width, height))
    filters_before = list(warnings.filters)
    rss_before = _max_rss_bytes()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape either
        _expect_error(lambda: load_image(path, max_pixels=max_pixels), str(path), reason)
    assert time.perf_counter() - start < 1.0
    # The reason is the size, not "truncated or corrupt image data" (what decoding these few
    # IDAT bytes would give), so the size was checked first. Decoding would also have allocated
    # at least 100 MB (100 M grey pixels).
    assert _max_rss_bytes() - rss_before < 50 * 1024 * 1024
    assert warnings.filters == filters_before  # the local filter did not leak
    assert _open_fds_to(path) == []


def test_bomb_from_bytes() -> None:
    _expect_error(
        lambda: load_image(_png_header_only(60_000, 60_000)),
        "<bytes>",
        "image is 3600000000 pixels, above the limit of 128000000",
    )


@pytest.mark.parametrize(
    ("max_pixels", "ok"),
    [pytest.param(199, False, id="limit-199"), pytest.param(200, True, id="limit-200")],
)
def test_max_pixels_with_small_image(tmp_path: Path, max_pixels: int, ok: bool) -> None:
    path = _write(tmp_path, "small.png", _encode(Image.new("RGB", (20, 10), RED), "PNG"))
    if ok:
        _assert_rgb(load_image(path, max_pixels=max_pixels), (20, 10))
    else:
        reason = "image is 20 x 10 = 200 pixels, above the limit of 199"
        _expect_error(lambda: load_image(path, max_pixels=max_pixels), str(path), reason)


def test_max_pixels_applies_to_pil_images() -> None:
    image = Image.new("RGB", (20, 10))
    reason = "image is 20 x 10 = 200 pixels, above the limit of 150"
    _expect_error(lambda: load_image(image, max_pixels=150), "<PIL image>", reason)


def test_our_limit_overrides_pillow_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With max_pixels above Pillow's warning level, an image between the two loads, silently."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # warn above 100, refuse above 200
    path = _write(tmp_path, "ok.png", _encode(Image.new("RGB", (20, 10), RED), "PNG"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_image(path, max_pixels=1000)
    _assert_rgb(image, (20, 10))
    assert image.getpixel((0, 0)) == RED


def test_pillow_hard_limit_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # refuse above 200
    path = _write(tmp_path, "big.png", _encode(Image.new("RGB", (30, 10), RED), "PNG"))
    reason = "image is 300 pixels, above the limit of 200"
    _expect_error(lambda: load_image(path, max_pixels=1000), str(path), reason)


# --------------------------------------------------------------------------------------------
# Mode conversion


def _image(
    mode: str, values: list[object], palette: list[int] | None = None, palette_mode: str = "RGB"
) -> Image.Image:
    """A ``len(values) x 1`` image of ``mode`` with the given pixel values."""
    image = Image.new(mode, (len(values), 1))
    if palette is not None:
        image.putpalette(palette, palette_mode)
    for x, value in enumerate(values):
        image.putpixel((x, 0), value)  # type: ignore[arg-type]
    return image


def _with_key(image: Image.Image, key: object) -> Image.Image:
    image.info["transparency"] = key
    return image


def _sixteen_bit(mode: str) -> Image.Image:
    return _image(mode, [0, 257, 32768, 65535])


SIXTEEN_BIT_EXPECTED = [(0, 0, 0), (1, 1, 1), (128, 128, 128), WHITE]

# (image, expected pixels, tolerance)
MODE_CASES = [
    pytest.param(_image("RGB", [(1, 2, 3), (250, 128, 0)]), [(1, 2, 3), (250, 128, 0)], 0, id="RGB"),
    pytest.param(
        _image("RGBA", [(0, 0, 0, 0), (255, 0, 0, 128), (10, 20, 30, 255), (0, 0, 255, 0)]),
        [WHITE, (255, 128, 128), (10, 20, 30), WHITE],
        1,
        id="RGBA-over-white",
    ),
    pytest.param(
        _image("RGBa", [(100, 0, 0, 128), (0, 0, 0, 0)]), [(227, 127, 127), WHITE], 2, id="RGBa-premultiplied"
    ),
    pytest.param(
        _image("LA", [(0, 0), (0, 128), (100, 255)]),
        [WHITE, (128, 128, 128), (100, 100, 100)],
        1,
        id="LA-over-white",
    ),
    pytest.param(_image("La", [(100, 128), (0, 0)]), [(227, 227, 227), WHITE], 2, id="La-premultiplied"),
    pytest.param(
        _image("PA", [(0, 0), (1, 255), (1, 128)], palette=[255, 0, 0, 0, 0, 255]),
        [WHITE, BLUE, (128, 128, 255)],
        1,
        id="PA-over-white",
    ),
    pytest.param(
        _with_key(_image("P", [0, 1], palette=[255, 0, 0, 0, 0, 255]), 0),
        [WHITE, BLUE],
        0,
        id="P-transparent-index",
    ),
    pytest.param(
        _image("P", [0, 1, 2], palette=[255, 0, 0, 255, 0, 0, 255, 0, 0, 0, 255, 128], palette_mode="RGBA"),
        [RED, WHITE, (127, 127, 255)],
        1,
        id="P-rgba-palette",
    ),
    pytest.param(_image("P", [1, 0], palette=[255, 0, 0, 0, 0, 255]), [BLUE, RED], 0, id="P-opaque"),
    pytest.param(_with_key(_image("L", [7, 200]), 7), [WHITE, (200, 200, 200)], 0, id="L-transparent-key"),
    pytest.param(
        _with_key(_image("RGB", [(1, 2, 3), RED]), (1, 2, 3)), [WHITE, RED], 0, id="RGB-transparent-key"
    ),
    pytest.param(_image("L", [0, 128, 255]), [(0, 0, 0), (128, 128, 128), WHITE], 0, id="L"),
    pytest.param(_image("1", [0, 1]), [(0, 0, 0), WHITE], 0, id="1"),
    pytest.param(
        _image("CMYK", [(0, 0, 0, 0), (0, 255, 255, 0), (0, 0, 0, 255)]),
        [WHITE, RED, (0, 0, 0)],
        0,
        id="CMYK",
    ),
    pytest.param(_image("YCbCr", [(255, 128, 128), (0, 128, 128)]), [WHITE, (0, 0, 0)], 1, id="YCbCr"),
    pytest.param(_image("LAB", [(255, 128, 128), (0, 128, 128)]), [WHITE, (0, 0, 0)], 2, id="LAB"),
    pytest.param(_image("HSV", [(0, 255, 255), (0, 0, 255)]), [RED, WHITE], 0, id="HSV"),
    pytest.param(_image("RGBX", [(1, 2, 3, 0)]), [(1, 2, 3)], 0, id="RGBX"),
    pytest.param(_sixteen_bit("I;16"), SIXTEEN_BIT_EXPECTED, 0, id="I;16"),
    pytest.param(_sixteen_bit("I;16B"), SIXTEEN_BIT_EXPECTED, 0, id="I;16B"),
    pytest.param(_sixteen_bit("I;16L"), SIXTEEN_BIT_EXPECTED, 0, id="I;16L"),
    pytest.param(_sixteen_bit("I;16N"), SIXTEEN_BIT_EXPECTED, 0, id="I;16N"),
    pytest.param(
        _with_key(_image("I;16", [1000, 65535]), 1000), [WHITE, WHITE], 0, id="I;16-transparent-key"
    ),
    pytest.param(
        _image("I", [0, 7, 255, -5]), [(0, 0, 0), (7, 7, 7), WHITE, (0, 0, 0)], 0, id="I-8bit-range-kept"
    ),
    pytest.param(
        _image("I", [0, 32768, 65535, 70000, -1]),
        [(0, 0, 0), (128, 128, 128), WHITE, WHITE, (0, 0, 0)],
        0,
        id="I-16bit-range-scaled",
    ),
    pytest.param(
        _image("F", [0.0, 0.5, 1.0, -0.2]),
        [(0, 0, 0), (128, 128, 128), WHITE, (0, 0, 0)],
        0,
        id="F-unit-range",
    ),
    pytest.param(
        _image("F", [0.0, 100.4, 300.0, -3.0, float("nan")]),
        [(0, 0, 0), (100, 100, 100), WHITE, (0, 0, 0), (0, 0, 0)],
        0,
        id="F-clipped",
    ),
]


@pytest.mark.parametrize(("image", "expected", "tol"), MODE_CASES)
def test_mode_conversion(image: Image.Image, expected: list[tuple[int, ...]], tol: int) -> None:
    before = image.tobytes(), image.mode, dict(image.info)
    for result in (load_image(image), to_rgb(image)):
        _assert_rgb(result, image.size)
        assert result is not image
        _assert_close(_pixels(result), expected, tol)
    assert (image.tobytes(), image.mode, dict(image.info)) == before  # the input is left alone


def test_every_pillow_mode_is_handled() -> None:
    modes = set(getattr(Image, "MODES", []))
    covered = {case.values[0].mode for case in MODE_CASES}  # type: ignore[union-attr]
    assert modes <= covered, modes - covered


# Files on disk, through each format's own decoder.
FILE_CASES = [
    pytest.param(
        lambda: _image("RGBA", [(0, 0, 0, 0), (255, 0, 0, 128)]),
        "PNG",
        {},
        [WHITE, (255, 128, 128)],
        1,
        id="png-rgba",
    ),
    pytest.param(lambda: _sixteen_bit("I;16"), "PNG", {}, SIXTEEN_BIT_EXPECTED, 0, id="png-16bit-grey"),
    pytest.param(
        lambda: _image("P", [0, 1], palette=[255, 0, 0, 0, 0, 255]),
        "PNG",
        {"transparency": 0},
        [WHITE, BLUE],
        0,
        id="png-palette-trns",
    ),
    pytest.param(
        lambda: _image("L", [10, 20]),
        "PNG",
        {"transparency": 10},
        [WHITE, (20, 20, 20)],
        0,
        id="png-grey-trns",
    ),
    pytest.param(
        lambda: _image("P", [0, 1], palette=[255, 0, 0, 0, 0, 255]),
        "GIF",
        {"transparency": 1},
        [RED, WHITE],
        0,
        id="gif-transparent",
    ),
    pytest.param(
        lambda: _image("CMYK", [(0, 0, 0, 0), (0, 255, 255, 0)]), "TIFF", {}, [WHITE, RED], 0, id="tiff-cmyk"
    ),
    pytest.param(
        lambda: _image("F", [0.0, 0.5, 1.0]), "TIFF", {}, [(0, 0, 0), (128,) * 3, WHITE], 0, id="tiff-float"
    ),
    pytest.param(lambda: _image("I", [0, 65535]), "TIFF", {}, [(0, 0, 0), WHITE], 0, id="tiff-int32"),
    pytest.param(
        lambda: Image.new("CMYK", (8, 8), (0, 0, 0, 0)),
        "JPEG",
        {"quality": 95},
        [WHITE] * 64,
        2,
        id="jpeg-cmyk",
    ),
    pytest.param(
        lambda: Image.new("L", (8, 8), 90), "JPEG", {"quality": 95}, [(90,) * 3] * 64, 2, id="jpeg-grey"
    ),
]


@pytest.mark.parametrize(("make", "fmt", "params", "expected", "tol"), FILE_CASES)
def test_file_formats_decode_to_rgb(
    tmp_path: Path,
    make: Callable[[], Image.Image],
    fmt: str,
    params: dict[str, object],
    expected: list[tuple[int, ...]],
    tol: int,
) -> None:
    source = make()
    path = _write(tmp_path, f"image.{fmt.lower()}", _encode(source, fmt, **params))
    for result in (load_image(path), load_image(path.read_bytes())):
        _assert_rgb(result, source.size)
        _assert_close(_pixels(result), expected, tol)
    assert _open_fds_to(path) == []


def test_rgb_file_is_detached_and_loaded(tmp_path: Path) -> None:
    path = _write(tmp_path, "photo.png", _encode(_noise(16, 8), "PNG"))
    image = load_image(path)
    _assert_rgb(image, (16, 8))
    assert _open_fds_to(path) == []
    path.unlink()  # the pixels must not depend on the file any more
    assert image.copy().tobytes() == _noise(16, 8).tobytes()


# --------------------------------------------------------------------------------------------
# Multi-frame files and EXIF orientation


def test_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 4), RED), Image.new("RGB", (6, 4), BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 2
    image = load_image(path)
    _assert_rgb(image, (6, 4))
    assert set(_pixels(image)) == {RED}
    assert _open_fds_to(path) == []


def test_multipage_tiff_uses_first_page(tmp_path: Path) -> None:
    pages = [Image.new("RGB", (5, 3), BLUE), Image.new("L", (9, 9), 0)]
    path = tmp_path / "pages.tiff"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    image = load_image(path)
    _assert_rgb(image, (5, 3))
    assert set(_pixels(image)) == {BLUE}
    assert _open_fds_to(path) == []


def _left_red_right_blue() -> Image.Image:
    """4 x 2: left half red, right half blue."""
    image = Image.new("RGB", (4, 2), BLUE)
    image.paste(RED, (0, 0, 2, 2))
    return image


@pytest.mark.parametrize(
    ("orientation", "size", "red_at", "blue_at"),
    [
        pytest.param(1, (4, 2), (0, 0), (3, 0), id="1-upright"),
        pytest.param(3, (4, 2), (3, 0), (0, 0), id="3-rotate-180"),
        pytest.param(6, (2, 4), (0, 0), (0, 3), id="6-rotate-90-cw"),
        pytest.param(8, (2, 4), (0, 3), (0, 0), id="8-rotate-90-ccw"),
    ],
)
def test_exif_orientation_is_applied(
    tmp_path: Path,
    orientation: int,
    size: tuple[int, int],
    red_at: tuple[int, int],
    blue_at: tuple[int, int],
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _write(tmp_path, "rotated.png", _encode(_left_red_right_blue(), "PNG", exif=exif))
    image = load_image(path)
    _assert_rgb(image, size)
    assert image.getpixel(red_at) == RED
    assert image.getpixel(blue_at) == BLUE


def test_corrupt_exif_keeps_image_as_stored(tmp_path: Path) -> None:
    data = _encode(_left_red_right_blue(), "PNG", exif=b"Exif\x00\x00garbage-not-tiff")
    image = load_image(_write(tmp_path, "bad_exif.png", data))
    _assert_rgb(image, (4, 2))
    assert image.getpixel((0, 0)) == RED


# --------------------------------------------------------------------------------------------
# Video frames


def test_load_frames_resizes_to_first_frame(tmp_path: Path) -> None:
    first = _write(tmp_path, "f0.png", _encode(Image.new("RGB", (8, 6), RED), "PNG"))
    second = _encode(Image.new("L", (4, 4), 255), "PNG")
    third = Image.new("RGBA", (16, 12), (0, 0, 255, 255))
    frames = load_frames([first, second, third])
    assert len(frames) == 3
    for frame in frames:
        _assert_rgb(frame, (8, 6))
    assert set(_pixels(frames[0])) == {RED}
    assert set(_pixels(frames[1])) == {WHITE}
    assert set(_pixels(frames[2])) == {BLUE}


def test_load_frames_empty_is_an_error() -> None:
    _expect_error(lambda: load_frames([]), "<frames>", "no frames given")


def test_load_frames_names_the_bad_frame(tmp_path: Path) -> None:
    good = _write(tmp_path, "good.png", _encode(Image.new("RGB", (4, 4)), "PNG"))
    bad = _png_cut_in_half(tmp_path)
    error = _expect_error(lambda: load_frames([good, bad, good]), str(bad), CORRUPT)
    assert str(good) not in str(error)
    _expect_error(lambda: load_frames([good, b"junk"]), "<bytes> (frame 1)", NOT_AN_IMAGE)
    _expect_error(
        lambda: load_frames([good, tmp_path / "gone.png"]), str(tmp_path / "gone.png"), "file not found"
    )


def test_load_frames_applies_the_limit_per_frame(tmp_path: Path) -> None:
    small = Image.new("RGB", (10, 10))
    big = Image.new("RGB", (20, 10))
    assert len(load_frames([small, small], max_pixels=100)) == 2
    reason = "image is 20 x 10 = 200 pixels, above the limit of 100"
    _expect_error(lambda: load_frames([small, big], max_pixels=100), "<PIL image> (frame 1)", reason)


def test_load_frames_refuses_a_single_path(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        load_frames(str(tmp_path / "video.png"))
