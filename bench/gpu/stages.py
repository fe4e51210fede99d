"""The stages of the GPU benchmark. Each takes the Context and returns its figures (a dict);
times are medians with p10 / p90 over repeated runs after warm-up, CUDA synchronised."""

import gc
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worker.face.weights import MMOD_DETECTOR, RECOGNITION_MODEL, SHAPE_PREDICTOR_5

THRESHOLD = 0.6  # dlib's same-person distance
MAX_PIXELS = 25_000_000  # the worker's default


@dataclass
class Context:
    device: torch.device
    args: object
    deadline: float = 0.0
    cache: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    @property
    def repeats(self) -> int:
        return self.args.repeats or (2 if self.quick else 10 if self.cuda else 3)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def model(self, name: str) -> Path:
        path = Path(self.args.models_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} (make gpu-bundle, then --models-dir bench/gpu-bundle/models)")
        return path

    def chips(self) -> dict:
        if "chips" not in self.cache:
            with np.load(self.args.chips) as data:
                self.cache["chips"] = {k: data[k] for k in data.files}
        return self.cache["chips"]

    def embedder(self, precision: str = "fp32", cudnn_benchmark: bool = False):
        """Embedders share one network per device (loaded once, with Embedder.load)."""
        from worker.face.embed import Embedder

        if "embedder" not in self.cache:
            self.cache["embedder"] = Embedder.load(device=str(self.device), path=self.model(RECOGNITION_MODEL))
        base = self.cache["embedder"]
        return Embedder(base.model, base.weights_sha256, base.device, precision, cudnn_benchmark)

    def photos(self, folder: str) -> list[Path]:
        return sorted((Path(self.args.images) / folder).rglob("*.jpg"))


def release(ctx: Context) -> None:
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


def part(figures: dict, key: str, fn) -> None:
    """figures[key] = fn(), or what it failed with: a part that fails (a CUDA out-of-memory error
    at the largest batch, say) keeps the stage's other figures."""
    try:
        figures[key] = fn()
    except Exception as error:
        figures[key] = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def failed_parts(figures, at: str = "") -> list[str]:
    """The keys (dotted) of the parts that failed, anywhere in a stage's figures."""
    if not isinstance(figures, dict):
        return []
    if figures.get("status") == "failed":
        return [at]
    return [found for k, v in figures.items() for found in failed_parts(v, f"{at}.{k}" if at else str(k))]


def timed(ctx: Context, fn, repeats: int | None = None, warmup: int = 2) -> dict:
    """fn() run `warmup` times, then timed `repeats` times: ms median, p10, p90 and peak GPU MiB."""
    for _ in range(warmup):
        fn()
    ctx.sync()
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    times = []
    for _ in range(repeats or ctx.repeats):
        start = time.perf_counter()
        fn()
        ctx.sync()
        times.append(1000 * (time.perf_counter() - start))
    q = np.percentile(times, [10, 90]) if len(times) > 1 else (times[0], times[0])
    return {
        "ms_median": round(statistics.median(times), 3),
        "ms_p10": round(float(q[0]), 3),
        "ms_p90": round(float(q[1]), 3),
        "runs": len(times),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1) if ctx.cuda else None,
    }


def _precisions(ctx: Context) -> list[str]:
    """fp16 and bf16 where the device has them: both on CUDA (bf16 if supported), bf16 on the CPU."""
    if ctx.cuda:
        return ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    return ["fp32", "bf16"]


def _chip_batch(ctx: Context, count: int) -> tuple[np.ndarray, str]:
    try:
        chips = ctx.chips()["chips"]
        what = "real aligned chips (chips.npz)"
    except Exception as error:
        rng = np.random.default_rng(0)
        chips = rng.integers(0, 256, size=(64, 150, 150, 3), dtype=np.uint8)
        what = f"random chips: {type(error).__name__}"
    return np.ascontiguousarray(chips[np.arange(count) % len(chips)]), what


