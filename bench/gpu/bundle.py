"""Build bench/gpu-bundle/: everything the GPU run needs that a bare GPU host lacks.

    .venv/bin/python -m bench.gpu.bundle          # or: make gpu-bundle

- models/: the three dlib .dat files (recognition network, MMOD detector, 5-point shape
  predictor), copied from face-recognition-models;
- chips.npz: real aligned chips (dlib's detector, shape predictor and get_face_chip on the
  lfw_colour photos and on part of LFW View 1's pairsDevTest), with dlib's descriptors, this
  port's CPU fp32 descriptors and real pairs labelled same / different;
- faces/lfw_colour/: the 250x250 lfw_colour photos; faces/phone/: phone-sized JPEGs (an LFW face
  placed on a 1920x1080 and a 4032x3024 noisy canvas);
- manifest.json: what is there, the commit, the sizes.
Needs dlib (requirements/dev.txt) and the face images; prints the total size, which must stay
under 64 MiB (what travels to the GPU host).
"""

import argparse
import io
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
LIMIT_BYTES = 64 * 1024 * 1024
PAIR_STEP = 8  # every 8th line of pairsDevTest: about 63 same and 63 different pairs
PHONE_SIZES = ((1920, 1080), (1920, 1080), (4032, 3024))


def phone_photo(face: Image.Image, size: tuple[int, int], seed: int) -> bytes:
    """A phone-sized JPEG: `face` scaled to a third of the height, placed on a smooth noisy
    canvas of `size` (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    low = rng.integers(40, 215, size=(6, 8, 3), dtype=np.uint8)
    canvas = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), dtype=np.float32)
    canvas += rng.normal(0, 4, size=canvas.shape).astype(np.float32)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    side = height // 3
    image.paste(face.convert("RGB").resize((side, side), Image.BICUBIC), (width // 3, height // 4))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def view1_pairs(root: Path) -> list[tuple[Path, Path, bool]]:
    """Every PAIR_STEP-th same and different pair of pairsDevTest.txt, as image paths."""
    lines = (root / "pairsDevTest.txt").read_text().split("\n")[1:]
    rows = [line.split("\t") for line in lines if line.strip()]

    def image(name: str, number: str) -> Path:
        return root / name / f"{name}_{int(number):04d}.jpg"

    same = [(image(r[0], r[1]), image(r[0], r[2]), True) for r in rows if len(r) == 3]
    different = [(image(r[0], r[1]), image(r[2], r[3]), False) for r in rows if len(r) == 4]
    return same[::PAIR_STEP] + different[::PAIR_STEP]


def make_chips(faces: Path, small: bool = False) -> dict[str, np.ndarray]:
    """Chips, descriptors (dlib's and the port's on the CPU) and labelled pairs. small: two
    lfw_colour photos per identity and no View 1 pairs (for the tests)."""
    from worker.face.embed import Embedder
    from worker.face.reference import DlibReference

    reference = DlibReference.load()
    chips, index = [], {}

    def chip(path: Path) -> int | None:
        if path not in index:
            try:
                image = reference.decode(path.read_bytes())
                chips.append(reference.chip(image, reference.landmarks(image, reference.detect(image))))
                index[path] = len(chips) - 1
            except Exception:
                index[path] = None
        return index[path]

    pairs, same, sets = [], [], []
    colour = sorted((faces / "lfw_colour").glob("*/*_000[12].jpg" if small else "*/*.jpg"))
    found = [(p.parent.name, chip(p)) for p in colour]
    found = [(name, i) for name, i in found if i is not None]
    for a in range(len(found)):
        for b in range(a + 1, len(found)):
            pairs.append((found[a][1], found[b][1]))
            same.append(found[a][0] == found[b][0])
            sets.append("lfw_colour")
    for left, right, label in [] if small else view1_pairs(faces / "lfw_view1"):
        i, j = chip(left), chip(right)
        if i is not None and j is not None:
            pairs.append((i, j))
            same.append(label)
            sets.append("lfw_view1")
    stacked = np.stack(chips)
    dlib_descriptors = np.stack([reference.descriptor(c) for c in stacked]).astype(np.float32)
    cpu = np.concatenate([Embedder.load(device="cpu").embed(stacked[i : i + 64]) for i in range(0, len(stacked), 64)])
    return {
        "chips": stacked,
        "dlib": dlib_descriptors,
        "cpu_fp32": cpu.astype(np.float32),
        "pairs": np.asarray(pairs, dtype=np.int32),
        "same": np.asarray(same, dtype=bool),
        "pair_set": np.asarray(sets, dtype="<U10"),
    }


def commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def build(out: Path, faces: Path, small: bool = False) -> dict:
    from worker.face.weights import MMOD_DETECTOR, RECOGNITION_MODEL, SHAPE_PREDICTOR_5, model_path, sha256_file

    if not (faces / "lfw_colour").is_dir():
        raise SystemExit(f"face images not found at {faces} (set BIOFLEET_FACES_DIR)")
    if out.exists():
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)
    models = {}
    for name in (RECOGNITION_MODEL, MMOD_DETECTOR, SHAPE_PREDICTOR_5):
        shutil.copyfile(model_path(name), out / "models" / name)
        models[name] = sha256_file(out / "models" / name)
    shutil.copytree(faces / "lfw_colour", out / "faces" / "lfw_colour")
    (out / "faces" / "phone").mkdir(parents=True)
    portraits = sorted((faces / "lfw_colour").glob("*/*_0002.jpg"))
    for k, size in enumerate(PHONE_SIZES[:1] if small else PHONE_SIZES):
        data = phone_photo(Image.open(portraits[k]), size, seed=k)
        (out / "faces" / "phone" / f"phone_{k}_{size[0]}x{size[1]}.jpg").write_bytes(data)
    arrays = make_chips(faces, small)
    np.savez_compressed(out / "chips.npz", **arrays)
    manifest = {
        "commit": commit(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "models_sha256": models,
        "chips": int(len(arrays["chips"])),
        "pairs": {s: int((arrays["pair_set"] == s).sum()) for s in ("lfw_colour", "lfw_view1")},
        "same_pairs": int(arrays["same"].sum()),
        "max_abs_cpu_vs_dlib": float(np.abs(arrays["cpu_fp32"] - arrays["dlib"]).max()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.bundle", description="build the GPU bundle")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu-bundle")
    p.add_argument("--faces", type=Path, default=None, help="default: Settings.faces_dir")
    p.add_argument("--small", action="store_true", help="20 chips, one phone photo (for the tests)")
    args = p.parse_args()
    if args.faces is None:
        from shared.settings import get_settings

        args.faces = get_settings().faces_dir
    manifest = build(args.out, args.faces, args.small)
    files = [f for f in args.out.rglob("*") if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    print(json.dumps(manifest, indent=2))
    print(f"{args.out}: {len(files)} files, {total / 2**20:.1f} MiB in all (limit 64 MiB)")
    if total >= LIMIT_BYTES:
        sys.exit("the bundle is over 64 MiB: it cannot travel to the GPU host")


if __name__ == "__main__":
    main()
