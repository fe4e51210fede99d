"""Preprocessing variants of one network: how aligned chips become a version's descriptors.

A version's preprocessing (worker.versions) may hold:
  {"jitter": N}   the mean descriptor of N fixed jittered copies of each chip (small shifts,
                  scales, rotations and mirror images, drawn once from a fixed seed, so a
                  version is deterministic), as dlib's num_jitters does;
  {"flip": true}  the mean of the chip's and its mirror image's descriptors;
  neither         the chip as it is.

embed_variant(embedder, chips, preprocessing) -> (N, 128) descriptors.
"""

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

JITTER_SEED = 0


class ChipEmbedder(Protocol):
    def embed(self, chips: np.ndarray) -> np.ndarray: ...


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
        matrix = np.asarray(cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale), dtype=np.float64)
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


def embed_variant(embedder: ChipEmbedder, chips: np.ndarray, preprocessing: Mapping[str, Any]) -> np.ndarray:
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