def network(ctx: Context) -> dict:
    """Faces/s per batch size and precision, model-only (chips already on the device) and through
    Embedder.embed (host copies both ways, as the worker calls it); cudnn.benchmark off as in the
    worker. Batch sizes past the stage's time share are skipped (listed)."""
    if ctx.quick:
        batches = [1, 32, 256] if ctx.cuda else [1, 8]
    else:
        batches = [2**k for k in range(12)] if ctx.cuda else [1, 8, 32, 64]
    chips, what = _chip_batch(ctx, max(batches))
    precisions = _precisions(ctx)
    embed_precisions = precisions if ctx.cuda else ["fp32"]  # the service refuses fp16/bf16 on the CPU
    base = ctx.embedder()
    pixels_all = torch.from_numpy(chips).to(ctx.device).permute(0, 3, 1, 2)
    figures = {
        "inputs": what,
        "precisions": precisions,
        "model": {p: {} for p in precisions},
        "embed": {p: {} for p in embed_precisions},
        "skipped_batches": [],
    }
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}

    def forward(pixels, precision):
        dtype = dtypes.get(precision)
        autocast = torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None)
        with torch.inference_mode(), autocast:
            return base.model(pixels)

    def rate(t: dict) -> dict:
        return t | {"faces_per_s": round(1000 * batch / t["ms_median"], 1)}

    for batch in batches:
        if ctx.left() < 0:
            figures["skipped_batches"].append(batch)
            continue
        pixels = pixels_all[:batch]
        for precision in precisions:
            part(figures["model"][precision], str(batch), lambda: rate(timed(ctx, lambda: forward(pixels, precision))))
        for precision in embed_precisions:
            embedder = ctx.embedder(precision)
            part(
                figures["embed"][precision], str(batch), lambda: rate(timed(ctx, lambda: embedder.embed(chips[:batch])))
            )
    figures["best"] = {
        path: {
            p: max(
                ({"batch": int(b), "faces_per_s": f["faces_per_s"]} for b, f in by.items()),
                key=lambda x: x["faces_per_s"],
                default=None,
            )
            for p, by in ((p, {b: f for b, f in by.items() if "faces_per_s" in f}) for p, by in figures[path].items())
        }
        for path in ("model", "embed")
    }
    return figures


def cudnn_benchmark(ctx: Context) -> dict:
    """Embedder.embed with cudnn.benchmark off and on at two batch sizes; the first call (where
    cuDNN searches) timed on its own. On the CPU the flag does nothing: the decision is the GPU's."""
    sizes = ([64, 512] if ctx.cuda else [8, 32])[: 1 if ctx.quick and not ctx.cuda else 2]
    chips, what = _chip_batch(ctx, max(sizes))
    figures = {"inputs": what, "note": None if ctx.cuda else "no effect on the CPU; the GPU run decides"}
    for size in sizes:
        row = {}
        for flag in (False, True):
            embedder = ctx.embedder("fp32", cudnn_benchmark=flag)
            shaped = chips[:size].copy()
            start = time.perf_counter()
            embedder.embed(shaped)
            ctx.sync()
            first_ms = 1000 * (time.perf_counter() - start)
            t = timed(ctx, lambda: embedder.embed(shaped), warmup=1)
            row["on" if flag else "off"] = t | {
                "first_call_ms": round(first_ms, 2),
                "faces_per_s": round(1000 * size / t["ms_median"], 1),
            }
        row["speedup_on_over_off"] = round(row["off"]["ms_median"] / row["on"]["ms_median"], 3)
        figures[str(size)] = row
    return figures


def _pair_figures(a: np.ndarray, b: np.ndarray, data: dict, keep: np.ndarray) -> dict:
    """a against b (descriptors of the same chips): largest differences and the same/different
    decisions at 0.6 that change, on the real pairs (per pair set)."""
    pairs, same, sets = data["pairs"][keep], data["same"][keep], data["pair_set"][keep]
    dist_a = np.linalg.norm(a[pairs[:, 0]] - a[pairs[:, 1]], axis=1)
    dist_b = np.linalg.norm(b[pairs[:, 0]] - b[pairs[:, 1]], axis=1)
    flips = (dist_a <= THRESHOLD) != (dist_b <= THRESHOLD)
    out = {
        "max_abs": float(np.abs(a - b).max()),
        "max_distance": float(np.linalg.norm(a - b, axis=1).max()),
        "max_pair_distance_change": float(np.abs(dist_a - dist_b).max()),
        "all_finite": bool(np.isfinite(a).all()),
        "accuracy_at_0.6": round(float(((dist_a <= THRESHOLD) == same).mean()), 4),
    }
    for name in sorted(set(sets.tolist())):
        mine = sets == name
        out[f"flips_at_0.6_{name}"] = f"{int(flips[mine].sum())} of {int(mine.sum())}"
    out["decision_flips_at_0.6"] = int(flips.sum())
    out["pairs"] = int(len(pairs))
    return out


