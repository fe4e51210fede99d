"""A group photo made from several faces of ../shared/data/faces on one canvas, for tests."""

import io
from pathlib import Path

from PIL import Image

PEOPLE = ("Tony_Blair", "Colin_Powell", "George_W_Bush")
SCALES = (1.6, 1.4, 1.2)  # so the faces are of distinct sizes: largest first is this order
CROP = (40, 40, 210, 210)  # the face of a 250 x 250 LFW image, without its neighbours' faces


def group_photo(faces_dir: Path, number: int = 1) -> tuple[bytes, list[tuple[str, tuple[int, int, int, int]]]]:
    """PNG bytes of the faces of PEOPLE (their image `number`) side by side on a grey canvas, and
    each person's region (left, top, right, bottom) in it, largest face first."""
    parts = []
    for person, scale in zip(PEOPLE, SCALES):
        face = Image.open(faces_dir / "lfw_colour" / person / f"{person}_{number:04d}.jpg").convert("RGB")
        side = round((CROP[2] - CROP[0]) * scale)
        parts.append((person, face.crop(CROP).resize((side, side), Image.Resampling.LANCZOS)))
    gap = 30
    width = sum(p.width for _, p in parts) + gap * (len(parts) + 1)
    height = max(p.height for _, p in parts) + 2 * gap
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    regions = []
    left = gap
    for person, part in parts:
        canvas.paste(part, (left, gap))
        regions.append((person, (left, gap, left + part.width - 1, gap + part.height - 1)))
        left += part.width + gap
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue(), regions


def inside(box: dict[str, int], region: tuple[int, int, int, int]) -> bool:
    """The box's centre lies in the region."""
    x, y = (box["left"] + box["right"]) / 2, (box["top"] + box["bottom"]) / 2
    return region[0] <= x <= region[2] and region[1] <= y <= region[3]
