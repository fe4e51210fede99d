"""Image bytes -> an RGB array, with the size checked before the pixels are decoded.

decode_image(data, max_pixels) -> (H, W, 3) uint8 RGB, upright (EXIF orientation applied).
decode_working(data, max_pixels, max_side) -> Working: an upright copy whose longest side is at
most max_side (JPEG decoded at the nearest DCT scale at or above it, then reduced; other formats
decoded, then reduced), with the factors that map it back to the original.
decode_region(data, max_pixels, box, scale) -> Region: the pixels of one region of the original at
(at least) a given fraction of its resolution, decoded at a reduced DCT scale when that suffices.
image_pixels(data) -> width x height from the header (0 when unreadable), without decoding;
working_pixels(data, max_side) -> the pixels of the copy decode_working makes, from the header.
Raises FaceError(IMAGE_TOO_LARGE) when the header declares more than max_pixels pixels, and
FaceError(BAD_IMAGE) for bytes that are not a readable image of a supported format.
"""

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from worker.face.errors import BAD_IMAGE, IMAGE_TOO_LARGE, FaceError

# Formats a client may send. Others (EPS, which runs Ghostscript, and the rarer plugins) are refused.
_WANTED = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")
Image.init()
FORMATS = tuple(f for f in _WANTED if f in Image.OPEN)

ORIENTATION_TAG = 0x0112
DCT_SCALES = (8, 4, 2, 1)  # libjpeg-turbo's reductions Pillow's draft can ask for
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a JPEG with extra frames, as some phones write


def image_pixels(data: bytes) -> int:
    """The pixel count the image's header declares; 0 for bytes that are not a readable image."""
    width, height = _header_size(data)
    return width * height


def working_pixels(data: bytes, max_side: int) -> int:
    """The pixel count of the working copy decode_working(data, ..., max_side) makes, read from
    the header without decoding; 0 for bytes that are not a readable image."""
    width, height = working_size(*_header_size(data), max_side)
    return width * height


def working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size of a width x height image with its longest side reduced to at most max_side."""
    factor = min(1.0, max_side / max(width, height, 1))
    if factor >= 1.0:
        return width, height
    return max(1, round(width * factor)), max(1, round(height * factor))


def _header_size(data: bytes) -> tuple[int, int]:
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS).size
    except Exception:
        return 0, 0


@dataclass
class Working:
    """An upright copy of an image for detection: original pixels per working pixel along x and
    y (both 1.0 when the copy is the image itself) and the original's upright size."""

    pixels: np.ndarray
    scale_x: float
    scale_y: float
    width: int
    height: int

    @property
    def reduced(self) -> bool:
        return self.scale_x > 1.0 or self.scale_y > 1.0


@dataclass
class Region:
    """Upright pixels of part of an image: original point (x, y) is at
    ((x - left) / scale_x, (y - top) / scale_y) in `pixels` (pixel centres at integers)."""

    pixels: np.ndarray
    left: float
    top: float
    scale_x: float
    scale_y: float

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) points (x, y) in region pixels -> original pixels."""
        points = np.asarray(points, dtype=np.float64)
        return np.stack([points[:, 0] * self.scale_x + self.left, points[:, 1] * self.scale_y + self.top], axis=1)


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF, PNM, AVIF) to (H, W, 3) uint8 RGB.

    Greyscale, palette, CMYK and 16-bit images become 8-bit RGB; transparent pixels are composited
    over white; an animated image gives its first frame.
    """
    image = _open(data, max_pixels)
    return _decoded(image, lambda: _to_rgb(ImageOps.exif_transpose(image)))


def decode_working(data: bytes, max_pixels: int, max_side: int) -> Working:
    """The image, upright, with its longest side reduced to at most max_side (never enlarged).

    JPEG is decoded at the smallest DCT scale (1/8, 1/4, 1/2) whose result is still at least the
    wanted size, then resized (antialiased) to it; other formats are decoded whole, then resized.
    """
    if max_side < 1:
        raise ValueError("max_side must be >= 1")
    image = _open(data, max_pixels)
    width, height = _upright_size(image)
    wanted = working_size(width, height, max_side)
    if wanted == (width, height):
        return Working(decode_image(data, max_pixels), 1.0, 1.0, width, height)

    def run() -> np.ndarray:
        stored = wanted if not _swaps_axes(image) else wanted[::-1]
        _draft(image, (math.ceil(stored[0]), math.ceil(stored[1])))
        upright = ImageOps.exif_transpose(image)
        if upright.size != wanted:
            upright = _reduce(upright, wanted)
        return _to_rgb(upright)

    pixels = _decoded(image, run)
    return Working(pixels, width / pixels.shape[1], height / pixels.shape[0], width, height)


