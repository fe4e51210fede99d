"""Model benchmark: dlib's face descriptor against biofleet's PyTorch port, and both pipelines by stage.

Run: python -m bench.model [--device auto|cpu|cuda] [--repeats 5] [--out bench/results/model.json]

Measures, on the same aligned chips made from the lfw_colour images:
- dlib's compute_face_descriptor, one chip per call: ms per face;
- Embedder.embed at batch 1, 8, 32 and 64: ms per face, and the ratio dlib / port (dlib and the
  port are timed in alternating rounds, so a busy machine slows both alike; the ratio is the
  median of the per-round ratios);
- per-stage ms per face (decode, detect, landmarks, align, embed) for biofleet's pipeline and
  for dlib's, and biofleet's whole pipeline (FacePipeline.process) on a batch of 32 images (both
  with dlib's HOG detector at upsample 1, the "hog" setting), and that pipeline again with the
  ported CNN detector (the default "cnn" setting);
- face detection, ms per image: dlib's HOG detector (upsample 0 and 1), dlib's CNN detector
  (cnn_face_detection_model_v1, few images: it is slow on a CPU) and the ported CNN detector
  (MmodDetector.detect_many at batch 1, 4, 8 and 32, upsample 0; batch 8 at upsample 1) on the
  device in use, all timed in alternating rounds;
- by photo size (250x250 LFW crops, 2 MP 1920x1080 and 12 MP 4032x3024 phone photos made by
  bench.photos): ms per image of decode, detect, landmarks, align and embed for biofleet's
  pipeline (working copy at detect_max_side, the ported CNN detector; align includes any
  re-decode of the face's region) and for dlib's as face_recognition runs it (full-resolution
  decode, HOG at upsample 1, 5 landmarks, get_face_chip, one descriptor per call), dlib's CNN
  detector at full resolution on ONE image per size (it is very slow at 12 MP on a CPU), and the
  process's peak RSS during each (sampled every 20 ms).
Every figure is the median over repeated runs. Prints tables and writes JSON
(`--photos-only`: the photo-size table alone, into its own key of the same file).
"""

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

BATCH_SIZES = (1, 8, 32, 64)
RESULTS = Path(__file__).resolve().parent / "results" / "model.json"


