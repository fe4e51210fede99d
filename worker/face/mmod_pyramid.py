"""The image pyramid of dlib's CNN face detector (input_rgb_image_pyramid<pyramid_down<6>>): the
levels of an image, their tiling into one image, and the detections mapped back from it."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.face.types import Box

PYRAMID_FACTOR = 6  # pyramid_down<6>: each level is 5/6 of the one above (not stored in the file)
MIN_LEVEL_ROWS = 5


@dataclass(frozen=True)
class Detection:
    """A face found by the detector: inclusive corners (not clipped to the image) and the
    detection score (dlib's mmod_rectangle.confidence)."""

    left: int
    top: int
    right: int
    bottom: int
    confidence: float

    def box(self) -> Box:
        return Box(self.left, self.top, self.right, self.bottom)


# The tiled pyramid.


@dataclass(frozen=True)
class Tile:
    """Where one pyramid level sits in the tiled image."""

    top: int
    left: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        return self.top + self.height - 1

    @property
    def right(self) -> int:
        return self.left + self.width - 1


@dataclass(frozen=True)
class PyramidLayout:
    """The tiles (level 0 first) and the size of the tiled image."""

    tiles: tuple[Tile, ...]
    height: int
    width: int


def pyramid_levels(height: int, width: int, factor: int = PYRAMID_FACTOR) -> list[tuple[int, int]]:
    """(rows, columns) of each level, the image first: floor(rate * size) with rate (N-1)/N, down
    to the last level with at least 5 rows (dlib's find_pyramid_down_output_image_size)."""
    if height * width == 0:
        return []
    rate = (factor - 1.0) / factor
    sizes = [(height, width)]
    while True:
        height, width = math.floor(rate * height), math.floor(rate * width)
        if height * width == 0 or height < MIN_LEVEL_ROWS:
            return sizes
        sizes.append((height, width))


def pyramid_layout(
    height: int, width: int, padding: int, outer_padding: int, factor: int = PYRAMID_FACTOR
) -> PyramidLayout:
    """dlib's compute_tiled_image_pyramid_details for an image of height x width."""
    sizes = pyramid_levels(height, width, factor)
    if not sizes:
        return PyramidLayout((), 0, 0)
    first_h, first_w = sizes[0]
    total_height = sum(h + padding for h, _ in sizes) - 2 * padding
    column, prev_width = 0, 0
    for h, w in sizes:  # go down the first column until the rest fits beside it, coming back up
        if w <= first_w - prev_width - padding and (column - first_h) * 2 >= total_height - first_h:
            break
        column += h + padding
        prev_width = w
    column -= padding

    tiles: list[Tile] = []
    y, i = outer_padding, 0
    while y < column + outer_padding and i < len(sizes):
        h, w = sizes[i]
        tiles.append(Tile(y, outer_padding, h, w))
        y += h + padding
        i += 1
    y -= padding
    first = tiles[0]
    while i < len(sizes):  # the second column, bottom-up, right-aligned
        h, w = sizes[i]
        tile = Tile(y - h, outer_padding + first_w - w, h, w)
        overlaps = max(tile.left, first.left) <= min(tile.right, first.right) and max(tile.top, first.top) <= min(
            tile.bottom, first.bottom
        )
        if overlaps:  # dlib drops the levels that would overlap the image itself
            break
        tiles.append(tile)
        y -= h + padding
        i += 1
    return PyramidLayout(tuple(tiles), column + 2 * outer_padding, first_w + 2 * outer_padding)


def tile_levels(pixels: torch.Tensor, layout: PyramidLayout) -> list[torch.Tensor]:
    """pixels: (n, 3, H, W) normalised float32 -> each level of the pyramid, each resized from the
    one above it bilinearly with corners aligned (dlib's tt::resize_bilinear)."""
    levels = [pixels]
    for tile in layout.tiles[1:]:
        size = (tile.height, tile.width)
        levels.append(F.interpolate(levels[-1], size=size, mode="bilinear", align_corners=True))
    return levels


def pyramid_up(image: torch.Tensor) -> torch.Tensor:
    """dlib's pyramid_up with pyramid_down<2> on (n, 3, H, W) uint8 images: (2H + 1, 2W + 2) by
    bilinear interpolation with corners aligned, truncated to uint8 (as dlib's RGB resize)."""
    h, w = image.shape[-2:]
    up = F.interpolate(image.float(), size=(2 * h + 1, 2 * w + 2), mode="bilinear", align_corners=True)
    return up.clamp_(0, 255).to(torch.uint8)
