"""face_chip against dlib.get_face_chip, the reference it reimplements."""

import numpy as np
import pytest
from PIL import Image

from worker.face.align import TEMPLATE_5, chip_rect, face_chip, pyramid_down, similarity_transform
from worker.face.weights import SHAPE_PREDICTOR_5, model_path

dlib = pytest.importorskip("dlib")

SIZE, PADDING = 150, 0.25


def dlib_chip(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """dlib.get_face_chip for 5 integer landmarks (the box is not used by the alignment)."""
    shape = dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), [dlib.point(int(x), int(y)) for x, y in points])
    return dlib.get_face_chip(image, shape, size=SIZE, padding=PADDING)


def grey_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the two chips' grey levels."""
    return float(np.abs(a.astype(float).mean(axis=2) - b.astype(float).mean(axis=2)).mean())


def synthetic_landmarks(rng, centre, scale, angle) -> np.ndarray:
    """The template placed at centre, scaled and rotated, jittered a little, rounded like dlib's."""
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (TEMPLATE_5 - 0.5) * 100 * scale @ rotation.T + centre + rng.normal(0, 2, (5, 2))
    return np.round(points)


def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 100, (5, 2))
    m, t = 1.7 * np.exp(0.4j), 12 - 5j
    z = m * (src[:, 0] + 1j * src[:, 1]) + t
    got_m, got_t = similarity_transform(src, np.stack([z.real, z.imag], axis=1))
    assert abs(got_m - m) < 1e-9 and abs(got_t - t) < 1e-9


def test_chip_rect_matches_dlib_chip_details():
    rng = np.random.default_rng(4)
    points = synthetic_landmarks(rng, (300, 200), 1.3, 0.3)
    shape = dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), [dlib.point(int(x), int(y)) for x, y in points])
    details = dlib.get_face_chip_details(shape, size=SIZE, padding=PADDING)
    rect, angle = chip_rect(points, SIZE, PADDING)
    assert angle == pytest.approx(details.angle, abs=1e-9)
    got = (rect.l, rect.t, rect.r, rect.b)
    want = (details.rect.left(), details.rect.top(), details.rect.right(), details.rect.bottom())
    assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("shape", [(100, 120, 3), (57, 33, 3), (9, 9, 3), (64, 64), (8, 20, 3)])
def test_pyramid_down_matches_dlib(shape):
    image = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    expected = np.asarray(dlib.pyramid_down(2)(image))
    got = pyramid_down(image)
    assert got.shape[:2] == expected.shape[:2]
    np.testing.assert_array_equal(got.reshape(expected.shape), expected)


@pytest.mark.parametrize(
    "scale, angle, where",
    [
        (1.0, 0.1, "centre"),
        (0.4, -0.6, "centre"),
        (2.5, 0.3, "centre"),  # face about 4x the chip: two pyramid levels
        (5.0, -0.2, "centre"),
        (1.2, 0.9, "edge"),  # part of the chip lies outside the image
        (3.0, 0.0, "corner"),
    ],
)
def test_chip_equals_dlib_on_synthetic_images(scale, angle, where):
    rng = np.random.default_rng(int(scale * 100 + angle * 10))
    image = rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    centre = {"centre": (450, 350), "edge": (20, 300), "corner": (880, 690)}[where]
    points = synthetic_landmarks(rng, np.array(centre), scale, angle)
    ours, theirs = face_chip(image, points), dlib_chip(image, points)
    assert ours.shape == theirs.shape == (SIZE, SIZE, 3)
    assert grey_difference(ours, theirs) <= 1.0
    assert np.abs(ours.astype(int) - theirs).max() <= 1


def test_greyscale_image_gives_a_greyscale_chip():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (300, 300), dtype=np.uint8)
    points = synthetic_landmarks(rng, np.array((150, 150)), 1.0, 0.2)
    chip = face_chip(image, points)
    assert chip.shape == (SIZE, SIZE)
    colour = face_chip(np.repeat(image[:, :, None], 3, axis=2), points)
    np.testing.assert_array_equal(chip, colour[:, :, 0])


def test_face_entirely_outside_the_image_gives_a_black_chip():
    image = np.full((100, 100, 3), 200, dtype=np.uint8)
    points = synthetic_landmarks(np.random.default_rng(7), np.array((2000, 2000)), 1.0, 0.0)
    assert not face_chip(image, points).any()


# --- real faces --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_models():
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_5)))


def lfw_samples(faces_dir, count=10):
    """One image per identity of lfw_colour, as RGB arrays."""
    folders = sorted(p for p in (faces_dir / "lfw_colour").iterdir() if p.is_dir())
    return [np.asarray(Image.open(sorted(f.glob("*.jpg"))[0]).convert("RGB")) for f in folders[:count]]


def dlib_landmarks(models, image, upsample=1) -> np.ndarray:
    detector, predictor = models
    boxes = detector(image, upsample)
    assert boxes, "dlib found no face"
    shape = predictor(image, boxes[0])
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=float)


@pytest.mark.faces
def test_chips_equal_dlib_on_lfw_faces(faces_dir, dlib_models):
    for image in lfw_samples(faces_dir):
        points = dlib_landmarks(dlib_models, image)
        assert grey_difference(face_chip(image, points), dlib_chip(image, points)) <= 1.0


@pytest.mark.faces
@pytest.mark.parametrize("factor", [4, 6])
def test_chips_equal_dlib_on_upscaled_faces_through_the_pyramid(faces_dir, dlib_models, factor):
    for image in lfw_samples(faces_dir, count=3):
        side = image.shape[0] * factor
        big = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC))
        points = dlib_landmarks(dlib_models, big, upsample=0)
        rect, _ = chip_rect(points, SIZE, PADDING)
        assert rect.r - rect.l + 1 > 2 * SIZE + 4  # the pyramid path is the one tested
        assert grey_difference(face_chip(big, points), dlib_chip(big, points)) <= 1.0
