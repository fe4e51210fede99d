"""decode_image: sizes checked from the header, bad bytes refused, every common mode made RGB."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from worker.face.decode import decode_image
from worker.face.errors import BAD_IMAGE, IMAGE_TOO_LARGE, FaceError

LIMIT = 25_000_000


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """An asymmetric image that survives JPEG well: gradients, and a bright block near the top left."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)], axis=2)
    image[4:16, 6:22] = (250, 250, 40)
    return image.astype(np.uint8)


def error_of(data: bytes, max_pixels: int = LIMIT) -> FaceError:
    with pytest.raises(FaceError) as caught:
        decode_image(data, max_pixels)
    return caught.value


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bilevel_png(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG of any size, compressed row by row (no large buffer)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then packed bits
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


# --- refused bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", bytes(range(256)) * 8, b"\xff\xd8\xff\xe0" + b"\x00" * 100],
    ids=["empty", "text", "noise", "jpeg-magic-only"],
)
def test_undecodable_bytes_are_bad_image(data):
    assert error_of(data).code == BAD_IMAGE


def test_truncated_jpeg_and_png_are_bad_image():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    for fmt in ("JPEG", "PNG"):
        data = encode(image, fmt)
        error = error_of(data[: len(data) // 2])
        assert error.code == BAD_IMAGE, fmt


def test_unsupported_format_is_bad_image():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert error_of(eps).code == BAD_IMAGE


def test_message_does_not_echo_the_bytes():
    data = b"SECRET-PAYLOAD-0123456789" * 4
    error = error_of(data)
    assert "SECRET" not in error.message and "0123456789" not in error.message
    assert error.message  # something a person can read


# --- size limit ------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [20_000, 8_000])
def test_huge_image_refused_from_its_header_without_decoding(monkeypatch, side):
    data = bilevel_png(side, side)  # a real, valid PNG (400 M pixels in about 50 kB)
    assert len(data) < 1_000_000

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    error = error_of(data)
    assert error.code == IMAGE_TOO_LARGE
    assert str(LIMIT) in error.message


def test_jpeg_header_declaring_huge_size_is_too_large_not_bad():
    data = bytearray(encode(Image.fromarray(smooth_rgb(16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", 20_000, 20_000)
    assert error_of(bytes(data)).code == IMAGE_TOO_LARGE


def test_limit_is_the_pixel_count():
    data = encode(Image.fromarray(smooth_rgb(50, 40)))
    assert decode_image(data, max_pixels=2000).shape == (50, 40, 3)
    assert error_of(data, max_pixels=1999).code == IMAGE_TOO_LARGE


# --- modes and orientation -------------------------------------------------------------------


def test_rgb_png_round_trips_exactly():
    pixels = smooth_rgb()
    decoded = decode_image(encode(Image.fromarray(pixels)), LIMIT)
    assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, pixels)


def test_greyscale_becomes_three_equal_channels():
    grey = smooth_rgb()[:, :, 0]
    decoded = decode_image(encode(Image.fromarray(grey, "L")), LIMIT)
    assert decoded.shape == grey.shape + (3,)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], grey)


def test_rgba_is_composited_over_white():
    pixels = smooth_rgb()
    alpha = np.full(pixels.shape[:2], 255, dtype=np.uint8)
    alpha[:, :10] = 0  # transparent stripe
    alpha[:, 10:20] = 128
    rgba = np.dstack([pixels, alpha])
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA")), LIMIT)
    assert decoded.shape == pixels.shape
    np.testing.assert_array_equal(decoded[:, 20:], pixels[:, 20:])
    assert (decoded[:, :10] == 255).all()
    half = (pixels[:, 10:20].astype(int) + 255) / 2
    assert np.abs(decoded[:, 10:20] - half).max() <= 1


def test_grey_with_alpha_and_bilevel():
    grey = smooth_rgb()[:, :, 1]
    la = Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA")
    np.testing.assert_array_equal(decode_image(encode(la), LIMIT)[:, :, 2], grey)
    bits = Image.fromarray(grey > 127)  # mode "1"
    decoded = decode_image(encode(bits), LIMIT)
    np.testing.assert_array_equal(decoded[:, :, 0], np.where(grey > 127, 255, 0))


def test_palette_image_with_and_without_transparency():
    pixels = smooth_rgb()
    palette = Image.fromarray(pixels).quantize(colors=64)
    expected = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(decode_image(encode(palette, "GIF"), LIMIT), expected)
    palette.info["transparency"] = 0
    decoded = decode_image(encode(palette, "PNG"), LIMIT)
    index = np.asarray(palette)
    assert (decoded[index == 0] == 255).all()
    np.testing.assert_array_equal(decoded[index != 0], expected[index != 0])


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    wide = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    image = Image.fromarray(wide)
    assert image.mode.startswith("I;16")
    decoded = decode_image(encode(image), LIMIT)
    assert np.abs(decoded[:, :, 0].astype(int) - wide.astype(int) // 257).max() <= 1
    assert decoded.max() > 200  # clipping to 255 would saturate, truncating would leave it dark


def test_cmyk_jpeg_becomes_rgb():
    pixels = smooth_rgb()
    cmyk = Image.fromarray(pixels).convert("CMYK")
    decoded = decode_image(encode(cmyk, "JPEG", quality=100), LIMIT)
    assert decoded.shape == pixels.shape
    assert np.abs(decoded.astype(int) - pixels).mean() < 4


def test_animated_gif_gives_the_first_frame():
    first = Image.fromarray(np.full((32, 32, 3), (200, 30, 30), dtype=np.uint8))
    second = Image.fromarray(np.full((32, 32, 3), (30, 30, 200), dtype=np.uint8))
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    decoded = decode_image(data, LIMIT)
    assert np.abs(decoded.astype(int) - (200, 30, 30)).max() <= 4


# What each EXIF orientation asks a viewer to do, written as: stored pixels from upright ones.
STORED = {
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),  # the viewer turns it 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_applied(orientation):
    upright = smooth_rgb(48, 64)
    stored = np.ascontiguousarray(STORED[orientation](upright))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(stored), "JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    decoded = decode_image(data, LIMIT)
    assert decoded.shape == upright.shape
    assert np.abs(decoded.astype(int) - upright).mean() < 2


# --- the working size ----------------------------------------------------------------------------


def test_large_jpeg_is_decoded_at_the_working_size():
    from worker.face.decode import decode_working, image_pixels, working_pixels

    pixels = np.asarray(Image.fromarray(smooth_rgb(48, 64)).resize((4000, 3000), Image.Resampling.BILINEAR))
    data = encode(Image.fromarray(pixels), "JPEG", quality=90)
    assert image_pixels(data) == 12_000_000
    small = decode_working(data, LIMIT, 1000)
    assert small.pixels.shape == (750, 1000, 3) and small.reduced
    assert working_pixels(data, 1000) == 750_000  # from the header, as decoded
    assert small.scale_x == pytest.approx(4.0) and small.scale_y == pytest.approx(4.0)  # the aspect ratio is kept
    assert (small.width, small.height) == (4000, 3000)
    full = decode_image(data, LIMIT)
    shrunk = np.asarray(Image.fromarray(full).resize((1000, 750), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(shrunk - small.pixels).mean() < 3  # the same picture, smaller


def test_small_or_unlimited_images_keep_their_size():
    from worker.face.decode import decode_working, working_pixels

    data = encode(Image.fromarray(smooth_rgb(48, 64)), "JPEG")
    small = decode_working(data, LIMIT, 1000)
    assert not small.reduced and small.scale_x == small.scale_y == 1.0
    assert working_pixels(data, 1000) == 48 * 64
    big = encode(Image.new("RGB", (3000, 2000), (10, 20, 30)))  # PNG: decoded, then resized
    assert decode_working(big, LIMIT, 8192).pixels.shape == (2000, 3000, 3)
    reduced = decode_working(big, LIMIT, 1500)
    assert reduced.pixels.shape == (1000, 1500, 3) and reduced.scale_x * 1500 == pytest.approx(3000)
    assert working_pixels(big, 1500) == 1_500_000


def test_working_size_follows_exif_rotation():
    from worker.face.decode import decode_working, working_pixels

    image = Image.new("RGB", (4000, 1000), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown as 1000 wide, 4000 high
    data = encode(image, "JPEG", exif=exif.tobytes())
    small = decode_working(data, LIMIT, 1000)
    assert small.pixels.shape == (1000, 250, 3)
    assert (small.width, small.height) == (1000, 4000)
    assert small.pixels.shape[1] * small.scale_x == pytest.approx(1000) and small.pixels.shape[
        0
    ] * small.scale_y == pytest.approx(4000)
    assert working_pixels(data, 1000) == 250_000


def test_image_pixels_of_bad_bytes_is_zero():
    from worker.face.decode import image_pixels, working_pixels

    assert image_pixels(b"not an image") == 0
    assert image_pixels(b"") == 0
    assert working_pixels(b"not an image", 1000) == 0