def agreement(ctx: Context) -> dict:
    """On the bundle's real chips: the device's fp32 against the CPU's fp32 (computed when the
    bundle was made) and against dlib; fp16 / bf16 against the CPU's fp32."""
    data = ctx.chips()
    count = 64 if ctx.quick else len(data["chips"])
    chips = data["chips"][:count]
    keep = (data["pairs"] < count).all(axis=1)

    def describe(embedder) -> np.ndarray:
        return np.concatenate([embedder.embed(chips[i : i + 64]) for i in range(0, len(chips), 64)])

    fp32 = describe(ctx.embedder("fp32"))
    dlib, cpu = data["dlib"][:count], data["cpu_fp32"][:count]
    figures = {
        "chips": int(count),
        "max_abs_vs_dlib": float(np.abs(fp32 - dlib).max()),
        "max_abs_vs_cpu_fp32": float(np.abs(fp32 - cpu).max()),
        "max_abs_cpu_fp32_vs_dlib": float(np.abs(cpu - dlib).max()),
        "fp32_vs_dlib": _pair_figures(fp32, dlib, data, keep),
        "dlib_accuracy_at_0.6": _pair_figures(dlib, dlib, data, keep)["accuracy_at_0.6"],
    }
    for precision in _precisions(ctx)[1:]:
        low = describe(ctx.embedder(precision))
        figures[f"{precision}_vs_cpu_fp32"] = _pair_figures(low, cpu, data, keep)
    if not ctx.cuda:
        figures["note"] = "bf16 on the CPU by autocast (the service runs fp16/bf16 on CUDA only)"
    return figures


def _decoded(paths: list[Path]) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def _boxes(found) -> list[list[tuple]]:
    return [[(d.left, d.top, d.right, d.bottom, d.confidence) for d in image] for image in found]


def _compare_boxes(a, b) -> dict:
    a, b = _boxes(a), _boxes(b)
    same_count = sum(len(x) == len(y) for x, y in zip(a, b))
    coords = [abs(p - q) for x, y in zip(a, b) if len(x) == len(y) for u, v in zip(x, y) for p, q in zip(u[:4], v[:4])]
    scores = [abs(u[4] - v[4]) for x, y in zip(a, b) if len(x) == len(y) for u, v in zip(x, y)]
    return {
        "images": len(a),
        "same_box_count": same_count,
        "boxes": sum(map(len, a)),
        "max_coordinate_difference": max(coords, default=0),
        "max_confidence_difference": max(scores, default=0.0),
    }


