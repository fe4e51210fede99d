"""Face commands: `biofleet embed` (descriptors for image files) and `biofleet eval-pairs`
(verification metrics on an LFW-format pairs file, optionally beside dlib's own pipeline)."""

import json
import sys
from pathlib import Path

import click

from cli.common import descriptors, load_face_pipeline, load_pairs, setup

DLIB_THRESHOLD = 0.6
METRIC_KEYS = ("accuracy_at_0_6", "best_accuracy", "eer", "fnmr_at_fmr_1e-2", "fnmr_at_fmr_1e-3")


def _result_json(path: Path, result) -> dict:
    """One file's FaceResult as a JSON-ready dict."""
    box = result.box
    return {
        "file": str(path),
        "ok": result.ok,
        "descriptor": [float(v) for v in result.descriptor] if result.ok else None,
        "box": [box.left, box.top, box.right, box.bottom] if box is not None else None,
        "detector": result.detector,
        "error_code": result.error_code,
        "error_message": result.error_message,
    }


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file instead of text lines.")
@click.option("--cropped", is_flag=True, help="The images are face crops already: no detection.")
def embed(files: tuple[Path, ...], as_json: bool, cropped: bool) -> None:
    """Print each image file's 128-d face descriptor, or its error code and message.

    Text lines are `FILE ok N1 N2 ... N128` or `FILE error CODE: MESSAGE`. The exit status is 1
    when any file gave no descriptor.
    """
    settings = setup()
    failed = 0
    with load_face_pipeline(settings) as pipeline:
        for start in range(0, len(files), settings.batch_size):
            batch = files[start : start + settings.batch_size]
            results = pipeline.process([path.read_bytes() for path in batch], cropped=cropped)
            for path, result in zip(batch, results):
                failed += not result.ok
                if as_json:
                    click.echo(json.dumps(_result_json(path, result)))
                elif result.ok:
                    click.echo(f"{path} ok " + " ".join(f"{v:.6f}" for v in result.descriptor))
                else:
                    click.echo(f"{path} error {result.error_code}: {result.error_message}")
    if failed:
        sys.exit(1)


def _column(pairs, results: dict) -> tuple[dict, tuple | None]:
    """Metrics for one pipeline's results: (report dict, (genuine, impostor) distances or None).

    A pair with an image that gave no descriptor counts in fta and is left out of the metrics.
    """
    import numpy as np

    from worker.face.evaluation import summary

    distances, same, folds, fta = [], [], [], 0
    for pair in pairs:
        first, second = results[pair.first], results[pair.second]
        if not (first.ok and second.ok):
            fta += 1
            continue
        distances.append(float(np.linalg.norm(first.descriptor - second.descriptor)))
        same.append(pair.same)
        folds.append(pair.fold)
    failures: dict[str, int] = {}
    for result in results.values():
        if not result.ok:
            failures[result.error_code] = failures.get(result.error_code, 0) + 1
    report = {"pairs": len(pairs), "fta": fta, "failed_images": failures}
    d, s = np.asarray(distances), np.asarray(same, dtype=bool)
    if s.any() and (~s).any():
        report.update(summary(d, s, folds, threshold=DLIB_THRESHOLD))
        return report, (d[s], d[~s])
    report.update({key: None for key in METRIC_KEYS})
    return report, None


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _table(columns: dict[str, dict], folds: int):
    """A rich table: one row per metric, one column per pipeline."""
    from rich.table import Table

    best = f"best-threshold accuracy ({folds}-fold CV)" if folds > 1 else "best-threshold accuracy (fit on these pairs)"
    rows = [
        ("pairs", lambda r: str(r["pairs"])),
        ("failure to acquire (pairs)", lambda r: str(r["fta"])),
        (
            "images failed, by code",
            lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r["failed_images"].items())) or "0",
        ),
        ("genuine / impostor scored", lambda r: f"{r.get('genuine', 0)} / {r.get('impostor', 0)}"),
        (f"accuracy at {DLIB_THRESHOLD}", lambda r: _percent(r["accuracy_at_0_6"])),
        (best, lambda r: _percent(r["best_accuracy"])),
        ("best threshold", lambda r: f"{r['best_threshold']:.4f}" if "best_threshold" in r else "n/a"),
        ("EER", lambda r: _percent(r["eer"])),
        ("EER threshold", lambda r: f"{r['eer_threshold']:.4f}" if "eer_threshold" in r else "n/a"),
        ("FNMR at FMR 1e-2", lambda r: _percent(r["fnmr_at_fmr_1e-2"])),
        ("FNMR at FMR 1e-3", lambda r: _percent(r["fnmr_at_fmr_1e-3"])),
    ]
    table = Table(title="pair verification")
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for label, cell in rows:
        table.add_row(label, *(cell(report) for report in columns.values()))
    return table


@click.command("eval-pairs")
@click.argument("pairs_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--root",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding NAME/NAME_NNNN.jpg images.",
)
@click.option("--reference", type=click.Choice(["dlib"]), help="Also run dlib's own pipeline on the same pairs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (fractions, not percents).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG: DET curve and histograms.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--quality-filter",
    type=click.Choice(["none", "low", "medium", "high"]),
    default="none",
    show_default=True,
    help="Refuse faces below this quality level (refused images count as failures to acquire).",
)
def eval_pairs(
    pairs_file: Path,
    root: Path,
    reference: str | None,
    as_json: bool,
    plot: Path | None,
    batch_size: int,
    quality_filter: str,
) -> None:
    """Verification metrics on an LFW-format pairs file.

    Each distinct image is processed once. Reports accuracy at dlib's threshold 0.6, the
    best-threshold accuracy (cross-validated when the file has folds), EER, FNMR at FMR 1e-2
    and 1e-3, and the failure-to-acquire count (pairs left out because an image failed).
    """
    from worker.face.evaluation import plot_report
    from worker.face.reference import DlibReference

    settings = setup()
    pairs, images = load_pairs(pairs_file, root)
    folds = len({pair.fold for pair in pairs})

    # Both columns keep the largest face when an image shows several; each is named with its detector.
    columns, distances = {}, {}
    ours, theirs = f"biofleet ({settings.detector})", "dlib (hog)"
    from worker.face.choose import FaceOptions

    def process(batch: list[bytes]) -> list:
        return pipeline.process(batch, options=[FaceOptions(quality_filter=quality_filter)] * len(batch))

    with load_face_pipeline(settings, multiple_faces="largest") as pipeline:
        results = descriptors(process, root, images, batch_size, "biofleet")
    columns[ours], distances[ours] = _column(pairs, results)
    if reference == "dlib":
        dlib = DlibReference.load(
            upsample=settings.detector_upsample, multiple_faces="largest", max_pixels=settings.max_image_pixels
        )
        results = descriptors(dlib.process, root, images, batch_size, "dlib")
        columns[theirs], distances[theirs] = _column(pairs, results)

    if plot is not None:
        series = {name: d for name, d in distances.items() if d is not None}
        if series:
            plot_report(series, DLIB_THRESHOLD, plot, title=f"{pairs_file.name}: {len(pairs)} pairs")
        else:
            click.echo("no pairs scored: no plot written", err=True)

    if as_json:
        out = {**columns[ours], "detector": settings.detector, "quality_filter": quality_filter}
        if theirs in columns:
            out["reference"] = {**columns[theirs], "detector": "hog"}
        click.echo(json.dumps(out))
    else:
        from rich.console import Console

        Console().print(_table(columns, folds))
        if plot is not None and any(d is not None for d in distances.values()):
            click.echo(f"plot written to {plot}")


COMMANDS = [embed, eval_pairs]
