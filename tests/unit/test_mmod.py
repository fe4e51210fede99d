"""The ported CNN face detector: the file, the tiled pyramid, batching, and parity with dlib's
cnn_face_detection_model_v1 on real photos (24 from lfw_colour and 24 from lfw_view1, about 15 s
of dlib's detector on 2 cores)."""

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from worker.face.dlib_format import Reader
from worker.face.errors import WeightsFormatError
from worker.face.mmod import MmodDetector, read_mmod
from worker.face.mmod_format import read_bn_con
from worker.face.mmod_pyramid import pyramid_layout, pyramid_levels
from worker.face.weights import MMOD_DETECTOR, model_path

SAMPLE_PER_FOLDER = 24


@pytest.fixture(scope="module")
def mmod_bytes() -> bytes:
    return model_path(MMOD_DETECTOR).read_bytes()


@pytest.fixture(scope="module")
def port() -> MmodDetector:
    return MmodDetector.load(device="cpu")


@pytest.fixture(scope="module")
def dlib_cnn():
    dlib = pytest.importorskip("dlib")
    return dlib.cnn_face_detection_model_v1(str(model_path(MMOD_DETECTOR)))


def sample(faces_dir, folder: str, count: int) -> list:
    """`count` images spread evenly over a folder's sorted files, decoded to RGB arrays."""
    files = sorted((faces_dir / folder).glob("*/*.jpg"))
    step = max(1, len(files) // count)
    return [np.asarray(Image.open(f).convert("RGB")) for f in files[::step][:count]]


def iou(a, b) -> float:
    """Intersection over union of inclusive (l, t, r, b) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if w <= 0 or h <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def dlib_faces(detector, image, upsample=0) -> list[tuple]:
    found = detector(image, upsample)
    return [(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence) for d in found]


def port_faces(found) -> list[tuple]:
    return [(d.left, d.top, d.right, d.bottom, d.confidence) for d in found]


def compare(reference: list[list[tuple]], ported: list[list[tuple]]) -> tuple[int, int, list[float]]:
    """(faces dlib found, of those matched by a port box with IoU >= 0.9, confidence gaps of the
    matches); fails when an image's face count differs."""
    total, matched, gaps = 0, 0, []
    for ref, ours in zip(reference, ported):
        assert len(ours) == len(ref), f"dlib found {ref}, the port {ours}"
        for face in ref:
            total += 1
            best = max(ours, key=lambda o: iou(face, o))
            if iou(face, best) >= 0.9:
                matched += 1
                gaps.append(abs(face[4] - best[4]))
    return total, matched, gaps


# The file.


def test_reads_the_detector_file(mmod_bytes):
    loaded = read_mmod(mmod_bytes)
    options = loaded.options
    assert [(w.width, w.height) for w in options.windows] == [(80, 80)]
    assert options.nms_iou == pytest.approx(0.3383, abs=1e-4) and options.nms_percent_covered == 1.0
    assert (loaded.pyramid.padding, loaded.pyramid.outer_padding) == (10, 11)
    assert loaded.pyramid.mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    shapes = {name: tuple(t.shape) for name, t in loaded.state.items()}
    assert shapes["down.0.weight"] == (16, 3, 5, 5) and shapes["body.2.weight"] == (45, 45, 5, 5)
    assert shapes["score.weight"] == (1, 45, 9, 9) and shapes["score.bias"] == (1,)
    assert all(torch.isfinite(t).all() for t in loaded.state.values())


def test_truncated_and_extended_files_fail_with_an_offset(mmod_bytes):
    with pytest.raises(WeightsFormatError, match="truncated") as error:
        read_mmod(mmod_bytes[: len(mmod_bytes) // 2])
    assert 0 < error.value.offset <= len(mmod_bytes) // 2
    with pytest.raises(WeightsFormatError, match="expected end of file"):
        read_mmod(mmod_bytes + b"\x00")
    with pytest.raises(WeightsFormatError, match="loss_mmod_"):
        read_mmod(model_path("dlib_face_recognition_resnet_model_v1.dat").read_bytes()[:4096])


def dlib_int(value: int) -> str:
    """dlib's integer encoding, as hex: a control byte (byte count, 0x80 when negative), then the
    magnitude little-endian."""
    magnitude = abs(value).to_bytes(max(1, (abs(value).bit_length() + 7) // 8), "little")
    return f"{len(magnitude) | (0x80 if value < 0 else 0):02x}" + magnitude.hex()


def dlib_float(value: float) -> str:
    """value as mantissa * 2**-10 (exact for the values used here)."""
    return dlib_int(int(round(value * 1024))) + dlib_int(-10)


def raw_tensor(values) -> str:
    """A version-2 tensor shaped (1, len, 1, 1)."""
    shape = "".join(dlib_int(d) for d in (1, len(values), 1, 1))
    return dlib_int(2) + shape + np.asarray(values, dtype="<f4").tobytes().hex()


def test_batch_norm_record_becomes_dlibs_affine():
    alias = dlib_int(1) + "".join(dlib_int(d) for d in (1, 2, 1, 1))
    record = (
        raw_tensor([2.0, 4.0, 1.0, -1.0])
        + alias
        + alias  # gamma (2, 4), beta (1, -1)
        + raw_tensor([0, 0])
        + raw_tensor([0, 0])  # batch means and inverse deviations
        + raw_tensor([0.5, -1.0])
        + raw_tensor([3.0, 0.0])  # running means and variances
        + dlib_int(100)
        + dlib_int(100)
        + dlib_float(1.0) * 4
        + dlib_float(1.0)  # ..., eps = 1
    )
    r = Reader(bytes.fromhex(dlib_int(7)) + b"bn_con2" + bytes.fromhex(record))
    batch_norm = read_bn_con(r)
    r.end()
    assert batch_norm.eps == 1.0
    affine = batch_norm.as_affine()
    # gamma / sqrt(variance + eps), then beta - that * mean
    np.testing.assert_allclose(affine.gamma, [2.0 / 2.0, 4.0 / 1.0])
    np.testing.assert_allclose(affine.beta, [1.0 - 1.0 * 0.5, -1.0 - 4.0 * -1.0])


# The tiled pyramid.


def test_pyramid_levels_shrink_by_five_sixths_to_five_rows():
    levels = pyramid_levels(250, 250)
    assert levels[:4] == [(250, 250), (208, 208), (173, 173), (144, 144)]
    assert levels[-1][0] >= 5 and int(5 / 6 * levels[-1][0]) < 5
    assert pyramid_levels(0, 10) == []


@pytest.mark.parametrize(("height", "width"), [(250, 250), (112, 92), (480, 640), (40, 700), (700, 40)])
def test_pyramid_tiles_fit_and_do_not_overlap(height, width):
    layout = pyramid_layout(height, width, padding=10, outer_padding=11)
    tiles = layout.tiles
    assert (tiles[0].top, tiles[0].left, tiles[0].height, tiles[0].width) == (11, 11, height, width)
    for tile, (h, w) in zip(tiles, pyramid_levels(height, width)):
        assert (tile.height, tile.width) == (h, w)
        assert 0 <= tile.left and tile.right < layout.width and 0 <= tile.top and tile.bottom < layout.height
    for i, a in enumerate(tiles):
        for b in tiles[i + 1 :]:
            apart = a.right < b.left or b.right < a.left or a.bottom < b.top or b.bottom < a.top
            assert apart, (a, b)
    if (height, width) == (250, 250):
        assert (layout.height, layout.width, len(tiles)) == (957, 272, 20)


# Behaviour of the port on its own.


def test_blank_and_tiny_images_have_no_faces(port):
    found = port.detect_many([np.full((240, 320, 3), 128, np.uint8), np.zeros((3, 4, 3), np.uint8)])
    assert found == [[], []]
    with pytest.raises(ValueError):
        port.detect_many([np.zeros((10, 10), np.uint8)])


@pytest.mark.faces
def test_images_of_any_sizes_batch_like_one_at_a_time(faces_dir, port):
    photos = sample(faces_dir, "lfw_colour", 3)
    images = [
        photos[0],
        np.asarray(Image.fromarray(photos[1]).resize((377, 538))),
        np.asarray(Image.fromarray(photos[2]).resize((173, 201))),
        photos[1],
    ]
    one_pass = MmodDetector.load(device="cpu", max_batch_pixels=10**9)  # all four padded together
    together = one_pass.detect_many(images)
    assert sum(len(found) for found in together) >= 4
    for image, found in zip(images, together):
        alone = port.detect(image)
        assert [d.box() for d in found] == [d.box() for d in alone]
        np.testing.assert_allclose([d.confidence for d in found], [d.confidence for d in alone], atol=1e-4)


@pytest.mark.faces
def test_cnn_detector_boxes_are_clipped_and_best_first(faces_dir):
    from worker.face.detect import CnnDetector

    detector = CnnDetector(device="cpu")
    photo = sample(faces_dir, "lfw_colour", 1)[0]
    shifted = np.zeros_like(photo)
    shifted[:, :190] = photo[:, 60:]  # the face now touches the left edge
    for image in (photo, shifted):
        boxes = detector.detect(image)
        assert boxes and detector.name == "cnn"
        for box in boxes:
            assert 0 <= box.left <= box.right < image.shape[1] and 0 <= box.top <= box.bottom < image.shape[0]
    scores = [d.confidence for d in detector.model.detect(photo)]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.faces
def test_cuda_matches_the_cpu(faces_dir):
    from tests.conftest import model_file

    images = sample(faces_dir, "lfw_colour", 8)
    path = model_file(MMOD_DETECTOR)
    on_cpu = MmodDetector.load(device="cpu", path=path).detect_many(images)
    on_cuda = MmodDetector.load(device="cuda", path=path).detect_many(images)
    for a, b in zip(on_cpu, on_cuda):
        assert [d.box() for d in a] == [d.box() for d in b]
        np.testing.assert_allclose([d.confidence for d in a], [d.confidence for d in b], atol=1e-3)


# Parity with dlib.


@pytest.mark.faces
@pytest.mark.parametrize("folder", ["lfw_colour", "lfw_view1"])
def test_same_faces_as_dlib(faces_dir, port, dlib_cnn, folder):
    images = sample(faces_dir, folder, SAMPLE_PER_FOLDER)
    reference = [dlib_faces(dlib_cnn, image) for image in images]
    ported = [port_faces(found) for found in port.detect_many(images)]
    total, matched, gaps = compare(reference, ported)
    assert total >= SAMPLE_PER_FOLDER - 2  # nearly every LFW photo shows a face
    assert matched >= 0.95 * total
    assert max(gaps) <= 0.05


def on_canvas(photo: np.ndarray, size: tuple[int, int], at: tuple[int, int]) -> np.ndarray:
    """The photo pasted at `at` on a grey canvas of size (width, height)."""
    canvas = Image.new("RGB", size, (90, 90, 90))
    canvas.paste(Image.fromarray(photo), at)
    return np.asarray(canvas)


@pytest.mark.faces
def test_same_faces_as_dlib_on_other_sizes_and_upsampled(faces_dir, port, dlib_cnn):
    photos = sample(faces_dir, "lfw_colour", 4)
    images = [
        np.asarray(Image.fromarray(photos[0]).resize((330, 330))),
        on_canvas(photos[1], (640, 480), (300, 120)),
        on_canvas(photos[2], (270, 601), (10, 340)),
        np.asarray(Image.fromarray(photos[3]).resize((211, 211))),
    ]
    reference = [dlib_faces(dlib_cnn, image) for image in images]
    total, matched, gaps = compare(reference, [port_faces(f) for f in port.detect_many(images)])
    assert total == 4 and matched == total and max(gaps) <= 0.05

    # Faces of about 50 px: below the 80 px window, found only when the image is doubled first.
    small = [np.asarray(Image.fromarray(p).resize((120, 120))) for p in photos[:2]]
    assert port.detect_many(small) == [[], []]
    reference = [dlib_faces(dlib_cnn, image, upsample=1) for image in small]
    total, matched, gaps = compare(reference, [port_faces(f) for f in port.detect_many(small, upsample=1)])
    assert total == 2 and matched == total and max(gaps) <= 0.05


# The pipeline with the ported detector and landmarks, and dlib only as a reference.


def encode(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.faces
def test_pipeline_with_the_cnn_detector_needs_no_dlib(faces_dir, dlib_cnn, monkeypatch):
    from worker.face.errors import BAD_IMAGE, NO_FACE
    from worker.face.pipeline import load_pipeline

    monkeypatch.setitem(sys.modules, "dlib", None)  # from here on, import dlib fails
    photos = sample(faces_dir, "lfw_colour", 3)
    batch = [encode(photos[0]), b"not an image", encode(np.full((200, 200, 3), 128, np.uint8))]
    batch += [encode(photos[1]), encode(np.asarray(Image.fromarray(photos[2]).resize((300, 410))))]
    with load_pipeline(device="cpu", detector="cnn", threads=2) as pipeline:
        together = pipeline.process(batch)
        alone = [pipeline.process([data])[0] for data in batch]
    assert [r.error_code for r in together] == [None, BAD_IMAGE, NO_FACE, None, None]
    assert all(r.detector == "cnn" for r in together)
    for a, b in zip(together, alone):
        assert a.error_code == b.error_code and a.box == b.box
        if a.ok:
            np.testing.assert_array_equal(a.landmarks, b.landmarks)
            np.testing.assert_allclose(a.descriptor, b.descriptor, atol=1e-4)
    expected = max(dlib_faces(dlib_cnn, photos[0]), key=lambda f: (f[2] - f[0]) * (f[3] - f[1]))
    assert (together[0].box.left, together[0].box.top) == (max(expected[0], 0), max(expected[1], 0))


def test_hog_detector_says_what_is_missing_without_dlib(monkeypatch):
    from worker.face.detect import HogDetector

    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    with pytest.raises(RuntimeError, match="dlib-bin.*'cnn'"):
        HogDetector(1)


def test_unknown_detector_is_refused():
    from worker.face.pipeline import load_pipeline

    with pytest.raises(ValueError, match="cnn"):
        load_pipeline(device="cpu", detector="mmod")
