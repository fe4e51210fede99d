"""Image bytes -> an RGB array, with the size checked before the pixels are decoded.

decode_image(data, max_pixels) -> (H, W, 3) uint8 RGB, upright (EXIF orientation applied).
decode_working(data, max_pixels, working_pixels) -> (pixels, scale): the same image shrunk to at
  most working_pixels (a JPEG is decoded at 1/2, 1/4 or 1/8 scale by the DCT first, so its full
  frame never exists); scale maps its coordinates back to the full image's.
image_pixels(data) -> width x height from the header (0 when unreadable), without decoding.
Raises FaceError(IMAGE_TOO_LARGE) when the header declares more than max_pixels pixels, and
FaceError(BAD_IMAGE) for bytes that are not a readable image of a supported format.
"""

import io
import math

import numpy as np
from PIL import Image, ImageOps

from worker.face.errors import BAD_IMAGE, IMAGE_TOO_LARGE, FaceError

# Formats a client may send. Others (EPS, which runs Ghostscript, and the rarer plugins) are refused.
_WANTED = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")
Image.init()
FORMATS = tuple(f for f in _WANTED if f in Image.OPEN)
_ORIENTATION = 0x0112  # the EXIF tag


def image_pixels(data: bytes) -> int:
    """The pixel count the image's header declares; 0 for bytes that are not a readable image."""
    try:
        width, height = Image.open(io.BytesIO(data), formats=FORMATS).size
    except Exception:
        return 0
    return width * height


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF, PNM, AVIF) to (H, W, 3) uint8 RGB.

    Greyscale, palette, CMYK and 16-bit images become 8-bit RGB; transparent pixels are composited
    over white; an animated image gives its first frame.
    """
    return decode_working(data, max_pixels, None)[0]


def decode_working(data: bytes, max_pixels: int, working_pixels: int | None) -> tuple[np.ndarray, float]:
    """decode_image, shrunk to at most working_pixels (None: full size). Returns the pixels and
    the scale from their coordinates to the full image's (1.0 when not shrunk)."""
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
    scale = 1.0
    if working_pixels and width * height > working_pixels:
        scale = math.sqrt(width * height / working_pixels)
    try:
        if scale > 1.0:
            image.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))  # JPEG only; others ignore it
        turned = scale > 1.0 and image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)  # width, height swapped
        image.load()
        image = ImageOps.exif_transpose(image)
        pixels = _to_rgb(image)
    except Exception:
        message = f"the {image.format} image could not be decoded (truncated, corrupt or an unsupported kind)"
        raise FaceError(BAD_IMAGE, message) from None
    if scale == 1.0:
        return pixels, 1.0
    return _shrink(pixels, height if turned else width, scale)


def _shrink(pixels: np.ndarray, full_width: int, scale: float) -> tuple[np.ndarray, float]:
    """pixels (maybe DCT-scaled already) resized so that the full image shrinks by scale."""
    height, width = pixels.shape[:2]
    target_width = max(1, int(full_width / scale))
    target_height = max(1, round(height * target_width / width))
    if (target_width, target_height) != (width, height):
        resized = Image.fromarray(pixels).resize((target_width, target_height), Image.Resampling.BILINEAR, reducing_gap=2.0)
        pixels = np.ascontiguousarray(np.asarray(resized))
    return pixels, full_width / target_width


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
