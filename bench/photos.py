"""Phone-photo corpus: the face images placed in camera-sized frames, deterministically.

Run: python -m bench.photos [--out bench/photos-corpus] [--per-image 3] [--no-pairs] [--jobs 2]

Writes, from ../shared/data/faces (never into the repository; bench/photos-corpus/ is ignored):
- OUT/photos/: each lfw_colour image placed `--per-image` times, the face about 80 to 1200 px
  wide, in 1920x1080, 3024x4032 and 4032x3024 frames on a seeded background (smooth colour noise
  over a gradient), JPEG at quality 85-95; some stored rotated with an EXIF orientation tag, some
  as PNG or WebP; OUT/photos/manifest.json lists each file with its frame, face width, the
  placed crop's box (upright coordinates), orientation and format.
- OUT/view1_12mp/: every image of lfw_view1 as a 12 MP photo (4032x3024 or 3024x4032, the face
  450 to 1200 px wide, every fourth one stored rotated with an EXIF tag), same names, and
  pairsDevTest.txt: View 1's pairs, so `biofleet eval-pairs OUT/view1_12mp/pairsDevTest.txt
  --root OUT/view1_12mp` runs the same pairs on the 12 MP photos.

"Face width" is the detector's face box, about FACE_FRACTION of an LFW crop's width: a face of
450 px is the 250x250 crop scaled (Lanczos) to 1125x1125. Everything is seeded by file name.
"""

import argparse
import io
import json
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent / "photos-corpus"
FRAMES = ((1920, 1080), (3024, 4032), (4032, 3024))
FACE_WIDTHS = (80, 150, 300, 450, 700, 1200)
SELFIE_WIDTHS = (450, 1200)  # the 12 MP pairs: a phone selfie's face
FACE_FRACTION = 0.4  # face box width / LFW crop width (dlib's box on a 250x250 crop: ~100 px)
ORIENTATION_TAG = 0x0112
# What is stored for each EXIF orientation, given the upright picture (the inverse of exif_transpose).
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class Photo:
    """One corpus file: where the face crop was placed (upright coordinates, inclusive)."""

    file: str
    source: str
    frame: tuple[int, int]
    face_px: int
    crop_box: tuple[int, int, int, int]
    orientation: int
    format: str
    quality: int | None


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


def background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A non-uniform background: a colour gradient plus smooth colour noise, as an RGB image."""
    width, height = size
    small_w, small_h = max(2, width // 48), max(2, height // 48)
    noise = rng.integers(0, 256, size=(small_h, small_w, 3), dtype=np.uint8)
    base = Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC)
    start, end = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    gradient = (start + (end - start) * ramp).astype(np.uint8)
    gradient = Image.fromarray(np.broadcast_to(gradient, (1, width, 3)).copy()).resize(size)
    return Image.blend(base, gradient, 0.5)


def place(face: Image.Image, frame: tuple[int, int], face_px: int, seed: int) -> tuple[Image.Image, tuple]:
    """The face crop scaled (Lanczos) so its face is about face_px wide, at a seeded spot of a
    frame-sized background. Returns the RGB picture and the crop's box (l, t, r, b inclusive)."""
    rng = np.random.default_rng(seed)
    side = round(face_px / FACE_FRACTION)
    if side > min(frame):
        raise ValueError(f"a {face_px} px face does not fit a {frame[0]}x{frame[1]} frame")
    picture = background(frame, rng)
    scaled = face.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    left = int(rng.integers(0, frame[0] - side + 1))
    top = int(rng.integers(0, frame[1] - side + 1))
    picture.paste(scaled, (left, top))
    return picture, (left, top, left + side - 1, top + side - 1)


def encode(picture: Image.Image, fmt: str = "JPEG", quality: int = 90, orientation: int = 1) -> bytes:
    """The upright picture as a file: JPEG (stored turned, with the EXIF tag, when orientation
    is not 1), PNG or WebP."""
    out = io.BytesIO()
    if fmt == "JPEG":
        exif = Image.Exif()
        if orientation != 1:
            picture = picture.transpose(STORED[orientation])
            exif[ORIENTATION_TAG] = orientation
        picture.save(out, "JPEG", quality=quality, exif=exif.tobytes())
    elif fmt == "PNG":
        picture.save(out, "PNG", compress_level=1)
    elif fmt == "WEBP":
        picture.save(out, "WEBP", quality=quality)
    else:
        raise ValueError(f"unknown format {fmt}")
    return out.getvalue()


