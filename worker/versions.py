"""Model versions: the network's record, the presets biofleet ships, and the registry operations.

A version is one network (ARCHITECTURE, its weights) with one preprocessing (worker.face.variants):
its model_versions row holds both, with its match threshold and status (active, candidate,
retired). One worker computes every servable version of its network in one forward pass per
batch (FacePipeline.process(..., variants)).

PRESETS: version name -> preprocessing, for the versions biofleet ships.
check_preprocessing(preprocessing): ValueError when a worker cannot compute it.
VersionBook(architecture, weights_sha256, default, default_threshold).plan(rows) -> Plan: which
  version is active, which ones enrollments write, which ones this worker can compute.
ensure_model_version(database_url, settings, weights_sha256): register this worker's version.
threshold(session, name, default) -> float: a version's match threshold.
"""

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.db.models import ModelVersion
from shared.settings import Settings

log = logging.getLogger(__name__)

ARCHITECTURE = "dlib-resnet-29"
BASE_PREPROCESSING: dict[str, Any] = {"chip_size": 150, "chip_padding": 0.25, "landmarks": 5, "descriptor": 128}
BASE_VERSION = "dlib-resnet-v1"
PRESETS: dict[str, dict[str, Any]] = {
    BASE_VERSION: dict(BASE_PREPROCESSING),
    "dlib-resnet-v1-jitter4": {**BASE_PREPROCESSING, "jitter": 4},
    "dlib-resnet-v1-flip": {**BASE_PREPROCESSING, "flip": True},
}
MAX_JITTER = 16


def preset(name: str) -> dict[str, Any]:
    """The preprocessing of a shipped version; the base one for any other name."""
    return dict(PRESETS.get(name, BASE_PREPROCESSING))


def check_preprocessing(preprocessing: dict[str, Any]) -> None:
    """ValueError when a worker cannot compute this preprocessing."""
    for key, value in preprocessing.items():
        if key in BASE_PREPROCESSING:
            if value != BASE_PREPROCESSING[key]:
                raise ValueError(f"preprocessing {key}={value!r} is not supported (only {BASE_PREPROCESSING[key]!r})")
        elif key == "jitter":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_JITTER:
                raise ValueError(f"jitter must be an integer from 0 to {MAX_JITTER}")
        elif key == "flip":
            if not isinstance(value, bool):
                raise ValueError("flip must be true or false")
        else:
            raise ValueError(f"unknown preprocessing setting {key!r}")
    if preprocessing.get("jitter") and preprocessing.get("flip"):
        raise ValueError("jitter already includes mirror images: use jitter or flip, not both")


@dataclass(frozen=True)
class VersionRow:
    name: str
    status: str
    threshold: float
    preprocessing: dict[str, Any]
    weights_sha256: str | None = None


@dataclass(frozen=True)
class Plan:
    """The versions of one batch: active (verify, identify), the ones enrollments write
    (active first, then candidates), and every version this worker can compute."""

    active: str
    threshold: float
    enroll: tuple[str, ...]
    servable: dict[str, VersionRow] = field(default_factory=dict)


class VersionBook:
    """Which versions this worker serves: rows of its architecture and weights whose preprocessing
    it supports. Rows of other networks are left to their own workers."""

    def __init__(self, architecture: str, weights_sha256: str, default: str, default_threshold: float):
        self.architecture = architecture
        self.weights_sha256 = weights_sha256
        self.default = default
        self.default_threshold = default_threshold
        self._refused: set[str] = set()

    def plan(self, rows: list[VersionRow]) -> Plan:
        """This batch's versions, from the model_versions rows of this architecture."""
        servable: dict[str, VersionRow] = {}
        for row in rows:
            if row.weights_sha256 != self.weights_sha256:
                continue
            try:
                check_preprocessing(row.preprocessing)
            except ValueError as error:
                if row.name not in self._refused:
                    self._refused.add(row.name)
                    log.error("model version not servable", extra={"model_version": row.name, "error": str(error)})
                continue
            servable[row.name] = row
        active = [v for v in servable.values() if v.status == "active"]
        if len(active) > 1:
            log.warning("several active model versions", extra={"versions": [v.name for v in active]})
            active = [v for v in active if v.name == self.default] or active[:1]
        if active:
            chosen, threshold = active[0].name, active[0].threshold
        else:
            chosen, threshold = self.default, self.default_threshold
            servable.setdefault(chosen, VersionRow(chosen, "active", threshold, preset(chosen), self.weights_sha256))
        candidates = tuple(v.name for v in servable.values() if v.status == "candidate" and v.name != chosen)
        return Plan(active=chosen, threshold=threshold, enroll=(chosen, *candidates), servable=servable)


def threshold(session: Session, name: str, default: float) -> float:
    """The threshold stored with version `name`, or default when the row is missing."""
    value = session.execute(select(ModelVersion.threshold).where(ModelVersion.name == name)).scalar_one_or_none()
    return float(value) if value is not None else default


def ensure_model_version(database_url: str, settings: Settings, weights_sha256: str) -> None:
    """Insert this worker's model version (do nothing if it exists): active when no version of this
    network is active yet, else a candidate. Refuse to run when the existing row names other
    weights, since templates would then mix two networks."""
    from shared.db.session import session_scope

    with session_scope(database_url) as session:
        has_active = session.execute(
            select(ModelVersion.name).where(ModelVersion.architecture == ARCHITECTURE, ModelVersion.status == "active")
        ).first()
        session.execute(
            insert(ModelVersion)
            .values(
                name=settings.model_version,
                architecture=ARCHITECTURE,
                weights_sha256=weights_sha256,
                preprocessing=preset(settings.model_version),
                threshold=settings.match_threshold,
                status="candidate" if has_active else "active",
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
        stored = session.get(ModelVersion, settings.model_version)
        if stored is None or stored.weights_sha256 != weights_sha256:
            found = stored.weights_sha256 if stored is not None else None
            raise RuntimeError(
                f"model version {settings.model_version!r} is registered with weights {found}, "
                f"but this worker loaded {weights_sha256}: set BIOFLEET_MODEL_VERSION to a new name"
            )
