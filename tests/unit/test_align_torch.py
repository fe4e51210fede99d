"""The batched torch alignment against dlib.get_face_chip (and the exact numpy one), on the CPU:
the device path's fallback."""

import numpy as np
import pytest
from PIL import Image

from tests.unit.test_align import (
    PADDING,
    SIZE,
    dlib_chip,
    dlib_landmarks,
    grey_difference,
    lfw_samples,
    synthetic_landmarks,
)
from worker.face.align import face_chip
from worker.face.align_torch import face_chips
from worker.face.weights import SHAPE_PREDICTOR_5, model_path

dlib = pytest.importorskip("dlib")

CASES = [
    (1.0, 0.1, "centre"),
    (0.4, -0.6, "centre"),
    (2.5, 0.3, "centre"),
    (5.0, -0.2, "centre"),
    (1.2, 0.9, "edge"),
    (3.0, 0.0, "corner"),
]


def test_torch_chips_match_dlib_on_synthetic_images_in_one_batch():
    images, points = [], []
    for scale, angle, where in CASES:
        rng = np.random.default_rng(int(scale * 100 + angle * 10))
        images.append(rng.integers(0, 256, (700, 900, 3), dtype=np.uint8))
        centre = {"centre": (450, 350), "edge": (20, 300), "corner": (880, 690)}[where]
        points.append(synthetic_landmarks(rng, np.array(centre), scale, angle))
    chips = face_chips(images, points, SIZE, PADDING, device="cpu")
    assert chips.shape == (len(CASES), SIZE, SIZE, 3) and chips.dtype == np.uint8
    for chip, image, p in zip(chips, images, points):
        assert grey_difference(chip, dlib_chip(image, p)) <= 1.0
        assert grey_difference(chip, face_chip(image, p)) <= 1.0


@pytest.mark.faces
@pytest.mark.parametrize("factor", [1, 4])
def test_torch_chips_match_dlib_on_lfw_faces(faces_dir, factor):
    models = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_5)))
    images, points = [], []
    for image in lfw_samples(faces_dir, count=5):
        if factor > 1:
            side = image.shape[0] * factor
            image = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC))
        images.append(image)
        points.append(dlib_landmarks(models, image, upsample=1 if factor == 1 else 0))
    for chip, image, p in zip(face_chips(images, points), images, points):
        assert grey_difference(chip, dlib_chip(image, p)) <= 1.0


def test_no_faces_and_a_face_outside_the_image():
    assert face_chips([], []).shape == (0, SIZE, SIZE, 3)
    image = np.full((100, 100, 3), 200, dtype=np.uint8)
    points = synthetic_landmarks(np.random.default_rng(7), np.array((2000, 2000)), 1.0, 0.0)
    assert not face_chips([image], [points]).any()