def photo_plan(name: str, k: int, per_image: int) -> list[dict]:
    """The variants of one source image (the k-th): frame, face width, format, orientation, quality."""
    rng = np.random.default_rng(seed_of(name))
    plans = []
    for j in range(per_image):
        n = k * per_image + j
        frame = FRAMES[n % len(FRAMES)]
        fitting = [w for w in FACE_WIDTHS if round(w / FACE_FRACTION) <= min(frame)]
        face_px = fitting[int(rng.integers(0, len(fitting)))]
        fmt, orientation = "JPEG", 1
        if frame == FRAMES[0] and n % 6 == 3:
            fmt = "PNG" if n % 12 == 3 else "WEBP"
        elif n % 4 == 1:
            orientation = (6, 8, 3)[n // 4 % 3]
        quality = int(rng.integers(85, 96))
        plans.append(
            {"frame": frame, "face_px": face_px, "format": fmt, "orientation": orientation, "quality": quality}
        )
    return plans


def _write_photo(task: tuple) -> dict:
    source, name, out_path, plan = task
    picture, box = place(Image.open(source), plan["frame"], plan["face_px"], seed_of(name))
    out_path.write_bytes(encode(picture, plan["format"], plan["quality"], plan["orientation"]))
    quality = plan["quality"] if plan["format"] != "PNG" else None
    return asdict(Photo(out_path.name, str(source.name), plan["frame"], plan["face_px"], box,
                        plan["orientation"], plan["format"], quality))  # fmt: skip


def selfie_plan(name: str, k: int) -> dict:
    """A 12 MP variant of the k-th View 1 image: frame, face width, orientation, quality."""
    rng = np.random.default_rng(seed_of(name))
    frame = FRAMES[1 + k % 2]
    face_px = int(rng.integers(SELFIE_WIDTHS[0], SELFIE_WIDTHS[1] + 1))
    orientation = (6, 8)[k // 4 % 2] if k % 4 == 3 else 1
    return {"frame": frame, "face_px": face_px, "format": "JPEG", "orientation": orientation,
            "quality": int(rng.integers(85, 96))}  # fmt: skip


def _write_selfie(task: tuple) -> None:
    source, name, out_path, plan = task
    picture, _ = place(Image.open(source), plan["frame"], plan["face_px"], seed_of(name))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(encode(picture, "JPEG", plan["quality"], plan["orientation"]))


def _run(tasks: list, work, jobs: int, label: str) -> list:
    from tqdm import tqdm

    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(tqdm(pool.map(work, tasks, chunksize=4), total=len(tasks), desc=label))


def make_photos(faces_dir: Path, out: Path, per_image: int, jobs: int) -> Path:
    sources = sorted((faces_dir / "lfw_colour").glob("*/*.jpg"))
    if not sources:
        raise SystemExit(f"no images under {faces_dir / 'lfw_colour'}")
    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    tasks = []
    for k, source in enumerate(sources):
        for j, plan in enumerate(photo_plan(source.name, k, per_image)):
            ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[plan["format"]]
            frame = f"{plan['frame'][0]}x{plan['frame'][1]}"
            tasks.append(
                (source, f"{source.name}/{j}", folder / f"{source.stem}_{frame}_{plan['face_px']}.{j}.{ext}", plan)
            )
    manifest = _run(tasks, _write_photo, jobs, "photos")
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def make_pairs(faces_dir: Path, out: Path, jobs: int) -> Path:
    view1 = faces_dir / "lfw_view1"
    sources = sorted(view1.glob("*/*.jpg"))
    if not sources:
        raise SystemExit(f"no images under {view1}")
    folder = out / "view1_12mp"
    tasks = [(s, s.name, folder / s.parent.name / s.name, selfie_plan(s.name, k)) for k, s in enumerate(sources)]
    tasks = [t for t in tasks if not t[2].exists()]  # resumable
    _run(tasks, _write_selfie, jobs, "12 MP View 1")
    pairs = folder / "pairsDevTest.txt"
    pairs.write_text((view1 / "pairsDevTest.txt").read_text())
    return pairs


def main() -> None:
    from shared.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m bench.photos", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: bench/photos-corpus)")
    parser.add_argument("--per-image", type=int, default=3, help="variants per lfw_colour image")
    parser.add_argument("--no-pairs", action="store_true", help="skip the 12 MP View 1 images and pairs file")
    parser.add_argument("--jobs", type=int, default=2, help="processes writing images")
    args = parser.parse_args()
    faces_dir = get_settings().faces_dir
    print(f"wrote {make_photos(faces_dir, args.out, args.per_image, args.jobs)}")
    if not args.no_pairs:
        print(f"wrote {make_pairs(faces_dir, args.out, args.jobs)}")


if __name__ == "__main__":
    main()
