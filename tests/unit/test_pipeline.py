"""FacePipeline on real images with the real network, detector and landmarker."""

import io

import numpy as np
import pytest
from PIL import Image

from worker.face.detect import CroppedDetector, HogDetector
from worker.face.errors import BAD_IMAGE, IMAGE_TOO_LARGE, MULTIPLE_FACES, NO_FACE
from worker.face.pipeline import FACE_PIXELS, FacePipeline, load_pipeline


@pytest.fixture(scope="module")
def pipeline():
    with load_pipeline(device="cpu", detector="hog", upsample=1, threads=2) as loaded:
        yield loaded


def variant(pipeline, **options) -> FacePipeline:
    """The same loaded parts under other options (the caller closes it)."""
    settings = {"max_pixels": pipeline.max_pixels, "multiple_faces": "largest", "threads": 2} | options
    return FacePipeline(pipeline.embedder, pipeline.detector, pipeline.landmarker, **settings)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def lfw(faces_dir, name: str, number: int = 1) -> Image.Image:
    return Image.open(faces_dir / "lfw_colour" / name / f"{name}_{number:04d}.jpg").convert("RGB")


def distance(a, b) -> float:
    return float(np.linalg.norm(a.descriptor - b.descriptor))


@pytest.mark.faces
def test_descriptor_matches_dlibs_own_pipeline(faces_dir, pipeline):
    import dlib

    from worker.face.weights import RECOGNITION_MODEL, SHAPE_PREDICTOR_5, model_path

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_5)))
    recogniser = dlib.face_recognition_model_v1(str(model_path(RECOGNITION_MODEL)))
    path = faces_dir / "lfw_colour" / "Tony_Blair" / "Tony_Blair_0001.jpg"
    image = np.asarray(Image.open(path).convert("RGB"))
    shape = predictor(image, detector(image, 1)[0])
    expected = np.array(recogniser.compute_face_descriptor(image, shape))

    result = pipeline.process([path.read_bytes()])[0]
    assert result.ok and result.detector == "hog" and result.error_code is None
    assert result.descriptor.shape == (128,) and result.descriptor.dtype == np.float32
    assert result.landmarks.shape == (5, 2)
    np.testing.assert_allclose(result.descriptor, expected, atol=1e-4)


@pytest.mark.faces
def test_batch_equals_one_at_a_time_and_failures_stay_local(faces_dir, pipeline):
    names = ["Ariel_Sharon", "Colin_Powell", "George_W_Bush", "Hugo_Chavez", "Vladimir_Putin"]
    images = [encode(lfw(faces_dir, name, 2), "JPEG") for name in names]
    blank = encode(Image.new("RGB", (200, 200), (128, 128, 128)))
    batch = images[:2] + [b"not an image"] + images[2:4] + [blank] + images[4:]

    together = pipeline.process(batch)
    alone = [pipeline.process([data])[0] for data in batch]

    assert [r.error_code for r in together] == [None, None, BAD_IMAGE, None, None, NO_FACE, None]
    for a, b in zip(together, alone):
        assert a.error_code == b.error_code and a.box == b.box
        if a.ok:
            np.testing.assert_array_equal(a.landmarks, b.landmarks)
            np.testing.assert_allclose(a.descriptor, b.descriptor, atol=1e-4)
    # Different people stay apart: the results are not all the same descriptor.
    found = [r for r in together if r.ok]
    assert min(distance(a, b) for i, a in enumerate(found) for b in found[i + 1 :]) > 0.4


def test_error_results_carry_a_code_and_a_message(pipeline):
    result = pipeline.process([b"\x89PNG\r\n\x1a\n garbage"])[0]
    assert not result.ok and result.error_code == BAD_IMAGE and result.error_message
    assert result.descriptor is None and result.box is None


@pytest.mark.faces
def test_image_over_the_pixel_limit(faces_dir, pipeline):
    data = encode(lfw(faces_dir, "Tony_Blair"))
    with variant(pipeline, max_pixels=250 * 250 - 1) as small:
        assert small.process([data])[0].error_code == IMAGE_TOO_LARGE
    assert pipeline.process([data])[0].ok


def test_blank_image_has_no_face(pipeline):
    result = pipeline.process([encode(Image.new("RGB", (320, 240), (255, 255, 255)))])[0]
    assert result.error_code == NO_FACE and result.detector == "hog"


@pytest.mark.faces
def test_exif_rotated_jpeg_matches_the_upright_one(faces_dir, pipeline):
    upright = lfw(faces_dir, "Tony_Blair")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees anticlockwise; shown turned back
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    plain, rotated = pipeline.process(
        [
            encode(upright, "JPEG", quality=100, subsampling=0),
            encode(stored, "JPEG", quality=100, subsampling=0, exif=exif.tobytes()),
        ]
    )
    assert plain.ok and rotated.ok
    assert np.abs(plain.landmarks - rotated.landmarks).max() <= 2
    # JPEG re-encoding moves landmarks by a pixel; the same person is far below dlib's 0.6.
    assert distance(plain, rotated) < 0.15


