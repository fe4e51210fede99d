"""`biofleet calibrate`: a model version's threshold from an LFW-format pairs file.

Genuine distances come from the file's same-person pairs; impostor distances from its
different-person pairs, or (--impostors all, the default) from every pair of its images of two
different people, which is what makes FMR 1e-3 and 1e-4 measurable on a 1,000-pair file.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import numpy as np

IMPOSTOR_MODES = ("all", "pairs")


def identity(name: str) -> str:
    """The person of an image path "Name/Name_0001.jpg"."""
    return name.split("/", 1)[0]


def all_impostor_distances(names: list[str], descriptors) -> "np.ndarray":
    """Distances of every pair of these images whose identities differ."""
    import numpy as np

    d = np.asarray(descriptors, dtype=np.float64)
    squared = (d * d).sum(axis=1)
    gram = np.maximum(squared[:, None] + squared[None, :] - 2 * d @ d.T, 0.0)
    people = np.asarray([identity(n) for n in names])
    upper = np.triu(np.ones((len(names), len(names)), dtype=bool), k=1)
    return np.sqrt(gram[upper & (people[:, None] != people[None, :])])


def version_preprocessing(settings, version: str) -> dict:
    """A preset's preprocessing, else the registered version's (needs the database)."""
    from worker.versions import PRESETS

    if version in PRESETS:
        return PRESETS[version]
    from shared.db.session import session_scope
    from shared.gallery import GalleryError, get_version
    from shared.services import resolve

    try:
        with session_scope(resolve(settings).database_url) as session:
            return dict(get_version(session, version).preprocessing or {})
    except GalleryError as error:
        raise click.ClickException(str(error)) from None


def _fmt_rate(value) -> str:
    return "n/a" if value is None else f"{100 * value:.3f}%"


def _table(report: dict, version: str, impostors: str):
    from rich.table import Table

    table = Table(title=f"calibration of {version}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    source = "every different-person pair of the file's images" if impostors == "all" else "the file's pairs"
    table.add_row("genuine pairs scored", str(report["genuine"]))
    table.add_row(f"impostor pairs scored ({source})", f"{report['impostor']:,}")
    table.add_row("failure to acquire (images)", str(report["failed_images"]))
    table.add_row("EER", _fmt_rate(report["eer"]))
    table.add_row("EER threshold", f"{report['eer_threshold']:.4f}")
    for fmr, fnmr in report["fnmr_at_fmr"].items():
        label = f"FNMR at FMR {fmr:g}"
        needed = int(round(1 / fmr))
        table.add_row(label, _fmt_rate(fnmr) if fnmr is not None else f"n/a (needs {needed:,} impostor pairs)")
    target = report["target_fmr"]
    if report["threshold"] is None:
        table.add_row(f"threshold at FMR {target:g}", f"n/a (needs {report['min_impostors']:,} impostor pairs)")
    else:
        table.add_row(f"threshold at FMR {target:g}", f"{report['threshold']:.4f}")
        if report["threshold_low"] is not None:
            table.add_row("95% bootstrap interval", f"{report['threshold_low']:.4f} - {report['threshold_high']:.4f}")
        table.add_row("FMR / FNMR at that threshold", f"{_fmt_rate(report['fmr'])} / {_fmt_rate(report['fnmr'])}")
    return table


@click.command()
@click.option(
    "--pairs",
    "pairs_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="LFW-format pairs file.",
)
@click.option(
    "--root",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding NAME/NAME_NNNN.jpg images.",
)
@click.option("--model", "version", default=None, help="Model version (default: settings.model_version).")
@click.option("--target-fmr", default=1e-3, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option(
    "--impostors",
    type=click.Choice(IMPOSTOR_MODES),
    default="all",
    show_default=True,
    help="all: every different-person pair of the file's images; pairs: the file's own.",
)
@click.option(
    "--bootstrap",
    "rounds",
    default=200,
    show_default=True,
    type=click.IntRange(min=0),
    help="Bootstrap rounds for the threshold's interval (0: none).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a PNG: DET curve and score histograms with the threshold marked.",
)
@click.option(
    "--distances",
    "distances_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the genuine and impostor distances (.npz) for checking or replotting.",
)
@click.option("--save", is_flag=True, help="Store the threshold on the model version (verifications use it).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
def calibrate(
    pairs_file: Path,
    root: Path,
    version: str | None,
    target_fmr: float,
    impostors: str,
    rounds: int,
    plot: Path | None,
    distances_path: Path | None,
    save: bool,
    as_json: bool,
    batch_size: int,
) -> None:
    """Genuine and impostor distances, EER, FNMR at FMR 1e-2/1e-3/1e-4, and the threshold for
    --target-fmr with a bootstrap interval; --save stores it on the version."""
    import numpy as np

    from cli.common import descriptors, load_face_pipeline, load_pairs, setup
    from worker.face.calibration import calibrate as compute
    from worker.face.calibration import plot_calibration

    settings = setup()
    version = version or settings.model_version
    preprocessing = version_preprocessing(settings, version)
    pairs, images = load_pairs(pairs_file, root)
    with load_face_pipeline(settings, multiple_faces="largest") as pipeline:
        variants = {version: preprocessing}
        results = descriptors(lambda data: pipeline.process(data, variants=variants), root, images, batch_size, version)

    def distance(a, b) -> float:
        return float(np.linalg.norm(results[a].descriptor - results[b].descriptor))

    scored = [p for p in pairs if results[p.first].ok and results[p.second].ok]
    genuine = np.asarray([distance(p.first, p.second) for p in scored if p.same])
    if impostors == "all":
        ok = [name for name in images if results[name].ok]
        impostor = all_impostor_distances(ok, [results[name].descriptor for name in ok])
    else:
        impostor = np.asarray([distance(p.first, p.second) for p in scored if not p.same])
    if genuine.size == 0 or impostor.size == 0:
        raise click.ClickException("no genuine or no impostor pair could be scored")
    report = compute(genuine, impostor, target_fmr, rounds)
    report["failed_images"] = sum(1 for r in results.values() if not r.ok)
    report["model_version"] = version
    report["impostor_mode"] = impostors

    if distances_path is not None:
        with open(distances_path, "wb") as f:
            np.savez(f, genuine=genuine, impostor=impostor)
    if plot is not None:
        plot_calibration(genuine, impostor, report, plot, title=f"{pairs_file.name}: {version}")
    if save:
        if report["threshold"] is None:
            raise click.ClickException(f"no threshold at FMR {target_fmr:g}: nothing saved")
        from shared.db.session import session_scope
        from shared.gallery import GalleryError, set_threshold
        from shared.services import resolve

        try:
            with session_scope(resolve(settings).database_url) as session:
                set_threshold(session, version, report["threshold"])
        except GalleryError as error:
            raise click.ClickException(str(error)) from None
    if as_json:
        out = dict(report, fnmr_at_fmr={f"{k:g}": v for k, v in report["fnmr_at_fmr"].items()})
        click.echo(json.dumps(out))
        return
    from rich.console import Console

    Console().print(_table(report, version, impostors))
    if plot is not None:
        click.echo(f"plot written to {plot}")
    if save:
        click.echo(f"threshold {report['threshold']:.4f} saved on {version}")


COMMANDS = [calibrate]
