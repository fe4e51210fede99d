"""The GPU benchmark runner: stages in turn, each in its own try/except, the JSON rewritten after
every stage, within an overall time budget.

    bench/gpu.sh --device cuda --budget-s 360            # what the GPU host runs (bench/README.md)
    bench/gpu.sh --device cpu --quick --out /tmp/g.json  # a reduced run

Imports only torch, numpy, Pillow (rich for the table, torchvision for GPU JPEG decoding, both
when present) and worker/face from this checkout: no pydantic, no dlib, no face-recognition-models.
The models, chips and photos come from the bundle (`make gpu-bundle`, bench/gpu/bundle.py).
"""

import argparse
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.gpu import stages  # noqa: E402

BUNDLE = ROOT / "bench" / "gpu-bundle"
# (name, share of the time left when it starts, seconds it needs at least to be worth starting)
PLAN = (
    ("network", 0.35, 20),
    ("cudnn_benchmark", 0.15, 10),
    ("agreement", 0.3, 10),
    ("detector", 0.45, 15),
    ("pipeline", 0.9, 15),
)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/gpu.sh", description="biofleet's face model on one device")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="the three dlib .dat files (default: the bundle's, else face-recognition-models')",
    )
    p.add_argument("--chips", type=Path, default=BUNDLE / "chips.npz", help="chips, descriptors and pairs")
    p.add_argument("--images", type=Path, default=BUNDLE / "faces", help="lfw_colour/ and phone/ JPEGs")
    p.add_argument("--out", type=Path, default=None, help="default $OUT/gpu-<device>.json, else bench/results/")
    p.add_argument("--quick", action="store_true", help="a reduced run: few sizes, few repeats")
    p.add_argument("--budget-s", type=float, default=360, help="no stage starts past this; the JSON is kept")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 10 CUDA, 3 CPU)")
    p.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="the pipeline's pool")
    p.add_argument("--stages", default=",".join(name for name, _, _ in PLAN), help="comma-separated subset")
    return p.parse_args(argv)


def default_models_dir() -> Path:
    """The bundle's models, else face-recognition-models' folder (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if not (BUNDLE / "models").is_dir() and spec is not None and spec.origin:
        return Path(spec.origin).parent / "models"
    return BUNDLE / "models"


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def default_out(device: torch.device) -> Path:
    folder = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results"
    return folder / f"gpu-{device_slug(device)}.json"


def _command(args: list[str]) -> str | None:
    try:
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=30)
        return (done.stdout + done.stderr).strip() or None
    except (OSError, subprocess.SubprocessError) as error:
        return f"not run: {error!r}"


def _commit() -> str | None:
    """This checkout's commit, when git and .git are there (the bundle's manifest has its own)."""
    found = _command(["git", "rev-parse", "HEAD"]) or ""
    return found if re.fullmatch(r"[0-9a-f]{40}", found) else None


def _version(module: str) -> str | None:
    try:
        found = __import__(module)
    except Exception:
        return None
    try:
        return found.__version__
    except AttributeError:
        from importlib.metadata import version

        return version(module)


def setup(device: torch.device, args: argparse.Namespace) -> dict:
    """What the run ran on: versions, the GPU, the numerics flags, the commit, the bundle."""
    info = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "versions": {m: _version(m) for m in ("numpy", "PIL", "cv2", "torchvision", "rich")},
        "flags": {
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "commit": _commit(),
        "nvidia_smi": _command(["nvidia-smi"]) if device.type == "cuda" else None,
        "bundle": None,
        "models_dir": str(args.models_dir),
        "quick": args.quick,
        "budget_s": args.budget_s,
    }
    manifest = args.chips.parent / "manifest.json"
    if manifest.is_file():
        info["bundle"] = json.loads(manifest.read_text())
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "total_memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    return info


class Report:
    """The JSON under way: rewritten (atomically) after every stage."""

    def __init__(self, out: Path, setup_info: dict):
        self.out = out
        self.data = {"setup": setup_info, "stages": [], "finished": False}
        self.write()

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.out)

    def add(self, entry: dict) -> None:
        self.data["stages"].append(entry)
        self.write()


def run_stage(name: str, fn, ctx: stages.Context, share: float, least_s: float, deadline: float) -> dict:
    """One stage under its own try/except, with its share of the time left."""
    left = deadline - time.monotonic()
    entry = {"name": name, "status": "skipped", "why": None, "elapsed_s": 0.0, "error": None, "figures": {}}
    if left < least_s:
        entry["why"] = f"{left:.0f} s of the budget left, the stage needs at least {least_s:.0f} s"
        return entry
    ctx.deadline = time.monotonic() + max(least_s, share * left)
    started = time.monotonic()
    print(f"== {name} (until +{ctx.deadline - started:.0f} s)", file=sys.stderr, flush=True)
    try:
        entry["figures"] = fn(ctx)
        failed = stages.failed_parts(entry["figures"])
        entry["status"] = "failed" if failed else "ok"
        entry["error"] = f"parts failed: {', '.join(failed)}" if failed else None
    except Exception as error:
        entry["status"] = "failed"
        entry["error"] = f"{type(error).__name__}: {error}"
        entry["traceback"] = traceback.format_exc(limit=8)[-4000:]
        print(entry["traceback"], file=sys.stderr)
    finally:
        entry["elapsed_s"] = round(time.monotonic() - started, 2)
        stages.release(ctx)
    return entry


def main(argv=None) -> int:
    args = parse(argv)
    args.models_dir = args.models_dir or default_models_dir()
    started = time.monotonic()
    deadline = started + args.budget_s
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"CUDA is not available (torch {torch.__version__}, CUDA {torch.version.cuda})", file=sys.stderr)
        return 2
    out = args.out or default_out(device)
    report = Report(out, setup(device, args))

    def interrupted(signum, frame):
        report.data["interrupted"] = f"signal {signum} after {time.monotonic() - started:.0f} s"
        report.write()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    ctx = stages.Context(device=device, args=args)
    chosen = set(args.stages.split(","))
    for name, share, least_s in PLAN:
        if name not in chosen:
            continue
        entry = run_stage(name, getattr(stages, name), ctx, share, least_s, deadline)
        report.add(entry)
        print(
            f"   {name}: {entry['status']} in {entry['elapsed_s']} s {entry['error'] or entry['why'] or ''}",
            file=sys.stderr,
            flush=True,
        )
    report.data["flags_after"] = {
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    report.data["finished"] = True
    report.data["wall_s"] = round(time.monotonic() - started, 1)
    report.write()
    try:
        stages.print_table(report.data)
    except Exception as error:  # the JSON is written: a table that fails costs only the table
        print(f"table not printed: {error!r}", file=sys.stderr)
    print(f"wrote {out}")
    return 0 if all(s["status"] == "ok" for s in report.data["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
