"""Face alignment: the same chip as dlib.get_face_chip, in numpy.

face_chip(image, landmarks, size=150, padding=0.25) -> (size, size, 3) uint8 chip.

Steps, as dlib does them (dlib/image_transforms/interpolation.h):
1. a least-squares similarity transform from the 5-point template (in chip pixels) to the landmarks;
2. its scale, angle and the image point under the chip centre give a rectangle of side size*scale;
3. when that rectangle is more than twice the chip, the image (cropped around the face) is first
   shrunk with dlib's pyramid_down<2> as often as needed;
4. the chip's corners (0,0), (size-1,0), (0,size-1) map to the rotated rectangle's corners, and each
   chip pixel is sampled bilinearly; samples without 4 neighbours in the image are black.
"""

import math
from dataclasses import dataclass

import numpy as np

# dlib's 5-point template (shape_predictor_5_face_landmarks order), in [0, 1] chip coordinates.
TEMPLATE_5 = np.array(
    [
        (0.8595674595992, 0.2134981538014),
        (0.6460604764104, 0.2289674387677),
        (0.1205750620789, 0.2137274526848),
        (0.3340850613712, 0.2290642403242),
        (0.4901123135679, 0.6277975316475),
    ]
)


class _Rect:
    """dlib's drectangle: edges l, t, r, b; width is r - l + 1."""

    def __init__(self, l: float, t: float, r: float, b: float):
        self.l, self.t, self.r, self.b = l, t, r, b

    def area(self) -> float:
        if self.l > self.r or self.t > self.b:
            return 0.0
        return (self.r - self.l + 1) * (self.b - self.t + 1)

    def down(self) -> "_Rect":
        """pyramid_down<2>::rect_down: each corner p -> p/2 - (1.25, 0.75)."""
        return _Rect(self.l / 2 - 1.25, self.t / 2 - 0.75, self.r / 2 - 1.25, self.b / 2 - 0.75)

    def shifted(self, dx: float, dy: float) -> "_Rect":
        return _Rect(self.l + dx, self.t + dy, self.r + dx, self.b + dy)

    def rotated_corners(self, angle: float) -> np.ndarray:
        """Corners tl, tr, bl, br rotated by angle about the centre: (4, 2) array of (x, y)."""
        cx, cy = (self.l + self.r) / 2, (self.t + self.b) / 2
        cos, sin = math.cos(angle), math.sin(angle)
        corners = np.array([(self.l, self.t), (self.r, self.t), (self.l, self.b), (self.r, self.b)]) - (cx, cy)
        x = cos * corners[:, 0] - sin * corners[:, 1]
        y = sin * corners[:, 0] + cos * corners[:, 1]
        return np.stack([x + cx, y + cy], axis=1)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[complex, complex]:
    """Least-squares similarity mapping src points onto dst points (both (N, 2) arrays of x, y).

    Returns (m, t) as complex numbers: a point z = x + iy maps to m * z + t. Closed form, the same
    minimiser as dlib's find_similarity_transform (Umeyama) for non-degenerate points.
    """
    s = src[:, 0] + 1j * src[:, 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    s_mean, d_mean = s.mean(), d.mean()
    sc, dc = s - s_mean, d - d_mean
    m = np.sum(np.conj(sc) * dc) / np.sum(np.abs(sc) ** 2)
    return complex(m), complex(d_mean - m * s_mean)


def chip_rect(landmarks: np.ndarray, size: int, padding: float) -> tuple[_Rect, float]:
    """dlib's get_face_chip_details: the chip's rectangle in the image and its angle (radians)."""
    template = (padding + TEMPLATE_5) / (2 * padding + 1) * size
    m, t = similarity_transform(template, np.asarray(landmarks, dtype=np.float64))
    angle = math.atan2(m.imag, m.real)
    scale = abs(m)
    centre = m * complex(size / 2, size / 2) + t
    half = (size * scale - 1) / 2  # dlib's centered_drect
    return _Rect(centre.real - half, centre.imag - half, centre.real + half, centre.imag + half), angle


def pyramid_down(image: np.ndarray) -> np.ndarray:
    """dlib's pyramid_down<2> on a uint8 image: a 5x5 [1 4 6 4 1] filter, every other pixel, /256 truncated.

    Input (H, W[, C]) uint8; output ((H-3)//2, (W-3)//2[, C]) uint8, or an empty image when H or W <= 8.
    Sums fit uint16 (at most 16 * 16 * 255).
    """
    h, w = image.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0) + image.shape[2:], dtype=np.uint8)
    img = image.astype(np.uint16)
    e = 2 * ((w - 3) // 2)  # row filter: output column c reads input columns 2c .. 2c+4
    tmp = img[:, 0:e:2] + img[:, 4 : e + 4 : 2]
    tmp += 4 * (img[:, 1 : e + 1 : 2] + img[:, 3 : e + 3 : 2])
    tmp += 6 * img[:, 2 : e + 2 : 2]
    e = 2 * ((h - 3) // 2)  # column filter: output row r reads filtered rows 2r .. 2r+4
    out = tmp[0:e:2] + tmp[4 : e + 4 : 2]
    out += 4 * (tmp[1 : e + 1 : 2] + tmp[3 : e + 3 : 2])
    out += 6 * tmp[2 : e + 2 : 2]
    return (out >> 8).astype(np.uint8)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample image (H, W, C) at float coordinates; points without 4 neighbours inside are 0."""
    h, w = image.shape[:2]
    left = np.floor(x).astype(np.int64)
    top = np.floor(y).astype(np.int64)
    inside = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    fx = (x - left)[..., None]
    fy = (y - top)[..., None]
    l0 = np.where(inside, left, 0)
    t0 = np.where(inside, top, 0)
    l1 = np.where(inside, left + 1, 0)
    t1 = np.where(inside, top + 1, 0)
    img = image.astype(np.float64)
    value = (1 - fy) * ((1 - fx) * img[t0, l0] + fx * img[t0, l1]) + fy * ((1 - fx) * img[t1, l0] + fx * img[t1, l1])
    value = np.clip(value, 0, 255).astype(np.uint8)  # dlib's assign_pixel truncates
    value[~inside] = 0
    return value


@dataclass(frozen=True)
class ChipPlan:
    """Where a chip's pixels come from: the crop box (left, top, right, bottom, inclusive) of the
    image, or None when the face lies outside it; the pyramid_down steps applied to the crop; and
    the chip corners tl, tr, bl in the reduced crop."""

    box: tuple[int, int, int, int] | None
    levels: int
    corners: np.ndarray


def plan_chip(landmarks: np.ndarray, shape: tuple[int, int], size: int, padding: float) -> ChipPlan:
    """dlib.get_face_chip's crop and pyramid level for an image of shape (H, W)."""
    h, w = shape
    rect, angle = chip_rect(landmarks, size, padding)
    area = size * size

    # How deep the pyramid goes, and the crop (grown for the filter borders) it is built from.
    depth, grow = 0, 2.0
    r = rect.down()
    while r.area() > area:
        r = r.down()
        depth += 1
        grow = grow * 2 + 2
    corners = rect.rotated_corners(angle)
    box = [
        max(corners[:, 0].min() - grow, 0.0),
        max(corners[:, 1].min() - grow, 0.0),
        min(corners[:, 0].max() + grow, w - 1.0),
        min(corners[:, 1].max() + grow, h - 1.0),
    ]
    bl, bt, br, bb = (int(math.floor(v + 0.5)) for v in box)
    if bl > br or bt > bb:
        return ChipPlan(None, 0, corners[:3])

    # The pyramid level where the rectangle is at most twice the chip, shrinking to it.
    r = rect.shifted(-bl, -bt)
    levels = 0
    while r.down().area() > area:
        levels += 1
        r = r.down()
    return ChipPlan((bl, bt, br, bb), min(levels, depth), r.rotated_corners(angle)[:3])


def face_chip(image: np.ndarray, landmarks: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """The aligned face chip dlib.get_face_chip(image, detection, size, padding) would give.

    image: (H, W, 3) uint8 RGB (or (H, W) grey); landmarks: (5, 2) image points (x, y) in the
    order of dlib's 5-point shape predictor. Returns (size, size, 3) uint8 (or (size, size)).
    """
    grey = image.ndim == 2
    if grey:
        image = image[:, :, None]
    plan = plan_chip(landmarks, image.shape[:2], size, padding)
    if plan.box is None:  # the face lies entirely outside the image
        return np.zeros((size, size) + (() if grey else image.shape[2:]), dtype=np.uint8)
    bl, bt, br, bb = plan.box
    source = image[bt : bb + 1, bl : br + 1]
    for _ in range(plan.levels):
        source = pyramid_down(source)

    # Chip corners (0,0), (size-1,0), (0,size-1) -> rotated rectangle corners tl, tr, bl.
    tl, tr, bl_ = plan.corners
    steps = np.arange(size, dtype=np.float64) / (size - 1)
    cs, rs = np.meshgrid(steps, steps)
    x = tl[0] + cs * (tr[0] - tl[0]) + rs * (bl_[0] - tl[0])
    y = tl[1] + cs * (tr[1] - tl[1]) + rs * (bl_[1] - tl[1])
    chip = _bilinear(source, x, y)
    return chip[:, :, 0] if grey else chip
