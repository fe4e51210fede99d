"""Face quality on the shared data: the distribution of each measure, what each quality_filter
level refuses, and the View 1 accuracy with each level on.

Run: python -m bench.quality [--faces ../shared/data/faces] [--limit N]

Every image of lfw_view1's pairsDevTest.txt, of lfw_colour and of orl (as face crops) goes
through the pipeline once with no filter; each level of worker.face.quality.FILTERS is then
applied to the measured qualities (a refused image is a failure to acquire: its pairs are left
out). Prints tables and writes bench/results/quality.json. This is how the levels were calibrated.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from worker.face.quality import FILTERS, QUALITY_FILTERS, failures

ROOT = Path(__file__).resolve().parents[1]
MEASURES = ("face_size_px", "sharpness", "yaw", "pitch", "roll", "brightness", "contrast")
THRESHOLD = 0.6


def run(process: Any, paths: list[Path], cropped: bool, label: str) -> dict[str, Any]:
    from tqdm import tqdm

    results = {}
    for start in tqdm(range(0, len(paths), 32), desc=label, file=sys.stderr, leave=False):
        batch = paths[start : start + 32]
        for path, result in zip(batch, process([p.read_bytes() for p in batch], cropped=cropped)):
            results[str(path)] = result
    return results


def from_dump(dump: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The results of a --dump, as FaceResults."""
    from worker.face.quality import Quality
    from worker.face.types import FaceResult

    def result(entry: dict[str, Any] | None) -> Any:
        if entry is None:
            return FaceResult(error_code="no_face")
        return FaceResult(descriptor=np.asarray(entry["descriptor"]), quality=Quality(**entry["quality"]))

    return {name: {path: result(entry) for path, entry in found.items()} for name, found in dump.items()}


def refused(results: dict[str, Any], level: str) -> set[str]:
    return {name for name, r in results.items() if r.ok and failures(r.quality, level)}


def view1(results: dict[str, Any], pairs: list[Any], root: Path, level: str) -> dict[str, Any]:
    """Accuracy at 0.6 over the pairs whose images both pass the level."""
    out = refused(results, level)
    correct = scored = 0
    for pair in pairs:
        a, b = results[str(root / pair.first)], results[str(root / pair.second)]
        if not (a.ok and b.ok) or str(root / pair.first) in out or str(root / pair.second) in out:
            continue
        scored += 1
        correct += (float(np.linalg.norm(a.descriptor - b.descriptor)) <= THRESHOLD) == pair.same
    images = sum(r.ok for r in results.values())
    return {
        "images_refused": len(out),
        "images_refused_share": len(out) / max(1, images),
        "pairs_scored": scored,
        "accuracy_at_0_6": correct / max(1, scored),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces")
    parser.add_argument("--limit", type=int, default=0, help="at most this many pairs (0: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.json")
    parser.add_argument("--dump", type=Path, help="also write each image's quality and descriptor here (JSON)")
    parser.add_argument("--from-dump", type=Path, help="read the qualities from an earlier --dump: no pipeline pass")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from worker.face.evaluation import read_pairs
    from worker.face.pipeline import load_pipeline

    view_root = args.faces / "lfw_view1"
    pairs = read_pairs(view_root / "pairsDevTest.txt")[: args.limit or None]
    view_paths = list(dict.fromkeys(view_root / name for p in pairs for name in (p.first, p.second)))
    sets = {
        "lfw_view1": (view_paths, False),
        "lfw_colour": (sorted((args.faces / "lfw_colour").glob("*/*.jpg")), False),
        "orl": (sorted((args.faces / "orl").glob("*/*.pgm")), True),
    }
    if args.from_dump is not None:
        results = from_dump(json.loads(args.from_dump.read_text()))
    else:
        with load_pipeline(device="cpu", detector="cnn", threads=2) as pipeline:
            results = {name: run(pipeline.process, paths, cropped, name) for name, (paths, cropped) in sets.items()}

    if args.dump is not None:
        dump = {
            name: {
                path: {"quality": vars(r.quality), "descriptor": r.descriptor.tolist()} if r.ok else None
                for path, r in found.items()
            }
            for name, found in results.items()
        }
        args.dump.write_text(json.dumps(dump))
    report: dict[str, Any] = {"filters": {k: vars(v) for k, v in FILTERS.items()}, "sets": {}}
    spread = Table(title="quality measures: 1st / 5th / 50th / 95th / 99th percentile")
    spread.add_column("set")
    for measure in MEASURES:
        spread.add_column(measure, justify="right")
    for name, found in results.items():
        qualities = [r.quality for r in found.values() if r.ok]
        row, stats = [name], {}
        for measure in MEASURES:
            values = np.array([getattr(q, measure) for q in qualities], dtype=float)
            if measure in ("yaw", "pitch", "roll"):
                values = np.abs(values)
            points = np.percentile(values, [1, 5, 50, 95, 99]) if len(values) else [float("nan")] * 5
            stats[measure] = [round(float(v), 3) for v in points]
            row.append(" / ".join(f"{v:.2f}" if v < 10 else f"{v:.0f}" for v in points))
        spread.add_row(*row)
        report["sets"][name] = {
            "images": len(found),
            "faces": len(qualities),
            "percentiles": stats,
            "refused": {level: len(refused(found, level)) for level in QUALITY_FILTERS},
        }
    levels = Table(title=f"View 1 ({len(pairs)} pairs), accuracy at {THRESHOLD} per quality_filter")
    for column in ("quality_filter", "images refused", "pairs scored", "accuracy", "lfw_colour refused", "orl refused"):
        levels.add_column(column, justify="right")
    report["view1"] = {}
    for level in QUALITY_FILTERS:
        found = view1(results["lfw_view1"], pairs, view_root, level)
        report["view1"][level] = found
        levels.add_row(
            level,
            f"{found['images_refused']} ({100 * found['images_refused_share']:.1f}%)",
            str(found["pairs_scored"]),
            f"{100 * found['accuracy_at_0_6']:.2f}%",
            str(report["sets"]["lfw_colour"]["refused"][level]),
            str(report["sets"]["orl"]["refused"][level]),
        )
    console = Console(width=150)
    console.print(spread)
    console.print(levels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