def detector(ctx: Context) -> dict:
    """The ported CNN detector: images/s per batch size with its forward passes per call, boxes
    against the CPU (and batched against one at a time), a mixed-size batch, and one 1080p and
    one 12 MP photo alone, with peak GPU memory."""
    from worker.face.mmod import MmodDetector

    model = MmodDetector.load(device=str(ctx.device), path=ctx.model(MMOD_DETECTOR))
    passes = [0]
    model.model.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))

    def counted(images, repeats=None, warmup=1) -> dict:
        passes[0] = 0
        model.detect_many(images)  # counts the passes, and warms up
        per_call = passes[0]
        t = timed(ctx, lambda: model.detect_many(images), repeats, warmup)
        return t | {"forward_passes": per_call, "images_per_s": round(1000 * len(images) / t["ms_median"], 1)}

    lfw = _decoded(ctx.photos("lfw_colour"))
    if ctx.quick:
        batches = [1, 8] if ctx.cuda else [1, 4]
    else:
        batches = [1, 8, 32, 64, 128, 256] if ctx.cuda else [1, 4, 8]
    figures = {
        "inputs": f"{len(lfw)} lfw_colour photos 250x250, repeated",
        "max_batch_pixels": model.max_batch_pixels,
        "batches": {},
        "skipped_batches": [],
    }
    for batch in batches:
        if ctx.left() < 0:
            figures["skipped_batches"].append(batch)
            continue
        images = [lfw[i % len(lfw)] for i in range(batch)]
        part(
            figures["batches"],
            str(batch),
            lambda: counted(images) | {"faces_per_image": sum(map(len, model.detect_many(images))) / len(images)},
        )
    sample = lfw[:16]
    batched = model.detect_many(sample)
    part(figures, "batched_vs_one_at_a_time", lambda: _compare_boxes(batched, [model.detect(i) for i in sample]))
    if ctx.cuda:
        on_cpu = lambda: MmodDetector.load(device="cpu", path=ctx.model(MMOD_DETECTOR))  # noqa: E731
        part(figures, "device_vs_cpu", lambda: _compare_boxes(batched, on_cpu().detect_many(sample)))
    else:
        figures["device_vs_cpu"] = "the device is the CPU"
    phones = ctx.photos("phone")
    hd = [p for p in phones if "1920x1080" in p.name][:1]
    large = [p for p in phones if "4032x3024" in p.name][:1]
    mixed = lfw[:6] + _decoded(hd) + [np.asarray(Image.fromarray(lfw[6]).resize((500, 500)))]
    part(
        figures,
        "mixed_batch",
        lambda: (
            counted(mixed, repeats=min(ctx.repeats, 3), warmup=0)
            | {
                "sizes": sorted({f"{m.shape[1]}x{m.shape[0]}" for m in mixed}),
                "faces_found": sum(map(len, model.detect_many(mixed))),
            }
        ),
    )
    for label, paths in (("1080p", hd), ("12mp", large if not ctx.quick else [])):
        if not paths:
            figures[label] = "not in the quick run" if ctx.quick else "no such photo in the bundle"
            continue
        image = _decoded(paths)
        repeats = min(ctx.repeats, 3) if ctx.cuda or label == "1080p" else 1  # 12 MP: 9 s a run on 2 cores
        part(
            figures,
            label,
            lambda: counted(image, repeats=repeats, warmup=0) | {"faces_found": len(model.detect_many(image)[0])},
        )
    return figures


def _gpu_decode(ctx: Context, data: list[bytes]) -> dict:
    """torchvision.io.decode_jpeg on the GPU, batched, when torchvision is there (it is optional:
    the PyPI build does not import beside every torch build)."""
    if not ctx.cuda:
        return {"status": "not run", "why": "CPU device"}
    try:
        from torchvision.io import decode_jpeg
    except Exception as error:
        return {"status": "not run", "why": f"torchvision not usable: {type(error).__name__}: {error}"}
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    try:
        t = timed(ctx, lambda: decode_jpeg(tensors, device=ctx.device))
    except Exception as error:  # an optional extra: said, but the pipeline's figures stand
        return {"status": "not usable", "why": f"{type(error).__name__}: {error}"}
    return {"status": "ok", "images": len(data)} | t | {"images_per_s": round(1000 * len(data) / t["ms_median"], 1)}


