"""The ported 5-point shape predictor: the file, its cache, batching, and parity with
dlib.shape_predictor on real photos (20 from lfw_colour and 20 from lfw_view1, each with the
detected face box and two boxes moved off it, some partly outside the image)."""

import shutil

import numpy as np
import pytest
from PIL import Image

from worker.face.errors import WeightsFormatError
from worker.face.shape_predictor import ShapePredictor, read_shape_predictor
from worker.face.types import Box
from worker.face.weights import SHAPE_PREDICTOR_5, model_path, sha256_file

SAMPLE_PER_FOLDER = 20


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> ShapePredictor:
    """Read from the .dat once for the module; its cache file is kept for the cache test."""
    cache_dir = tmp_path_factory.mktemp("cache")
    loaded = ShapePredictor.load(cache_dir=cache_dir)
    loaded.cache_file = cache_dir / f"{loaded.sha256}.shape.npz"
    return loaded


def sample(faces_dir, folder: str, count: int) -> list[np.ndarray]:
    files = sorted((faces_dir / folder).glob("*/*.jpg"))
    step = max(1, len(files) // count)
    return [np.asarray(Image.open(f).convert("RGB")) for f in files[::step][:count]]


def face_boxes(images: list[np.ndarray], seed: int) -> tuple[list[np.ndarray], list[Box]]:
    """Per image: the ported CNN detector's largest box (or a central one), and two random boxes
    near it, some reaching out of the image."""
    from worker.face.mmod import MmodDetector

    rng = np.random.default_rng(seed)
    found = MmodDetector.load(device="cpu").detect_many(images)
    faces, boxes = [], []
    for image, detections in zip(images, found):
        box = max((d.box() for d in detections), key=lambda b: b.area, default=Box(70, 70, 180, 180))
        faces.append(image)
        boxes.append(box)
        for _ in range(2):
            dx, dy = rng.integers(-60, 61, 2)
            grow = int(rng.integers(-20, 40))
            faces.append(image)
            boxes.append(Box(box.left + dx - grow, box.top + dy - grow, box.right + dx + grow, box.bottom + dy))
    return faces, boxes


def dlib_points(predictor, image: np.ndarray, box: Box) -> np.ndarray:
    import dlib

    shape = predictor(image, dlib.rectangle(box.left, box.top, box.right, box.bottom))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def dlib_int(value: int) -> bytes:
    magnitude = abs(value).to_bytes(max(1, (abs(value).bit_length() + 7) // 8), "little")
    return bytes([len(magnitude) | (0x80 if value < 0 else 0)]) + magnitude


def dlib_float(value: float) -> bytes:
    """value as mantissa * 2**-16 (exact for the values used here)."""
    return dlib_int(int(round(value * 65536))) + dlib_int(-16)


def tiny_model(threshold: float = 10.0) -> bytes:
    """A predictor with 2 points, 1 stage of 1 tree of depth 1 comparing 2 feature pixels: the
    first sits on point 0, the second 0.25 box widths right of it. When the first is brighter by
    more than `threshold`, both points move right by 0.25 (leaf 0); else down by 0.25 (leaf 1)."""
    vector = lambda values: dlib_int(-len(values)) + dlib_int(-1) + b"".join(map(dlib_float, values))  # noqa: E731
    data = dlib_int(1) + vector([0.25, 0.25, 0.75, 0.75])  # version, mean shape
    data += dlib_int(1) + dlib_int(1)  # 1 stage of 1 tree
    data += dlib_int(1) + dlib_int(0) + dlib_int(1) + dlib_float(threshold)  # 1 split: pixel 0 - pixel 1 > t
    data += dlib_int(2) + vector([0.25, 0, 0.25, 0]) + vector([0, 0.25, 0, 0.25])  # 2 leaves
    data += dlib_int(1) + dlib_int(2) + dlib_int(0) + dlib_int(0)  # anchors: both on point 0
    data += dlib_int(1) + dlib_int(2) + dlib_float(0) + dlib_float(0) + dlib_float(0.25) + dlib_float(0)
    return data


def test_a_tiny_model_moves_the_points_as_its_tree_says():
    model = read_shape_predictor(tiny_model())
    assert (model.parts, model.depth, model.leaves.shape) == (2, 1, (1, 1, 2, 4))
    predictor = ShapePredictor(model)
    box = Box(0, 0, 100, 100)  # point 0 at (25, 25), the second feature pixel at (50, 25)
    image = np.zeros((101, 101, 3), np.uint8)
    image[25, 25] = (30, 30, 33)  # intensity (30 + 30 + 33) // 3 = 31 > 0 + 10: left leaf
    np.testing.assert_array_equal(predictor.predict([image], [box])[0], [[50, 25], [100, 75]])
    image[25, 50] = 30  # 31 - 30 <= 10: right leaf
    np.testing.assert_array_equal(predictor.predict([image], [box])[0], [[25, 50], [75, 100]])
    # Feature pixels outside the image read 0: a box moved off the image takes the right leaf.
    np.testing.assert_array_equal(predictor.predict([image], [Box(200, 0, 300, 100)])[0], [[225, 50], [275, 100]])


def test_damaged_files_fail_with_an_offset():
    data = tiny_model()
    with pytest.raises(WeightsFormatError, match="expected end of file") as error:
        read_shape_predictor(data + b"\x01\x00")
    assert error.value.offset == len(data)
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(WeightsFormatError) as error:
            read_shape_predictor(data[:cut])
        assert 0 <= error.value.offset <= cut
    with pytest.raises(WeightsFormatError, match="shape predictor version = 1, found 2"):
        read_shape_predictor(dlib_int(2) + data[2:])
    one_split = dlib_int(1) + dlib_int(0) + dlib_int(1)  # 1 split comparing pixels 0 and 1
    with pytest.raises(WeightsFormatError, match="full tree"):  # 2 splits cannot fill a tree
        read_shape_predictor(data.replace(one_split, dlib_int(2) + one_split[2:], 1))


def test_reads_the_five_point_model(predictor):
    model = predictor.model
    assert model.parts == 5 and model.depth == 4
    assert model.splits.shape == (15, 500, 15, 2) and model.leaves.shape == (15, 500, 16, 10)
    assert model.anchors.shape == (15, 800) and model.deltas.shape == (15, 800, 2)
    # The mean shape lies in the unit box: eyes above the nose.
    points = model.initial_shape.reshape(5, 2)
    assert ((0 < points) & (points < 1)).all() and (points[:4, 1] < points[4, 1]).all()


def test_cache_is_written_then_read_and_a_bad_one_replaced(tmp_path, predictor):
    cache_file = tmp_path / f"{predictor.sha256}.shape.npz"
    shutil.copy(predictor.cache_file, cache_file)
    cached = ShapePredictor.load(cache_dir=tmp_path)
    np.testing.assert_array_equal(cached.model.leaves, predictor.model.leaves)
    assert cached.sha256 == sha256_file(model_path(SHAPE_PREDICTOR_5))
    cache_file.write_bytes(b"torn")
    replaced = ShapePredictor.load(cache_dir=tmp_path)  # reads the .dat again, rewrites the cache
    np.testing.assert_array_equal(replaced.model.thresholds, predictor.model.thresholds)
    np.testing.assert_array_equal(ShapePredictor.load(cache_dir=tmp_path).model.deltas, predictor.model.deltas)


def test_no_faces_and_mismatched_inputs(predictor):
    assert predictor.predict([], []).shape == (0, 5, 2)
    with pytest.raises(ValueError):
        predictor.predict([np.zeros((10, 10, 3), np.uint8)], [])


def test_a_box_outside_the_image_still_gives_points(predictor):
    image = np.zeros((50, 60, 3), np.uint8)
    points = predictor.predict([image], [Box(200, 300, 280, 380)])
    assert points.shape == (1, 5, 2) and np.isfinite(points).all()


@pytest.mark.faces
def test_batch_equals_one_at_a_time_and_grey_equals_rgb(faces_dir, predictor):
    images = sample(faces_dir, "lfw_colour", 3)
    faces, boxes = face_boxes(images, seed=1)
    together = predictor.predict(faces, boxes)
    for i, (image, box) in enumerate(zip(faces, boxes)):
        np.testing.assert_array_equal(together[i], predictor.predict([image.copy()], [box])[0])
    grey = images[0][:, :, 0]
    np.testing.assert_array_equal(
        predictor.predict([grey], [boxes[0]]), predictor.predict([np.repeat(grey[:, :, None], 3, axis=2)], [boxes[0]])
    )


@pytest.mark.faces
@pytest.mark.parametrize(("folder", "seed"), [("lfw_colour", 2), ("lfw_view1", 3)])
def test_same_points_as_dlib(faces_dir, predictor, folder, seed):
    dlib = pytest.importorskip("dlib")
    reference = dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_5)))
    faces, boxes = face_boxes(sample(faces_dir, folder, SAMPLE_PER_FOLDER), seed)
    expected = np.stack([dlib_points(reference, image, box) for image, box in zip(faces, boxes)])
    found = predictor.predict(faces, boxes)
    assert found.shape == expected.shape == (3 * SAMPLE_PER_FOLDER, 5, 2)
    assert np.abs(found - expected).max() <= 0.5
