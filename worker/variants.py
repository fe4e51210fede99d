"""Model versions one worker can compute: the same network, several preprocessing variants.

A version's `preprocessing` (its model_versions row) says how aligned chips become descriptors:
  {"jitter": N}   the mean descriptor of N fixed jittered copies of each chip (small shifts,
                  scales, rotations and mirror images, drawn once from a fixed seed, so a
                  version is deterministic), as dlib's num_jitters does;
  {"flip": true}  the mean of the chip's and its mirror image's descriptors;
  neither         the chip as it is (dlib-resnet-v1).

PRESETS: version name -> preprocessing, for the versions biofleet ships.
embed_variant(embedder, chips, preprocessing) -> (N, 128) descriptors.
MultiEmbedder(inner): embed(chips) computes the descriptors of every version in `want` in one
  call (the first is returned; all are kept in `last`), so detection and alignment run once.
VersionBook(architecture, weights_sha256, default): per batch, reads model_versions and says
  which version is active, which ones enrollments write, and which it can compute.
"""

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

ARCHITECTURE = "dlib-resnet-29"
BASE_PREPROCESSING = {"chip_size": 150, "chip_padding": 0.25, "landmarks": 5, "descriptor": 128}
BASE_VERSION = "dlib-resnet-v1"
PRESETS = {
    BASE_VERSION: dict(BASE_PREPROCESSING),
    "dlib-resnet-v1-jitter4": {**BASE_PREPROCESSING, "jitter": 4},
    "dlib-resnet-v1-flip": {**BASE_PREPROCESSING, "flip": True},
}
MAX_JITTER = 16
JITTER_SEED = 0


def check_preprocessing(preprocessing: dict) -> None:
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


@lru_cache
def jitter_transforms(count: int, size: int = 150, seed: int = JITTER_SEED) -> tuple[tuple[np.ndarray, bool], ...]:
    """count fixed (2x3 affine matrix, mirror) pairs: shift +-2%, scale 0.97-1.03, rotation +-3 degrees,
    mirror with probability 1/2, about the chip's centre."""
    import cv2

    rng = np.random.default_rng(seed)
    transforms = []
    for _ in range(count):
        angle = rng.uniform(-3.0, 3.0)
        scale = rng.uniform(0.97, 1.03)
        shift = rng.uniform(-0.02, 0.02, size=2) * size
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
        matrix[:, 2] += shift
        transforms.append((matrix, bool(rng.random() < 0.5)))
    return tuple(transforms)


def jittered(chips: np.ndarray, count: int) -> np.ndarray:
    """(N, S, S, 3) chips -> (N * count, S, S, 3): copy k of chip n at row n * count + k."""
    import cv2

    size = chips.shape[1]
    out = np.empty((len(chips) * count, *chips.shape[1:]), dtype=chips.dtype)
    transforms = jitter_transforms(count, size)
    for n, chip in enumerate(chips):
        for k, (matrix, mirror) in enumerate(transforms):
            moved = cv2.warpAffine(chip, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            out[n * count + k] = moved[:, ::-1] if mirror else moved
    return out


def embed_variant(embedder, chips: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Descriptors of chips under a version's preprocessing; one embed call."""
    jitter = int(preprocessing.get("jitter") or 0)
    if jitter > 0:
        descriptors = np.asarray(embedder.embed(jittered(chips, jitter)), dtype=np.float32)
        return descriptors.reshape(len(chips), jitter, -1).mean(axis=1)
    if preprocessing.get("flip"):
        both = np.concatenate([chips, chips[:, :, ::-1]])
        descriptors = np.asarray(embedder.embed(np.ascontiguousarray(both)), dtype=np.float32)
        return (descriptors[: len(chips)] + descriptors[len(chips) :]) / 2
    return np.asarray(embedder.embed(chips), dtype=np.float32)


class MultiEmbedder:
    """An embedder for FacePipeline that serves several versions of one network.

    Set `want` (version name -> preprocessing, in order) before pipeline.process; embed(chips)
    returns the first version's descriptors and keeps every version's in `last`. Other
    attributes (weights_sha256, device, ...) are the wrapped embedder's."""

    def __init__(self, inner):
        self.inner = inner
        self.want: dict[str, dict] = {}
        self.last: dict[str, np.ndarray] = {}

    def embed(self, chips: np.ndarray) -> np.ndarray:
        want = self.want or {BASE_VERSION: BASE_PREPROCESSING}
        self.last = {name: embed_variant(self.inner, chips, pre) for name, pre in want.items()}
        return next(iter(self.last.values()))

    def __getattr__(self, name):
        return getattr(self.inner, name)


@dataclass(frozen=True)
class VersionRow:
    name: str
    status: str
    threshold: float
    preprocessing: dict


@dataclass(frozen=True)
class Plan:
    """The versions of one batch: active (verify, identify), the ones enrollments write
    (active first, then candidates), and every version this worker can compute."""

    active: str
    threshold: float
    enroll: tuple[str, ...]
    servable: dict[str, VersionRow]


class VersionBook:
    """Which versions this worker serves: rows of its architecture and weights whose preprocessing
    it supports. Rows of other networks are left to their own workers."""

    def __init__(self, architecture: str, weights_sha256: str, default: str, default_threshold: float):
        self.architecture = architecture
        self.weights_sha256 = weights_sha256
        self.default = default
        self.default_threshold = default_threshold
        self._refused: set[str] = set()

    def plan(self, session) -> Plan:
        """Read model_versions (a few rows) and decide this batch's versions."""
        from sqlalchemy import select

        from shared.db.models import ModelVersion

        rows = session.execute(
            select(ModelVersion).where(ModelVersion.architecture == self.architecture).order_by(ModelVersion.name)
        ).scalars()
        servable = {}
        for row in rows:
            if row.weights_sha256 != self.weights_sha256:
                continue
            try:
                check_preprocessing(row.preprocessing or {})
            except ValueError as error:
                if row.name not in self._refused:
                    self._refused.add(row.name)
                    log.error("model version not servable", extra={"model_version": row.name, "error": str(error)})
                continue
            servable[row.name] = VersionRow(row.name, row.status, float(row.threshold), dict(row.preprocessing or {}))
        active = [v for v in servable.values() if v.status == "active"]
        if len(active) > 1:
            log.warning("several active model versions", extra={"versions": [v.name for v in active]})
            active = [v for v in active if v.name == self.default] or active[:1]
        if active:
            chosen, threshold = active[0].name, active[0].threshold
        else:
            chosen, threshold = self.default, self.default_threshold
            servable.setdefault(
                chosen, VersionRow(chosen, "active", threshold, dict(PRESETS.get(chosen, BASE_PREPROCESSING)))
            )
        candidates = tuple(v.name for v in servable.values() if v.status == "candidate" and v.name != chosen)
        return Plan(active=chosen, threshold=threshold, enroll=(chosen, *candidates), servable=servable)
