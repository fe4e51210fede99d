"""Which face is the subject under the `largest` policy: largest(boxes, frame) -> Box.

frame_of(image) -> (width, height) of a working copy, the frame its boxes are in.
"""

import math

from worker.face.decode import Working
from worker.face.types import Box

DOUBTFUL_SHARE = 0.5  # faces scored below this share of the best are passed over
SAME_SIZE = 0.05  # boxes within this share of the largest one's area are alike
SURE_SHARE = 0.9  # among alike boxes, those scored under this share of the best are less sure


def largest(boxes: list[Box], frame: tuple[int, int] | None = None) -> Box:
    """The largest box among the confident ones: those scored at least DOUBTFUL_SHARE of the best
    score (a face cut by an edge or half hidden scores low and is not the subject, however large
    its box). Boxes within SAME_SIZE of the largest one's area are the same size to the detector
    (its pyramid steps areas by about a third); among them a box scored under SURE_SHARE of the
    best is passed over (a face cut by an edge, turned away or half hidden still scores lower
    when its box is as large), and of the rest the box nearest the centre of the frame (width,
    height) is kept, the subject being the face the photo is framed on. Boxes without a score all
    count; remaining ties keep the better-scored box."""
    scores = [b.score for b in boxes if b.score is not None]
    if scores and max(scores) > 0:
        floor = DOUBTFUL_SHARE * max(scores)
        boxes = [b for b in boxes if b.score is None or b.score >= floor]
    top = max(b.area for b in boxes)
    alike = [b for b in boxes if b.area >= (1 - SAME_SIZE) * top]
    if frame is None or len(alike) == 1:
        return max(alike, key=lambda b: (b.area, b.score or 0.0))
    alike = _surest(alike)
    return min(alike, key=lambda b: (_off_centre(b, frame), -b.area))


def _surest(boxes: list[Box]) -> list[Box]:
    """The boxes scored at least SURE_SHARE of the best score (all of them without scores)."""
    scores = [b.score for b in boxes if b.score is not None]
    if not scores or max(scores) <= 0:
        return boxes
    return [b for b in boxes if b.score is None or b.score >= SURE_SHARE * max(scores)]


def frame_of(image: object) -> tuple[int, int] | None:
    """The (width, height) of the pixels a working copy's boxes are in (None for anything else)."""
    return (image.pixels.shape[1], image.pixels.shape[0]) if isinstance(image, Working) else None


def _off_centre(box: Box, frame: tuple[int, int]) -> float:
    """How far the box's centre lies from the frame's centre, in frame widths and heights."""
    width, height = frame
    dx = (box.left + box.right + 1) / 2 - width / 2
    dy = (box.top + box.bottom + 1) / 2 - height / 2
    return math.hypot(dx / width, dy / height)
