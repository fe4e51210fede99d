"""Image bytes -> an RGB array, with the size checked before the pixels are decoded.

decode_image(data, max_pixels) -> (H, W, 3) uint8 RGB, upright (EXIF orientation applied).
Raises FaceError(IMAGE_TOO_LARGE) when the header declares more than max_pixels pixels, and
FaceError(BAD_IMAGE) for bytes that are not a readable image of a supported format.
"""

import io

import numpy as np
from PIL import Image, ImageOps

from worker.face.errors import BAD_IMAGE, IMAGE_TOO_LARGE, FaceError

# Formats a client may send. Others (EPS, which runs Ghostscript, and the rarer plugins) are refused.
_WANTED = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")
Image.init()
FORMATS = tuple(f for f in _WANTED if f in Image.OPEN)


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF, PNM, AVIF) to (H, W, 3) uint8 RGB.

    Greyscale, palette, CMYK and 16-bit images become 8-bit RGB; transparent pixels are composited
    over white; an animated image gives its first frame.
    """
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
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except Exception:
        message = f"the {image.format} image could not be decoded (truncated, corrupt or an unsupported kind)"
        raise FaceError(BAD_IMAGE, message) from None


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
