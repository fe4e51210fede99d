"""A photo's face between the working copy, the regions decoded again and the original: boxes
mapped between them, and the face's area reduced to the chip's scale. Regions map back to the
original with worker.face.decode.Region.
"""

import math

import numpy as np
from PIL import Image

from worker.face.align import chip_rect
from worker.face.decode import Region, Working
from worker.face.detect import clip_box
from worker.face.types import Box

CHIP_SIZE = 150


def original_box(box: Box, work: Working) -> Box:
    """A working-copy box -> the original pixels it covers (inclusive, clipped)."""
    if not work.reduced:
        return box
    return clip_box(
        math.floor(box.left * work.scale_x),
        math.floor(box.top * work.scale_y),
        math.ceil((box.right + 1) * work.scale_x) - 1,
        math.ceil((box.bottom + 1) * work.scale_y) - 1,
        work.width,
        work.height,
    )


def scale_box(box: Box, work: Working, region: Region) -> Box:
    """A working-copy box -> the same box in a region's pixels (not clipped: the predictor reads
    around it either way)."""

    def x(v: float) -> int:
        return round(((v + 0.5) * work.scale_x - 0.5 - region.left) / region.scale_x)

    def y(v: float) -> int:
        return round(((v + 0.5) * work.scale_y - 0.5 - region.top) / region.scale_y)

    return Box(x(box.left), y(box.top), x(box.right), y(box.bottom))


def shrink_to_chip(source: Region, landmarks: np.ndarray) -> tuple[Region, np.ndarray]:
    """The face's area resized (bicubic, antialiased) so that the chip's rectangle spans
    CHIP_SIZE pixels, when it spans more, with the landmarks in its pixels: a photo's face is
    sampled as a proper reduction rather than dlib's pyramid (closer to the crop's descriptor)."""
    rect, angle = chip_rect(landmarks, CHIP_SIZE, 0.25)
    side = rect.r - rect.l + 1
    if side <= CHIP_SIZE:
        return source, landmarks
    corners = rect.rotated_corners(angle)
    h, w = source.pixels.shape[:2]
    margin = 0.05 * side + 4
    left, top = max(0, math.floor(corners[:, 0].min() - margin)), max(0, math.floor(corners[:, 1].min() - margin))
    right, bottom = (
        min(w, math.ceil(corners[:, 0].max() + margin) + 1),
        min(h, math.ceil(corners[:, 1].max() + margin) + 1),
    )
    if left >= right or top >= bottom:
        return source, landmarks
    factor = CHIP_SIZE / side
    size = (max(2, round((right - left) * factor)), max(2, round((bottom - top) * factor)))
    part = Image.fromarray(np.ascontiguousarray(source.pixels[top:bottom, left:right]))
    pixels = np.asarray(part.resize(size, Image.Resampling.BICUBIC))
    fx, fy = (right - left) / size[0], (bottom - top) / size[1]  # source pixels per new pixel
    points = np.stack([(landmarks[:, 0] - left + 0.5) / fx - 0.5, (landmarks[:, 1] - top + 0.5) / fy - 0.5], axis=1)
    shrunk = Region(
        pixels,
        source.left + (left + 0.5 * fx - 0.5) * source.scale_x,
        source.top + (top + 0.5 * fy - 0.5) * source.scale_y,
        source.scale_x * fx,
        source.scale_y * fy,
    )
    return shrunk, points