def decode_region(data: bytes, max_pixels: int, box: tuple[float, float, float, float], scale: float) -> Region:
    """The region box = (left, top, right, bottom) of the upright original, clipped to it, at no
    less than `scale` of the original's resolution (0 < scale <= 1): a JPEG is decoded at the
    smallest DCT scale that gives it (the region cropped before it is turned upright), other
    formats whole, then cropped. The pixels are never enlarged."""
    image = _open(data, max_pixels)
    width, height = _upright_size(image)
    left, top = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    right, bottom = min(width - 1, math.ceil(box[2])), min(height - 1, math.ceil(box[3]))
    if left > right or top > bottom:
        raise FaceError(BAD_IMAGE, "the face lies outside the image")

    def run() -> Region:
        reduce = _dct_reduction(image, scale)
        stored_w, stored_h = image.size
        if reduce > 1:
            _draft(image, (math.ceil(stored_w / reduce), math.ceil(stored_h / reduce)))
        sx, sy = stored_w / image.size[0], stored_h / image.size[1]
        orientation = _orientation(image)
        # The region in stored pixels, then at the decoded scale (end exclusive), turned upright.
        l, t, r, b = _stored_box((left, top, right, bottom), orientation, width, height)
        cl, ct = math.floor(l / sx), math.floor(t / sy)
        cr, cb = min(image.size[0], math.ceil((r + 1) / sx)), min(image.size[1], math.ceil((b + 1) / sy))
        part = image.crop((cl, ct, cr, cb))
        if orientation in _TRANSPOSE:
            part = part.transpose(_TRANSPOSE[orientation])
        ul, ut, _, _ = _upright_box((cl, ct, cr - 1, cb - 1), orientation, *image.size)
        up_sx, up_sy = (sy, sx) if orientation in (5, 6, 7, 8) else (sx, sy)
        return Region(_to_rgb(part), (ul + 0.5) * up_sx - 0.5, (ut + 0.5) * up_sy - 0.5, up_sx, up_sy)

    return _decoded(image, run)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The opened image (header read, size checked, pixels not decoded yet)."""
    if not data:
        raise FaceError(BAD_IMAGE, "the image is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise FaceError(IMAGE_TOO_LARGE, f"the image is larger than the limit of {max_pixels} pixels") from None
    except Exception:
        raise FaceError(BAD_IMAGE, "the data is not an image in a supported format") from None

    width, height = image.size
    if width * height > max_pixels:
        raise FaceError(
            IMAGE_TOO_LARGE, f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    if width == 0 or height == 0:
        raise FaceError(BAD_IMAGE, "the image has no pixels")
    return image


def _decoded(image: Image.Image, run):
    """run() (which decodes the pixels), with any failure reported as bad_image."""
    try:
        return run()
    except FaceError:
        raise
    except Exception:
        message = f"the {image.format} image could not be decoded (truncated, corrupt or an unsupported kind)"
        raise FaceError(BAD_IMAGE, message) from None


# EXIF orientation: the transpose that turns the stored pixels upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if value in _TRANSPOSE else 1


def _swaps_axes(image: Image.Image) -> bool:
    return _orientation(image) in (5, 6, 7, 8)


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    return (height, width) if _swaps_axes(image) else (width, height)


def _upright_point(x: float, y: float, orientation: int, w: int, h: int) -> tuple[float, float]:
    """A stored pixel (x, y) of a w x h stored image -> its upright position."""
    return {
        1: (x, y),
        2: (w - 1 - x, y),
        3: (w - 1 - x, h - 1 - y),
        4: (x, h - 1 - y),
        5: (y, x),
        6: (h - 1 - y, x),
        7: (h - 1 - y, w - 1 - x),
        8: (y, w - 1 - x),
    }[orientation]


def _upright_box(box, orientation: int, w: int, h: int) -> tuple[float, float, float, float]:
    """A stored box (l, t, r, b inclusive) -> the upright box covering it."""
    l, t, r, b = box
    xs, ys = zip(*(_upright_point(x, y, orientation, w, h) for x in (l, r) for y in (t, b)))
    return min(xs), min(ys), max(xs), max(ys)


def _stored_box(box, orientation: int, width: int, height: int) -> tuple[float, float, float, float]:
    """An upright box of an upright width x height image -> the stored box holding it."""
    inverse = {6: 8, 8: 6}.get(orientation, orientation)  # the others are their own inverse
    l, t, r, b = box
    xs, ys = zip(*(_upright_point(x, y, inverse, width, height) for x in (l, r) for y in (t, b)))
    return min(xs), min(ys), max(xs), max(ys)


def _draft(image: Image.Image, size: tuple[int, int]) -> None:
    """Ask a JPEG to decode at the smallest DCT scale still at least `size` (a no-op for others)."""
    if image.format in JPEG_FORMATS:
        image.draft(image.mode, size)


def _dct_reduction(image: Image.Image, scale: float) -> int:
    """The largest DCT reduction (8, 4, 2, 1) keeping at least `scale` of the resolution (JPEG only)."""
    if image.format not in JPEG_FORMATS:
        return 1
    return next((r for r in DCT_SCALES if 1.0 / r >= scale - 1e-9), 1)


def _reduce(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An antialiased reduction to size (Pillow's reducing_gap: integer box reduction first)."""
    if image.mode not in ("RGB", "L"):
        image = Image.fromarray(_to_rgb(image))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> contiguous (H, W, 3) uint8 RGB."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _wide_grey_to_rgb(np.asarray(image), sixteen_bit=mode.startswith("I;16"))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _wide_grey_to_rgb(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """16-bit, 32-bit integer or float greyscale -> 8-bit RGB (values over 255 read as 16-bit)."""
    values = values.astype(np.float64)
    if sixteen_bit or values.max(initial=0) > 255:
        values = values / 257.0
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
