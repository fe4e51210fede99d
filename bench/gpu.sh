#!/usr/bin/env bash
# Model throughput of biofleet's network on one device, fp32 against fp16 / bf16, and of the
# ported CNN face detector (MmodDetector.detect_many) batched.
#
#   bench/gpu.sh                      # CUDA: batch 1..256, fp32, fp16, bf16
#   bench/gpu.sh --device cpu         # here: batch 1, 8, 32, fp32 and bf16, detector batch 1, 4, 8, a minute or so
#   bench/gpu.sh --weights /path/dlib_face_recognition_resnet_model_v1.dat --out /tmp/gpu.json
#
# Needs only Python 3.10+, PyTorch and numpy (rich is used for the table when present): the
# network and the weight reader come from worker/face/ in this checkout, the weights file from
# the face-recognition-models package or --weights. No network access. Faces/s per batch size and
# precision (median of --repeats timed runs after warm-up, CUDA synchronised), and the agreement
# of fp16 / bf16 descriptors with fp32 on the same chips (largest difference, Euclidean distance
# against dlib's 0.6 threshold, same/different decisions that change). Chips are real aligned
# faces when dlib and the lfw_colour images are there, else smooth synthetic images (said in the
# JSON). The detector: images/s per batch size (fp32, median of --repeats runs after warm-up) on
# the 250x250 lfw_colour photos when they are there (read with Pillow), else synthetic 250x250
# images; --detector-batches none skips it. Writes bench/results/gpu-<device>.json naming the device.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" - "$@" <<'PYEOF'
import argparse, json, os, platform, re, statistics, sys, time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))
import numpy as np
import torch

from worker.face.resnet import build
from worker.face.weights import load_resnet_state

THRESHOLD = 0.6  # dlib's same-person distance


def parse():
    p = argparse.ArgumentParser(prog="bench/gpu.sh", description="network throughput, fp32 vs fp16/bf16")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--batches", default=None, help="comma-separated (default 1..256 on CUDA, 1,8,32 on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 20 CUDA, 3 CPU)")
    p.add_argument("--precisions", default=None, help="default fp32,fp16,bf16 on CUDA, fp32,bf16 on CPU")
    p.add_argument("--weights", type=Path, default=None, help="dlib .dat (default: face-recognition-models)")
    p.add_argument("--detector-batches", default=None,
                   help="comma-separated, or none (default 1..256 on CUDA, 1,4,8 on CPU)")
    p.add_argument("--budget-s", type=float, default=420, help="larger batch sizes are skipped past this")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/gpu-<device>.json")
    return p.parse_args()