def _stage_times(ctx: Context, faces, pool, data: list[bytes]) -> dict:
    """ms per image of each pipeline stage, timed alone (one run) as FacePipeline runs it."""
    from worker.face.align import face_chip
    from worker.face.decode import decode_image

    seconds = {}
    start = time.perf_counter()
    decoded = list(pool.map(lambda d: decode_image(d, MAX_PIXELS), data))
    seconds["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    boxes = faces.detector.detect_many(decoded)
    ctx.sync()
    seconds["detect"] = time.perf_counter() - start
    found = [(image, max(b, key=lambda x: x.area)) for image, b in zip(decoded, boxes) if b]
    start = time.perf_counter()
    points = faces.landmarker.landmarks_many([f[0] for f in found], [f[1] for f in found])
    seconds["landmarks"] = time.perf_counter() - start
    start = time.perf_counter()
    chips = list(pool.map(face_chip, [f[0] for f in found], list(points)))
    seconds["align"] = time.perf_counter() - start
    start = time.perf_counter()
    faces.embedder.embed(np.stack(chips))
    ctx.sync()
    seconds["embed"] = time.perf_counter() - start
    return {k: round(1000 * v / len(data), 3) for k, v in seconds.items()}


def pipeline(ctx: Context) -> dict:
    """FacePipeline (decode, CNN detection, landmarks, align, embed) on JPEG bytes: images/s end
    to end per batch size, and ms per image of each stage timed alone on the same batch."""
    from worker.face.detect import CnnDetector
    from worker.face.landmarks import Landmarker
    from worker.face.pipeline import FacePipeline

    threads = ctx.args.threads
    detector = CnnDetector(device=str(ctx.device), path=ctx.model(MMOD_DETECTOR))
    landmarker = Landmarker(path=ctx.model(SHAPE_PREDICTOR_5))
    lfw = [p.read_bytes() for p in ctx.photos("lfw_colour")]
    if ctx.quick:
        batches = [16]
    else:
        batches = [32, 64, 128] if ctx.cuda else [32, 64]
    figures = {
        "inputs": f"{len(lfw)} lfw_colour JPEGs, repeated",
        "threads": threads,
        "batches": {},
        "skipped_batches": [],
    }
    with (
        FacePipeline(ctx.embedder(), detector, landmarker, max_pixels=MAX_PIXELS, threads=threads) as faces,
        ThreadPoolExecutor(max_workers=threads) as pool,
    ):

        def one_batch(data: list[bytes]) -> dict:
            results = faces.process(data)
            t = timed(ctx, lambda: faces.process(data), repeats=min(ctx.repeats, 5), warmup=0)
            return t | {
                "images_per_s": round(1000 * len(data) / t["ms_median"], 1),
                "ok": sum(r.ok for r in results),
                "stage_ms_per_image": _stage_times(ctx, faces, pool, data),
            }

        def phones(data: list[bytes]) -> dict:
            start = time.perf_counter()
            results = faces.process(data)
            ctx.sync()
            return {
                "images": len(data),
                "ok": sum(r.ok for r in results),
                "bytes": [len(d) for d in data],
                "ms_per_image": round(1000 * (time.perf_counter() - start) / len(data), 1),
            }

        for batch in batches:
            if ctx.left() < 0:
                figures["skipped_batches"].append(batch)
                continue
            part(figures["batches"], str(batch), lambda: one_batch([lfw[i % len(lfw)] for i in range(batch)]))
        paths = [p for p in ctx.photos("phone") if not (ctx.quick and "4032x3024" in p.name)]
        part(figures, "phone_photos", lambda: phones([p.read_bytes() for p in paths]))
    part(figures, "gpu_jpeg_decode", lambda: _gpu_decode(ctx, lfw[: max(batches)]))
    return figures


def _headline(stage: dict) -> str:
    """One line of figures per stage for the table."""
    f = stage["figures"]
    if stage["status"] != "ok" and not f:
        return stage["error"] or stage["why"] or ""
    if stage["name"] == "network":
        return ", ".join(
            f"{p} {b['faces_per_s']:.0f} faces/s at {b['batch']}" for p, b in f["best"]["embed"].items() if b
        )
    if stage["name"] == "cudnn_benchmark":
        return ", ".join(f"batch {k}: on/off x{v['speedup_on_over_off']}" for k, v in f.items() if isinstance(v, dict))
    if stage["name"] == "agreement":
        low = ", ".join(
            f"{k.split('_')[0]} max {v['max_abs']:.1e}, {v['decision_flips_at_0.6']} flips"
            for k, v in f.items()
            if k in ("fp16_vs_cpu_fp32", "bf16_vs_cpu_fp32")
        )
        return f"fp32 vs dlib {f['max_abs_vs_dlib']:.1e}; {low}"
    if stage["name"] == "detector":
        return ", ".join(
            f"b{b} {v['images_per_s']:.0f} img/s ({v['forward_passes']} passes)"
            for b, v in f["batches"].items()
            if "images_per_s" in v
        )
    if stage["name"] == "pipeline":
        return ", ".join(f"b{b} {v['images_per_s']:.1f} img/s" for b, v in f["batches"].items() if "images_per_s" in v)
    return ""


def print_table(data: dict) -> None:
    rows = [(s["name"], s["status"], f"{s['elapsed_s']:.1f}", _headline(s)) for s in data["stages"]]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for row in rows:
            print(" | ".join(row))
        return
    table = Table(title=f"biofleet on {data['setup'].get('gpu', {}).get('name', data['setup']['device'])}")
    for column in ("stage", "status", "s", "figures"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