def _median_ms(run, repeats: int, per: int = 1, warmup: int = 1) -> float:
    """Median wall time of run() in ms, divided by `per` (faces or images per run)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / per


class Laps:
    """Accumulates time per stage name: start(), then lap(name) after each stage."""

    def __init__(self):
        self.spent: dict[str, float] = {}
        self._last = 0.0

    def start(self) -> None:
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.spent[name] = self.spent.get(name, 0.0) + now - self._last
        self._last = now


def _stage_ms(one, inputs: list, repeats: int) -> dict[str, float]:
    """Per-stage ms per item: one(item, laps) runs one item, calling laps.lap(stage) after each
    stage. Returns, per stage, the median over `repeats` passes of its mean time per item."""
    passes = []
    for _ in range(repeats):
        laps = Laps()
        for item in inputs:
            one(item, laps)
        passes.append({name: 1000 * spent / len(inputs) for name, spent in laps.spent.items()})
    return {name: statistics.median(p[name] for p in passes) for name in passes[0]}


def descriptor_rounds(reference, embedder, chips: np.ndarray, rounds: int):
    """ms per face for dlib (one chip per call, 8 chips) and the port (64 faces at each batch size),
    measured in alternation. Returns (dlib median, {batch: port median}, {batch: median of the
    per-round ratios dlib / port})."""
    faces = len(chips)
    for size in BATCH_SIZES:  # warm up each batch shape
        embedder.embed(chips[:size])
    reference.descriptor(chips[0])
    dlib_times, port_times = [], {size: [] for size in BATCH_SIZES}
    for _ in range(rounds):
        start = time.perf_counter()
        for chip in chips[:8]:
            reference.descriptor(chip)
        dlib_times.append(1000 * (time.perf_counter() - start) / 8)
        for size in BATCH_SIZES:
            start = time.perf_counter()
            for first in range(0, faces - size + 1, size):
                embedder.embed(chips[first : first + size])
            port_times[size].append(1000 * (time.perf_counter() - start) / (faces - faces % size))
    port_ms = {str(size): statistics.median(times) for size, times in port_times.items()}
    ratio = {
        str(size): statistics.median(d / p for d, p in zip(dlib_times, times)) for size, times in port_times.items()
    }
    return statistics.median(dlib_times), port_ms, ratio


DETECTION_BATCHES = (1, 4, 8, 32)


def detection_cases(images: list[np.ndarray], device: str) -> tuple[dict, str]:
    """Timed detection cases on decoded (H, W, 3) uint8 images: name -> (run, images per run), in
    the order they run in each round, and the port's device. dlib's CNN detector runs on 2 images
    per round, HOG on 8; the port covers max(batch, 8) images per round at each batch size (CUDA
    synchronised)."""
    import dlib
    import torch

    from worker.face.mmod import MmodDetector
    from worker.face.weights import MMOD_DETECTOR, model_path

    hog = dlib.get_frontal_face_detector()
    cnn = dlib.cnn_face_detection_model_v1(str(model_path(MMOD_DETECTOR)))
    port = MmodDetector.load(device=device)

    def sync() -> None:
        if port.device.type == "cuda":
            torch.cuda.synchronize(port.device)

    def port_case(batch: int, count: int, upsample: int = 0):
        chosen = [images[i % len(images)] for i in range(count)]

        def run() -> None:
            for first in range(0, count, batch):
                port.detect_many(chosen[first : first + batch], upsample=upsample)
            sync()

        return run, count

    # dlib's CNN first and HOG after it: a port case run right after dlib's CNN measured several
    # times slower here (batch 1: 140 ms against 11 ms per image).
    cases = {
        "dlib_cnn_upsample0": (lambda: [cnn(image, 0) for image in images[:2]], 2),
        "dlib_hog_upsample0": (lambda: [hog(image, 0) for image in images[:8]], 8),
        "dlib_hog_upsample1": (lambda: [hog(image, 1) for image in images[:8]], 8),
    }
    for batch in DETECTION_BATCHES:
        cases[f"port_upsample0_batch{batch}"] = port_case(batch, max(batch, 8))
    cases["port_upsample1_batch8"] = port_case(8, 8, upsample=1)
    return cases, str(port.device)


def detection_rounds(cases: dict, rounds: int) -> dict[str, float]:
    """ms per image per case: one warm-up run each, then `rounds` rounds running every case once
    in turn (a busy machine slows them alike); the median over rounds."""
    for run, _ in cases.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (run, count) in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - start) / count)
    return {name: statistics.median(values) for name, values in times.items()}


def make_chips(reference, images: list[bytes], count: int) -> np.ndarray:
    """(count, 150, 150, 3) uint8 chips from the images where dlib finds a face (repeated if short)."""
    chips = []
    for data in images:
        try:
            image = reference.decode(data)
            chips.append(reference.chip(image, reference.landmarks(image, reference.detect(image))))
        except Exception:
            continue
    if not chips:
        raise SystemExit("no face found in the sample images")
    return np.stack([chips[i % len(chips)] for i in range(count)])


def _cpu_model() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device) -> dict:
    """What the numbers were measured on."""
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "platform": platform.platform(),
        "processor": _cpu_model(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


PHOTO_SIZES = {"250x250": None, "2 MP": ((1920, 1080), 300), "12 MP": ((4032, 3024), 600)}
PHOTO_IMAGES = 8


def photo_inputs(faces_dir: Path, size: str) -> list[bytes]:
    """PHOTO_IMAGES JPEGs of one size: lfw_colour crops, or them placed in phone photos."""
    from PIL import Image

    from bench.photos import encode, place

    files = sorted((faces_dir / "lfw_colour").glob("*/*_0001.jpg"))[:PHOTO_IMAGES]
    if PHOTO_SIZES[size] is None:
        return [f.read_bytes() for f in files]
    frame, face_px = PHOTO_SIZES[size]
    return [encode(place(Image.open(f), frame, face_px, k)[0], "JPEG", 90) for k, f in enumerate(files)]


def _peak_rss(run) -> float:
    """run() while sampling this process's RSS every 20 ms; the peak in MiB."""
    from bench.load import PeakRss

    with PeakRss({"self": os.getpid()}, interval_s=0.02) as memory:
        run()
    return memory.peak_mib["self"]


