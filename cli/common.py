"""Helpers the CLI commands share: settings with logging, the configured face pipeline, the
database URL, LFW-format pairs and their descriptors."""

import sys
from pathlib import Path
from typing import Any

import click

from shared.settings import Settings


def load_face_pipeline(settings: Settings, multiple_faces: str | None = None) -> Any:
    """biofleet's pipeline, configured from settings."""
    from worker.face.pipeline import load_pipeline

    return load_pipeline(
        device=settings.device,
        detector=settings.detector,
        upsample=settings.detector_upsample,
        cnn_upsample=settings.detector_cnn_upsample,
        max_pixels=settings.max_image_pixels,
        multiple_faces=multiple_faces or settings.multiple_faces,
        threads=settings.decode_threads,
        cache_dir=settings.model_cache_dir,
        detect_max_side=settings.detect_max_side,
    )


def setup() -> Settings:
    from shared.logs import configure_logging
    from shared.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    return settings


def load_pairs(pairs_file: Path, root: Path) -> tuple[list, list[str]]:
    """The pairs of an LFW-format file and its distinct images, checked to exist under root."""
    from worker.face.evaluation import read_pairs

    try:
        pairs = read_pairs(pairs_file)
    except ValueError as error:
        raise click.ClickException(f"{pairs_file}: {error}") from None
    images = list(dict.fromkeys(name for pair in pairs for name in (pair.first, pair.second)))
    check_images(pairs_file, root, images)
    return pairs, images


def check_images(pairs_file: Path, root: Path, images: list[str]) -> None:
    """Fail early, naming them, when images the pairs file lists are missing under root."""
    missing = [name for name in images if not (root / name).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise click.ClickException(f"{len(missing)} images listed in {pairs_file} are missing under {root}: {shown}")


def descriptors(process: Any, root: Path, images: list[str], batch_size: int, label: str) -> dict[str, Any]:
    """Run `process` over every image once, in batches, with a progress bar on stderr.

    Returns image name -> FaceResult."""
    from tqdm import tqdm

    results = {}
    with tqdm(total=len(images), desc=label, unit="img", file=sys.stderr, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            for name, result in zip(batch, process([(root / name).read_bytes() for name in batch])):
                results[name] = result
            bar.update(len(batch))
    return results


def database_url(settings: Settings | None = None) -> str:
    """The configured database, else the running embedded stack's."""
    from shared.services import read_stack_file
    from shared.settings import get_settings

    settings = settings or get_settings()
    url = settings.database_url or read_stack_file(settings.state_dir).get("database_url")
    if not url:
        raise click.ClickException("no database: set BIOFLEET_DATABASE_URL or run `biofleet up`")
    return str(url)