@pytest.mark.faces
def test_greyscale_and_rgba_inputs(faces_dir, pipeline):
    colour = lfw(faces_dir, "Colin_Powell")
    alpha = colour.convert("RGBA")
    alpha.putalpha(255)
    original, grey, rgba = pipeline.process([encode(colour), encode(colour.convert("L")), encode(alpha)])
    assert original.ok and grey.ok and rgba.ok
    np.testing.assert_allclose(rgba.descriptor, original.descriptor, atol=1e-5)
    assert distance(grey, original) < 0.4


def two_faces(faces_dir) -> tuple[bytes, Image.Image, Image.Image]:
    """A large face on the right, a smaller one of someone else on the left."""
    large = lfw(faces_dir, "Tony_Blair")
    small = lfw(faces_dir, "Colin_Powell").resize((170, 170), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (500, 250), (90, 90, 90))
    canvas.paste(small, (0, 40))
    canvas.paste(large, (250, 0))
    return encode(canvas), large, small


@pytest.mark.faces
def test_two_faces_rejected_under_reject(faces_dir, pipeline):
    data, _, _ = two_faces(faces_dir)
    with variant(pipeline, multiple_faces="reject") as strict:
        result = strict.process([data])[0]
    assert result.error_code == MULTIPLE_FACES and "2" in result.error_message


@pytest.mark.faces
def test_two_faces_give_the_larger_under_largest(faces_dir, pipeline):
    data, large, small = two_faces(faces_dir)
    both, large_alone, small_alone = pipeline.process([data, encode(large), encode(small)])
    assert both.ok and both.box.left >= 250  # the face on the right half
    assert np.abs(both.landmarks - (250, 0) - large_alone.landmarks).max() <= 2
    # A box a pixel off moves the descriptor a little; another person is beyond dlib's 0.6.
    assert distance(both, large_alone) < 0.3 < 0.6 < distance(both, small_alone)


@pytest.mark.faces
def test_cropped_mode_on_an_orl_face(faces_dir, pipeline):
    orl = faces_dir / "orl"
    s1_1, s1_2, s2_1 = ((orl / s / n).read_bytes() for s, n in (("s1", "1.pgm"), ("s1", "2.pgm"), ("s2", "1.pgm")))
    first, same, other = pipeline.process([s1_1, s1_2, s2_1], cropped=True)
    assert first.ok and first.detector == "cropped"
    assert (first.box.left, first.box.top, first.box.right, first.box.bottom) == (0, 0, 91, 111)
    assert distance(first, same) < 0.6 < distance(first, other)


@pytest.mark.faces
def test_cropped_flags_per_image(faces_dir, pipeline):
    orl = (faces_dir / "orl" / "s1" / "1.pgm").read_bytes()
    photo = encode(lfw(faces_dir, "Tony_Blair"))
    crop, detected = pipeline.process([orl, photo], cropped=[True, False])
    assert crop.detector == "cropped" and detected.detector == "hog"
    assert crop.ok and detected.ok and detected.box.left > 0
    with pytest.raises(ValueError):
        pipeline.process([orl, photo], cropped=[True])


def test_options_are_checked(pipeline):
    with pytest.raises(ValueError):
        FacePipeline(pipeline.embedder, HogDetector(0), pipeline.landmarker, max_pixels=10, multiple_faces="first")
    with pytest.raises(ValueError):
        load_pipeline(device="cpu", detector="mmod")
    assert CroppedDetector().detect(np.zeros((7, 5, 3), np.uint8))[0].right == 4


@pytest.mark.faces
def test_large_photo_is_processed_at_the_working_size(faces_dir, pipeline):
    face = lfw(faces_dir, "Tony_Blair")
    canvas = Image.new("RGB", (5000, 4000), (90, 110, 130))
    canvas.paste(face.resize((1250, 1250)), (2500, 1500))
    data = encode(canvas, "JPEG", quality=90)
    with variant(pipeline, detect_max_side=1000) as working:
        assert working.decoded_pixels(data) == 1000 * 800 + FACE_PIXELS  # the working copy and the face
        assert working.decoded_pixels(b"not an image") == 0
        big = working.process([data])[0]
    alone = pipeline.process([encode(face.resize((250, 250)), "PNG")])[0]
    assert big.ok and alone.ok
    assert (
        2500 <= big.box.left < big.box.right <= 3750 and 1500 <= big.box.top < big.box.bottom <= 2750
    )  # full-size coordinates
    assert ((big.landmarks >= (2500, 1500)) & (big.landmarks <= (3750, 2750))).all()
    assert distance(big, alone) < 0.3  # the same person, from fewer pixels