def dlib_stages(reference):
    """A function(data, laps) timing dlib's own pipeline stage by stage on one image."""

    def one(data: bytes, laps: Laps) -> None:
        laps.start()
        image = reference.decode(data)
        laps.lap("decode")
        rect = reference.detect(image)
        laps.lap("detect")
        shape = reference.landmarks(image, rect)
        laps.lap("landmarks")
        chip = reference.chip(image, shape)
        laps.lap("align")
        reference.descriptor(chip)
        laps.lap("embed")

    return one


def photo_stages(device: str, repeats: int, faces_dir: Path, cache_dir: Path, embed_ms: float | None = None) -> dict:
    """Per photo size: ms per image per stage, biofleet and dlib, dlib's CNN on one image, peak RSS."""
    import dlib

    from worker.face.detect import CnnDetector
    from worker.face.embed import Embedder
    from worker.face.landmarks import Landmarker
    from worker.face.pipeline import FacePipeline
    from worker.face.reference import DlibReference
    from worker.face.weights import MMOD_DETECTOR, model_path

    reference = DlibReference.load()
    embedder = Embedder.load(device=device, cache_dir=cache_dir)
    if embed_ms is None:
        chips = np.zeros((32, 150, 150, 3), dtype=np.uint8)
        embed_ms = _median_ms(lambda: embedder.embed(chips), repeats, per=32)
    detector = CnnDetector(device=device)
    pipeline = FacePipeline(embedder, detector, Landmarker(cache_dir=cache_dir), max_pixels=25_000_000)
    cnn = dlib.cnn_face_detection_model_v1(str(model_path(MMOD_DETECTOR)))

    def ours_one(data: bytes, laps: Laps) -> None:
        laps.start()
        work = pipeline._decode(data)
        laps.lap("decode")
        box = max(detector.detect(work.pixels), key=lambda b: b.area)
        laps.lap("detect")
        points = pipeline.landmarker.landmarks(work.pixels, box)
        laps.lap("landmarks")
        pipeline._align(data, work, box, points, "cnn")
        laps.lap("align")

    dlib_one = dlib_stages(reference)

    table = {}
    with pipeline:
        for size in PHOTO_SIZES:
            inputs = photo_inputs(faces_dir, size)
            result: dict = {}
            result["biofleet_peak_rss_mib"] = _peak_rss(
                lambda: result.update(biofleet=_stage_ms(ours_one, inputs, repeats))
            )
            result["biofleet"]["embed"] = embed_ms
            result["dlib_peak_rss_mib"] = _peak_rss(
                lambda: result.update(dlib=_stage_ms(dlib_one, inputs, max(1, repeats // 2)))
            )
            image = reference.decode(inputs[0])
            start = time.perf_counter()
            result["dlib_cnn_peak_rss_mib"] = _peak_rss(lambda: cnn(image, 0))
            result["dlib_cnn_detect_ms_one_image"] = 1000 * (time.perf_counter() - start)
            table[size] = result
    return {
        "photo_stages_ms_per_image": table,
        "photo_setup": {
            "images": PHOTO_IMAGES,
            "sizes": {k: (None if v is None else {"frame": v[0], "face_px": v[1]}) for k, v in PHOTO_SIZES.items()},
            "detect_max_side": pipeline.detect_max_side,
            "embed": "port at batch 32, ms per face",
        },
    }


def run(device: str, repeats: int, out: Path, faces_dir: Path, cache_dir: Path) -> dict:
    """Measure everything; write `out` and return the results dict."""
    from rich.console import Console

    from worker.face.align import face_chip
    from worker.face.decode import decode_image
    from worker.face.detect import CnnDetector, HogDetector
    from worker.face.embed import Embedder
    from worker.face.landmarks import Landmarker
    from worker.face.pipeline import FacePipeline
    from worker.face.reference import DlibReference

    say = Console(stderr=True).log
    files = sorted((faces_dir / "lfw_colour").glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no images under {faces_dir / 'lfw_colour'}")
    images = [path.read_bytes() for path in files]
    reference = DlibReference.load()
    embedder = Embedder.load(device=device, cache_dir=cache_dir)
    say(f"{len(images)} images; port on {embedder.device}; making chips with dlib")
    chips = make_chips(reference, images, max(BATCH_SIZES))

    # Descriptors: dlib one chip per call, the port at each batch size, interleaved round by
    # round so that both see the same load on a shared machine.
    say(f"descriptors: {repeats} rounds of dlib on 8 chips and the port on 64 faces per batch size")
    dlib_ms, port_ms, ratio = descriptor_rounds(reference, embedder, chips, repeats)
    port = embedder.embed(chips[:16])
    dlib = np.stack([reference.descriptor(c) for c in chips[:16]])
    max_diff = float(np.abs(port - dlib).max())

    # Stages, image by image, on 32 images; embed per face at batch 32 (the pipeline embeds batches).
    detector, landmarker = HogDetector(1), Landmarker()
    max_pixels = 25_000_000
    sample = images[:32]
    usable = [data for data in sample if reference.process_one(data).ok]

    def ours_one(data: bytes, laps: Laps) -> None:
        laps.start()
        image = decode_image(data, max_pixels)
        laps.lap("decode")
        box = max(detector.detect(image), key=lambda b: b.area)
        laps.lap("detect")
        points = landmarker.landmarks(image, box)
        laps.lap("landmarks")
        face_chip(image, points)
        laps.lap("align")

    dlib_one = dlib_stages(reference)

    stage_repeats = max(1, repeats // 2)
    say("biofleet stages")
    ours = _stage_ms(ours_one, usable, stage_repeats)
    ours["embed"] = port_ms["32"]
    say("dlib stages")
    theirs = _stage_ms(dlib_one, usable, stage_repeats)

    say("biofleet pipeline, batch of 32 images")
    pipeline = FacePipeline(embedder, detector, landmarker, max_pixels=max_pixels, threads=2)
    with pipeline:
        pipeline_ms = _median_ms(lambda: pipeline.process(sample), stage_repeats, per=len(sample))
    say("biofleet pipeline with the ported CNN detector (the default), batch of 32 images")
    cnn_pipeline = FacePipeline(embedder, CnnDetector(device=device), landmarker, max_pixels=max_pixels, threads=2)
    with cnn_pipeline:
        cnn_pipeline_ms = _median_ms(lambda: cnn_pipeline.process(sample), stage_repeats, per=len(sample))

    say(f"detection: {repeats} rounds of dlib HOG, dlib CNN and the port at batch {DETECTION_BATCHES}")
    decoded = [decode_image(data, max_pixels) for data in images]
    cases, detection_device = detection_cases(decoded, device)
    detection_ms = detection_rounds(cases, repeats)

    say("by photo size: 250x250, 2 MP and 12 MP photos, biofleet and dlib")
    photos = photo_stages(device, stage_repeats, faces_dir, cache_dir, embed_ms=port_ms["32"])

    results = {
        **photos,
        "dlib_ms_per_face": dlib_ms,
        "port_ms_per_face": port_ms,
        "ratio_dlib_over_port": ratio,
        "stages_ms_per_face": {"biofleet": ours, "dlib": theirs},
        "pipeline_ms_per_image_batch_32": pipeline_ms,
        "pipeline_cnn_ms_per_image_batch_32": cnn_pipeline_ms,
        "max_abs_descriptor_difference": max_diff,
        "stages_detector": "hog (dlib, upsample 1)",
        "detection_ms_per_image": detection_ms,
        "detection_setup": {
            "images": "lfw_colour, 250x250",
            "port_device": detection_device,
            "images_per_round": {name: count for name, (_, count) in cases.items()},
        },
        "faces": {"chips": len(chips), "stage_images": len(usable)},
        "repeats": repeats,
        "machine": machine(embedder.device),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def print_photo_table(results: dict) -> None:
    """The by-photo-size table."""
    from rich.console import Console
    from rich.table import Table

    photos = results.get("photo_stages_ms_per_image")
    if not photos:
        return
    stages = ("decode", "detect", "landmarks", "align", "embed")
    table = Table(
        title="by photo size, ms per image (biofleet: CNN on the working copy; dlib: face_recognition's path, HOG)",
        caption="dlib CNN: full resolution, one image; RSS: this process's peak while the case ran",
    )
    for name in ("photo", "pipeline", *stages, "total", "peak RSS MiB", "dlib CNN detect ms"):
        table.add_column(name, justify="left" if name in ("photo", "pipeline") else "right")
    for size, r in photos.items():
        for who in ("biofleet", "dlib"):
            ms = r[who]
            cnn = f"{r['dlib_cnn_detect_ms_one_image']:.0f}" if who == "dlib" else ""
            table.add_row(size, who, *(f"{ms.get(s, 0):.1f}" for s in stages), f"{sum(ms.values()):.1f}",
                          f"{r[who + '_peak_rss_mib']:.0f}", cnn)  # fmt: skip
    Console(width=160).print(table)


def print_tables(results: dict) -> None:
    """The results as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = results["machine"]
    console.print(
        f"device {m['device']} ({m.get('gpu') or m['processor']}), {m['cpu_count']} CPUs, "
        f"torch {m['torch']} with {m['torch_threads']} threads, {results['date']}"
    )
    table = Table(title="face descriptor, ms per face")
    for name in ("batch", "dlib (1 per call)", "port", "dlib / port"):
        table.add_column(name, justify="right")
    for size, ms in results["port_ms_per_face"].items():
        ratio = results["ratio_dlib_over_port"][size]
        table.add_row(size, f"{results['dlib_ms_per_face']:.2f}", f"{ms:.2f}", f"{ratio:.1f}x")
    console.print(table)

    stages = Table(title="pipeline stages, ms per face", caption="embed: port at batch 32, dlib one chip per call")
    for name in ("stage", "biofleet", "dlib"):
        stages.add_column(name, justify="right" if name != "stage" else "left")
    ours, theirs = results["stages_ms_per_face"]["biofleet"], results["stages_ms_per_face"]["dlib"]
    for stage in ours:
        stages.add_row(stage, f"{ours[stage]:.2f}", f"{theirs[stage]:.2f}")
    stages.add_row("total", f"{sum(ours.values()):.2f}", f"{sum(theirs.values()):.2f}")
    console.print(stages)
    detection = results.get("detection_ms_per_image")
    if detection:
        device = results.get("detection_setup", {}).get("port_device", m["device"])
        table = Table(title="face detection, ms per image (250x250 LFW photos)")
        for name in ("detector", "ms per image", "images/s"):
            table.add_column(name, justify="right" if name != "detector" else "left")
        for name, ms in detection.items():
            label = name.replace("port_", f"port ({device}) ").replace("_", " ")
            table.add_row(label, f"{ms:.2f}", f"{1000 / ms:.0f}")
        console.print(table)
    console.print(
        f"biofleet FacePipeline.process, 32 images, HOG detector: {results['pipeline_ms_per_image_batch_32']:.2f} ms per image; "
        f"with the ported CNN detector: {results.get('pipeline_cnn_ms_per_image_batch_32', float('nan')):.2f} ms per image; "
        f"largest |dlib - port| descriptor difference: {results['max_abs_descriptor_difference']:.2e}"
    )
    print_photo_table(results)


def main() -> None:
    from shared.settings import get_settings

    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=settings.device, help="auto, cpu, cuda (default: settings)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per figure (median taken)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--photos-only", action="store_true", help="only the by-photo-size table (updates --out)")
    args = parser.parse_args()
    if args.photos_only:
        import torch

        photos = photo_stages(args.device, max(1, args.repeats // 2), settings.faces_dir, settings.model_cache_dir)
        results = json.loads(args.out.read_text()) if args.out.exists() else {}
        results.update(photos, photos_machine=machine(torch.device("cpu") if args.device != "cuda" else torch.device("cuda")),
                       photos_date=datetime.now(UTC).isoformat(timespec="seconds"))  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print_photo_table(results)
        print(f"wrote {args.out}")
        return
    results = run(args.device, args.repeats, args.out, settings.faces_dir, settings.model_cache_dir)
    print_tables(results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