def chips_for(count):
    """(count, 150, 150, 3) uint8 and what they are: real aligned faces when possible."""
    try:
        from bench.model import make_chips
        from worker.face.reference import DlibReference

        faces = Path(os.environ.get("BIOFLEET_FACES_DIR", ROOT.parent / "shared" / "data" / "faces"))
        images = [p.read_bytes() for p in sorted((faces / "lfw_colour").glob("*/*.jpg"))]
        if images:
            return make_chips(DlibReference.load(), images, count), "lfw_colour chips (dlib alignment)"
    except Exception:
        pass
    gen = torch.Generator().manual_seed(0)
    low = torch.rand(count, 3, 12, 12, generator=gen)
    smooth = torch.nn.functional.interpolate(low, size=(150, 150), mode="bicubic", align_corners=False)
    chips = (smooth.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return chips, "synthetic smooth images (no dlib or no face images here)"


def detector_images(count):
    """count (H, W, 3) uint8 RGB images and what they are: the lfw_colour photos (repeated)
    when they and Pillow are there, else synthetic 250x250 images."""
    try:
        from PIL import Image

        faces = Path(os.environ.get("BIOFLEET_FACES_DIR", ROOT.parent / "shared" / "data" / "faces"))
        files = sorted((faces / "lfw_colour").glob("*/*.jpg"))
        if files:
            photos = [np.asarray(Image.open(p).convert("RGB")) for p in files[:count]]
            return [photos[i % len(photos)] for i in range(count)], "lfw_colour photos, 250x250"
    except Exception:
        pass
    gen = torch.Generator().manual_seed(1)
    low = torch.rand(count, 3, 25, 25, generator=gen)
    smooth = torch.nn.functional.interpolate(low, size=(250, 250), mode="bicubic", align_corners=False)
    images = (smooth.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return list(images), "synthetic smooth 250x250 images (no face images here)"


def detector_throughput(device, batches, repeats, sync, deadline):
    """The ported detector at each batch size: {batch: ms per batch, ms per image, images/s,
    faces found per image}, and what the images were. Batch sizes past `deadline` are skipped."""
    from worker.face.mmod import MmodDetector

    detector = MmodDetector.load(device=str(device))
    images, inputs = detector_images(max(batches))
    found = {}
    for batch in batches:
        if time.monotonic() > deadline:
            print(f"budget spent: detector batch {batch} and larger skipped", file=sys.stderr)
            break
        chosen = images[:batch]
        for _ in range(2):
            faces = detector.detect_many(chosen)
        sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            detector.detect_many(chosen)
            sync()
            times.append(time.perf_counter() - t)
        ms = 1000 * statistics.median(times)
        found[str(batch)] = {"ms_per_batch": ms, "ms_per_image": ms / batch, "images_per_s": 1000 * batch / ms,
                             "faces_per_image": sum(map(len, faces)) / batch}
        print(f"detector batch {batch}: {found[str(batch)]['images_per_s']:.0f} images/s", file=sys.stderr)
    return found, inputs


def main():
    args = parse()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here: try --device cpu")
    batches = [int(b) for b in (args.batches or ("1,2,4,8,16,32,64,128,256" if cuda else "1,8,32")).split(",")]
    repeats = args.repeats or (20 if cuda else 3)
    precisions = (args.precisions or ("fp32,fp16,bf16" if cuda else "fp32,bf16")).split(",")
    dtypes = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    if cuda:
        torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
                    platform.machine()) if Path("/proc/cpuinfo").exists() else platform.machine()
    slug = "cpu" if not cuda else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out = args.out or ROOT / "bench" / "results" / f"gpu-{slug}.json"

    state, sha = load_resnet_state(args.weights)
    model = build(state).to(device, memory_format=torch.channels_last).eval()
    chips, inputs = chips_for(max(batches))
    pixels_all = torch.from_numpy(chips).to(device).permute(0, 3, 1, 2)

    def forward(pixels, precision):
        dtype = dtypes[precision]
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)
        with torch.inference_mode(), ctx:
            return model(pixels).float()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    started = time.monotonic()
    throughput = {p: {} for p in precisions}
    for batch in batches:
        if time.monotonic() - started > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: batch {batch} and larger skipped", file=sys.stderr)
            break
        pixels = pixels_all[:batch]
        for precision in precisions:
            for _ in range(3):
                forward(pixels, precision)
            sync()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                forward(pixels, precision)
                sync()
                times.append(time.perf_counter() - t)
            ms = 1000 * statistics.median(times)
            throughput[precision][str(batch)] = {"ms_per_batch": ms, "ms_per_face": ms / batch, "faces_per_s": 1000 * batch / ms}
        print(f"batch {batch}: " + ", ".join(f"{p} {throughput[p][str(batch)]['faces_per_s']:.0f} faces/s" for p in precisions), file=sys.stderr)

    reference = forward(pixels_all, "fp32").cpu().numpy()
    ref_pairs = np.linalg.norm(reference[:, None] - reference[None], axis=-1)
    agreement = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        other = forward(pixels_all, precision).cpu().numpy()
        pairs = np.linalg.norm(other[:, None] - other[None], axis=-1)
        upper = np.triu_indices(len(other), 1)
        flips = int(((ref_pairs[upper] <= THRESHOLD) != (pairs[upper] <= THRESHOLD)).sum())
        distance = np.linalg.norm(other - reference, axis=1)
        agreement[precision] = {
            "max_abs_difference": float(np.abs(other - reference).max()),
            "max_distance_to_fp32": float(distance.max()),
            "mean_distance_to_fp32": float(distance.mean()),
            "max_pair_distance_change": float(np.abs(pairs - ref_pairs).max()),
            "decision_flips_at_0.6": flips,
            "pairs": int(len(upper[0])),
        }
    detector_batches = args.detector_batches or ("1,2,4,8,16,32,64,128,256" if cuda else "1,4,8")
    detector, detector_inputs = {}, None
    if detector_batches != "none":
        detector, detector_inputs = detector_throughput(
            device, [int(b) for b in detector_batches.split(",")], repeats, sync, started + args.budget_s + 60)
    results = {
        "device": str(device), "device_name": name, "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "weights_sha256": sha, "inputs": inputs,
        "chips": len(chips), "repeats": repeats, "throughput": throughput, "agreement_with_fp32": agreement,
        "detector_inputs": detector_inputs, "detector_throughput": detector,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")

    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"network throughput on {name} ({device}), faces/s")
        table.add_column("batch", justify="right")
        for p in precisions:
            table.add_column(p, justify="right")
        for batch in throughput["fp32"]:
            table.add_row(batch, *(f"{throughput[p][batch]['faces_per_s']:.0f}" for p in precisions))
        Console().print(table)
        if detector:
            table = Table(title=f"ported CNN face detector on {name} ({device}), fp32, {detector_inputs}")
            for column in ("batch", "images/s", "ms per image", "faces per image"):
                table.add_column(column, justify="right")
            for batch, d in detector.items():
                table.add_row(batch, f"{d['images_per_s']:.0f}", f"{d['ms_per_image']:.2f}", f"{d['faces_per_image']:.2f}")
            Console().print(table)
        for p, a in agreement.items():
            Console().print(f"{p} vs fp32 on {len(chips)} {inputs}: largest |difference| {a['max_abs_difference']:.2e}, "
                            f"largest distance {a['max_distance_to_fp32']:.4f} (threshold {THRESHOLD}), "
                            f"{a['decision_flips_at_0.6']} of {a['pairs']} pair decisions changed")
    except ImportError:
        print(json.dumps(results, indent=2))
    print(f"wrote {out}")


main()
PYEOF
