"""The faces an image gives under the request's options, with the real detector, landmarker and
network: boxes in original upright pixels, every face of a group photo, and the refusals."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bench.photos import ORIENTATION_TAG, STORED, place
from tests.group_photo import group_photo, inside
from worker.batch.face_json import face_json
from worker.face.choose import FaceOptions
from worker.face.errors import EXCEEDS_MAX_FACES, LOW_CONFIDENCE, LOW_QUALITY, MULTIPLE_FACES, SMALL_FACE
from worker.face.quality import pose

pytestmark = pytest.mark.faces


@pytest.fixture(scope="module")
def parts():
    from worker.face.pipeline import load_pipeline

    with load_pipeline(device="cpu", detector="cnn", threads=2) as loaded:
        yield loaded


def png(picture: Image.Image, orientation: int = 1) -> bytes:
    """PNG bytes, stored turned with the EXIF orientation tag when orientation is not 1."""
    out, exif = io.BytesIO(), Image.Exif()
    if orientation != 1:
        picture = picture.transpose(STORED[orientation])
        exif[ORIENTATION_TAG] = orientation
    picture.save(out, "PNG", exif=exif.tobytes())
    return out.getvalue()


def test_boxes_map_back_for_exif_rotated_and_rescaled_images(parts, faces_dir):
    """A 2000 x 1500 photo stored turned (EXIF 6, 8, 3) is detected on a 1000 x 750 working copy;
    its box in original upright pixels is within 2 px of the detector's box on the upright
    original reduced to the same size, scaled back by hand."""
    face = Image.open(faces_dir / "lfw_colour" / "Tony_Blair" / "Tony_Blair_0002.jpg")
    picture, crop = place(face, (2000, 1500), 400, 3)
    upright = picture.resize((1000, 750), Image.Resampling.LANCZOS)
    (reference,) = parts.detector.detect(np.asarray(upright))
    expected = np.array([reference.left * 2, reference.top * 2, reference.right * 2 + 1, reference.bottom * 2 + 1])
    results = parts.process([png(picture, o) for o in (1, 6, 8, 3)])
    for result in results:
        assert result.ok, result.error_message
        box = result.box
        assert np.abs(np.array([box.left, box.top, box.right, box.bottom]) - expected).max() <= 2, (box, expected)
        assert crop[0] <= box.left and box.right <= crop[2]
        assert result.landmarks.shape == (5, 2)
        assert (result.landmarks[:, 0] >= box.left).all() and (result.landmarks[:, 0] <= box.right).all()
    assert results[0].faces_detected == 1 and results[0].box.score > 0.5


def test_a_group_photo_gives_every_face_largest_first(parts, faces_dir):
    data, regions = group_photo(faces_dir)
    (three,) = parts.process([data], options=[FaceOptions(max_faces=3)])
    faces = [three, *three.others]
    assert [f.faces_detected for f in faces] == [3, 3, 3]
    for face, (person, region) in zip(faces, regions, strict=True):
        assert inside(face_json(face, "v")["box"], region), person
        assert face.descriptor is not None and face.quality is not None
    # one of each person: the descriptors are far apart
    assert min(np.linalg.norm(a.descriptor - b.descriptor) for a in faces for b in faces if a is not b) > 0.6

    (two,) = parts.process([data], options=[FaceOptions(max_faces=2)])
    assert len(two.others) == 1
    assert [r.reason for r in two.refused] == [EXCEEDS_MAX_FACES]
    assert inside(face_json(two, "v")["box"], regions[0][1])

    (rejected,) = parts.process([data], options=[FaceOptions(multiple_faces="reject")])
    assert rejected.error_code == MULTIPLE_FACES


def test_min_face_size_and_confidence_refuse_with_their_codes(parts, faces_dir):
    data, regions = group_photo(faces_dir)
    sizes = sorted(r[2] - r[0] + 1 for _, r in regions)
    # between the smallest face and the others: the smallest is refused, small_face
    (kept,) = parts.process([data], options=[FaceOptions(max_faces=3, min_face_size=sizes[0] // 2 + 20)])
    got = [kept, *kept.others]
    assert 1 <= len(got) <= 2
    assert SMALL_FACE in [r.reason for r in kept.refused]
    assert not any(inside(face_json(f, "v")["box"], regions[2][1]) for f in got)

    (none,) = parts.process([data], options=[FaceOptions(min_face_size=5000)])
    assert none.error_code == SMALL_FACE and not none.ok
    (doubtful,) = parts.process([data], options=[FaceOptions(min_detector_confidence=9.0)])
    assert doubtful.error_code == LOW_CONFIDENCE


def test_quality_filter_refuses_a_blurred_face(parts, faces_dir):
    face = Image.open(faces_dir / "lfw_colour" / "Colin_Powell" / "Colin_Powell_0001.jpg").convert("RGB")
    sharp, blurred = png(face), png(face.filter(ImageFilter.GaussianBlur(4)))
    plain = parts.process([sharp, blurred])
    assert all(r.ok for r in plain)
    assert plain[1].quality.sharpness < plain[0].quality.sharpness
    filtered = parts.process([sharp, blurred], options=[FaceOptions(quality_filter="medium")] * 2)
    assert filtered[0].ok
    assert filtered[1].error_code == LOW_QUALITY
    assert [r.reason for r in filtered[1].refused] == [LOW_QUALITY]
    assert "sharpness" in filtered[1].refused[0].failed


def test_pose_from_the_landmarks():
    frontal = np.array([[70.0, 50], [60, 50], [30, 50], [40, 50], [50, 72]])
    yaw, pitch, roll = pose(frontal)
    assert abs(yaw) < 1 and abs(roll) < 1 and abs(pitch) < 10
    turned = frontal.copy()
    turned[4, 0] += 10  # the nose towards the image's right
    assert pose(turned)[0] > 20
    tilted = frontal @ np.array([[np.cos(0.3), np.sin(0.3)], [-np.sin(0.3), np.cos(0.3)]])
    assert abs(pose(tilted)[2] - np.degrees(0.3)) < 1
