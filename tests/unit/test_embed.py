"""The PyTorch port against dlib itself, on chips dlib aligns from real photographs."""

import numpy as np
import pytest
import torch

from tests.conftest import BUNDLE, model_file
from worker.face.embed import Embedder
from worker.face.weights import RECOGNITION_MODEL, SHAPE_PREDICTOR_5

IMAGES_PER_IDENTITY = 2  # 10 identities in lfw_colour: 20 images, ~120 ms of dlib work each

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16/bf16 need a CUDA device")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    path = model_file(RECOGNITION_MODEL)
    return Embedder.load(device="cpu", cache_dir=tmp_path_factory.mktemp("model-cache"), path=path)


@pytest.fixture(scope="module")
def dlib_chips(request) -> tuple[np.ndarray, np.ndarray]:
    """(chips (N, 150, 150, 3) uint8, dlib's descriptors (N, 128)) for one face per image; without
    dlib (a GPU host), the GPU bundle's chips with the dlib descriptors stored there."""
    try:
        import dlib
    except ImportError:
        bundled = BUNDLE / "chips.npz"
        if not bundled.is_file():
            pytest.skip("needs dlib (requirements/dev.txt) or bench/gpu-bundle/chips.npz (make gpu-bundle)")
        with np.load(bundled) as data:
            return data["chips"][:40], data["dlib"][:40]
    faces_dir = request.getfixturevalue("faces_dir")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_file(SHAPE_PREDICTOR_5)))
    recogniser = dlib.face_recognition_model_v1(str(model_file(RECOGNITION_MODEL)))
    chips = []
    for identity in sorted((faces_dir / "lfw_colour").iterdir()):
        for path in sorted(identity.glob("*.jpg"))[:IMAGES_PER_IDENTITY]:
            image = dlib.load_rgb_image(str(path))
            boxes = detector(image, 1)
            if len(boxes) == 0:
                continue
            box = max(boxes, key=lambda b: b.area())
            chips.append(dlib.get_face_chip(image, predictor(image, box), size=150, padding=0.25))
    assert len(chips) >= 15, f"dlib found faces in only {len(chips)} images"
    chips = np.stack(chips)
    reference = np.array([np.array(recogniser.compute_face_descriptor(chip)) for chip in chips])
    return chips, reference


@pytest.mark.faces
def test_descriptors_match_dlib(embedder, dlib_chips):
    chips, reference = dlib_chips
    descriptors = embedder.embed(chips)
    assert descriptors.shape == (len(chips), 128) and descriptors.dtype == np.float32
    assert np.abs(descriptors - reference).max() < 1e-4
    # Not trivially small: different people are far apart, as dlib has them.
    assert np.linalg.norm(descriptors[0] - descriptors[-1]) > 0.6


@pytest.mark.faces
def test_batch_equals_one_at_a_time(embedder, dlib_chips):
    chips, _ = dlib_chips
    batch = embedder.embed(chips)
    single = np.concatenate([embedder.embed(chips[i : i + 1]) for i in range(len(chips))])
    assert np.abs(batch - single).max() < 1e-5


def test_empty_batch(embedder):
    out = embedder.embed(np.zeros((0, 150, 150, 3), dtype=np.uint8))
    assert out.shape == (0, 128) and out.dtype == np.float32


def test_rejects_wrong_chips(embedder):
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(np.zeros((1, 150, 150, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="150"):
        embedder.embed(np.zeros((1, 112, 112, 3), dtype=np.uint8))


def test_load_reports_weights_and_device(embedder):
    assert len(embedder.weights_sha256) == 64
    assert embedder.device == torch.device("cpu") and embedder.precision == "fp32"
    auto = Embedder.load(device="auto")
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_refused_on_cpu(precision):
    with pytest.raises(ValueError, match="CUDA"):
        Embedder.load(device="cpu", precision=precision)


def test_unknown_precision_refused():
    with pytest.raises(ValueError, match="precision"):
        Embedder.load(device="cpu", precision="int8")


@needs_cuda
@pytest.mark.faces
@pytest.mark.parametrize(
    ("precision", "max_abs"),
    # bf16 keeps 8 mantissa bits: ~3.5e-3 max abs (L2 ~0.01, against a 0.6 threshold).
    [("fp16", 1e-3), ("bf16", 1e-2)],
)
def test_low_precision_stays_close(dlib_chips, precision, max_abs):
    chips, reference = dlib_chips
    path = model_file(RECOGNITION_MODEL)
    full = Embedder.load(device="cuda", path=path).embed(chips)
    assert np.abs(full - reference).max() < 1e-4
    low = Embedder.load(device="cuda", path=path, precision=precision).embed(chips)
    assert low.dtype == np.float32
    assert np.abs(low - full).max() < max_abs
    assert np.linalg.norm(low - full, axis=1).max() < 0.03


def test_add_prev_zero_fills_top_left():
    from worker.face.resnet import add_prev

    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 1, 4, 4), 2.0)
    out = add_prev(a, b)
    assert out.shape == (1, 2, 4, 4)
    expected = torch.zeros(1, 2, 4, 4)
    expected[0, 0] = 2  # b everywhere in channel 0
    expected[0, :, :3, :3] += 1  # a in the top-left 3x3 of both channels
    assert torch.equal(out, expected)


def test_spatial_sizes_follow_dlib(embedder):
    sizes = []
    record = lambda module, inputs, output: sizes.append(tuple(output.shape[1:]))  # noqa: E731
    hooks = [stage.register_forward_hook(record) for stage in embedder.model.layers]
    try:
        embedder.embed(np.zeros((1, 150, 150, 3), dtype=np.uint8))
    finally:
        for hook in hooks:
            hook.remove()
    # 150 -> conv 7x7/2, pad 0 -> 72 -> max-pool 3x3/2 -> 35; later sums of a 3 and a 4 (and of
    # a 1 and a 2) keep the larger size.
    assert sizes == [(32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 4, 4), (256, 2, 2)]
