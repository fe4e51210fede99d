"""Phone photos: decode at a working resolution, boxes in original pixels, EXIF orientation,
memory bounded by the working copy, and the settings' bounds. A handful of corpus images are made
in memory with bench.photos (the face images come from ../shared/data/faces)."""

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from bench.photos import encode, place
from shared.settings import Settings

pytestmark = pytest.mark.faces
LIMIT = 25_000_000


@pytest.fixture(scope="module")
def parts():
    from worker.face.pipeline import load_pipeline

    with load_pipeline(device="cpu", detector="cnn", threads=2) as loaded:
        yield loaded


def variant(parts, **options):
    from worker.face.pipeline import FacePipeline

    settings = {"max_pixels": LIMIT, "multiple_faces": "largest", "threads": 2} | options
    return FacePipeline(parts.embedder, parts.detector, parts.landmarker, **settings)


def source(faces_dir, name: str, number: int = 1) -> Image.Image:
    return Image.open(faces_dir / "lfw_colour" / name / f"{name}_{number:04d}.jpg")


def corners(box) -> np.ndarray:
    return np.array([box.left, box.top, box.right, box.bottom], dtype=np.float64)


def test_detect_max_side_bounds():
    assert Settings().detect_max_side == 1000
    assert Settings(detect_max_side=640).detect_max_side == 640
    for nonsense in (0, -5, 100, 100_000):
        with pytest.raises(ValidationError):
            Settings(detect_max_side=nonsense)


def test_smallest_face_follows_the_working_resolution():
    from worker.face.pipeline import smallest_face_px

    assert smallest_face_px(250, 250, 1000) == 80  # never below the detector's window
    assert smallest_face_px(4032, 3024, 1000) == 323
    assert smallest_face_px(3024, 4032, 1008) == 320


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_region_decode_is_the_full_decode_cropped(orientation):
    from worker.face.decode import decode_image, decode_region, decode_working

    rng = np.random.default_rng(orientation)
    picture = Image.fromarray(rng.integers(0, 256, size=(120, 200, 3), dtype=np.uint8)).resize((800, 480))
    data = encode(picture, "JPEG", 90, orientation)
    full = decode_image(data, LIMIT)
    assert full.shape == (480, 800, 3)
    region = decode_region(data, LIMIT, (301.3, 97.8, 522.0, 300.1), 1.0)
    assert (region.left, region.top, region.scale_x) == (301, 97, 1.0)
    np.testing.assert_array_equal(region.pixels, full[97:302, 301:523])
    half = decode_region(data, LIMIT, (301.3, 97.8, 522.0, 300.1), 0.5)  # DCT scale 1/2
    assert half.scale_x == half.scale_y == 2.0 and half.pixels.shape[0] >= 100
    back = half.to_original(np.array([[0.0, 0.0]]))[0]
    assert 296 <= back[0] <= 302 and 93 <= back[1] <= 98
    working = decode_working(data, LIMIT, 200)  # 1/4 DCT scale, exactly 200 wide
    assert working.pixels.shape == (120, 200, 3) and working.scale_x == 4.0
    small = np.asarray(Image.fromarray(full).resize((200, 120), Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(working.pixels - small).mean() < 12  # the same picture (unrelated ones: ~85)


def test_working_copy_never_exceeds_max_side(faces_dir):
    from worker.face.decode import decode_working

    picture, _ = place(source(faces_dir, "Tony_Blair"), (1920, 1080), 300, 1)
    for fmt in ("JPEG", "PNG", "WEBP"):
        working = decode_working(encode(picture, fmt, 90), LIMIT, 1000)
        assert working.pixels.shape == (562, 1000, 3), fmt
        assert (working.width, working.height) == (1920, 1080)
        assert working.scale_x == pytest.approx(1.92)
    assert not decode_working(encode(source(faces_dir, "Tony_Blair"), "JPEG"), LIMIT, 1000).reduced


@pytest.mark.parametrize(
    "name, frame, face_px",
    [("Colin_Powell", (1920, 1080), 340), ("Hugo_Chavez", (1920, 1080), 420), ("Gerhard_Schroeder", (1080, 1920), 400)],
)
def test_reduced_decode_gives_the_boxes_of_the_full_decode(parts, faces_dir, name, frame, face_px):
    """Detection on a working copy (DCT 1/4 here: faces from 320 px) and on the whole frame find
    the same face: the same centre within the detector's step (12% of the face) once mapped back, the size within one of
    the detector's pyramid steps (x1.2) either way, the landmarks within 2 pixels, the same
    descriptor."""
    picture, crop = place(source(faces_dir, name), frame, face_px, 7)
    data = encode(picture, "JPEG", 90)
    with variant(parts, detect_max_side=480) as reduced, variant(parts, detect_max_side=8192) as whole:
        (small,) = reduced.process([data])
        (full,) = whole.process([data])
    assert small.ok and full.ok
    a, b = corners(small.box), corners(full.box)
    width = b[2] - b[0]
    assert np.abs((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2).max() <= 0.12 * width
    assert 1 / 1.45 <= (a[2] - a[0]) / width <= 1.45
    assert crop[0] <= small.box.left and small.box.right <= crop[2]
    assert np.abs(small.landmarks - full.landmarks).max() <= 2.5
    assert np.linalg.norm(small.descriptor - full.descriptor) < 0.06


def test_exif_rotated_photo_matches_the_upright_one(parts, faces_dir):
    picture, crop = place(source(faces_dir, "Tony_Blair", 2), (4032, 3024), 450, 3)
    with variant(parts) as pipeline:
        results = pipeline.process([encode(picture, "JPEG", 92, o) for o in (1, 6, 8, 3)])
    upright = results[0]
    assert upright.ok, upright.error_message
    assert crop[0] <= upright.box.left and upright.box.right <= crop[2]
    for turned in results[1:]:
        assert turned.ok
        assert np.abs(corners(turned.box) - corners(upright.box)).max() <= 16  # 4 working pixels
        assert np.abs(turned.landmarks - upright.landmarks).max() <= 3
        assert np.linalg.norm(turned.descriptor - upright.descriptor) < 0.06


def test_12mp_photo_matches_its_250_crop_in_bounded_memory(parts, faces_dir):
    """A 12 MP JPEG never becomes a full-size array: the pipeline's numpy memory stays within a
    few working copies (a full 4032x3024 RGB frame alone is 36 MB)."""
    face = source(faces_dir, "Colin_Powell", 2)
    picture, crop = place(face, (3024, 4032), 700, 5)
    data = encode(picture, "JPEG", 90)
    del picture
    with variant(parts) as pipeline:
        (crop_result,) = pipeline.process([encode(face, "JPEG", 95)])
        pipeline.process([data])  # warm
        tracemalloc.start()
        try:
            (result,) = pipeline.process([data])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.ok, result.error_message
    assert crop[0] <= result.box.left and result.box.right <= crop[2]
    assert crop[1] <= result.box.top and result.box.bottom <= crop[3]
    assert peak < 24 * 2**20, f"peak traced memory {peak / 2**20:.1f} MiB"
    assert np.linalg.norm(result.descriptor - crop_result.descriptor) < 0.2


def test_png_and_webp_phone_photos(parts, faces_dir):
    picture, crop = place(source(faces_dir, "Jacques_Chirac"), (1920, 1080), 300, 11)
    with variant(parts) as pipeline:
        results = pipeline.process([encode(picture, fmt, 90) for fmt in ("JPEG", "PNG", "WEBP")])
    assert all(r.ok for r in results)
    for other in results[1:]:
        assert np.abs(corners(other.box) - corners(results[0].box)).max() <= 8
        assert np.linalg.norm(other.descriptor - results[0].descriptor) < 0.08


def test_corpus_is_deterministic(faces_dir):
    from bench.photos import photo_plan, selfie_plan

    face = source(faces_dir, "Tony_Blair")
    first, box = place(face, (1920, 1080), 150, 42)
    again, box_again = place(face, (1920, 1080), 150, 42)
    assert box == box_again and first.tobytes() == again.tobytes()
    assert photo_plan("a.jpg", 3, 3) == photo_plan("a.jpg", 3, 3)
    plan = selfie_plan("Name_0001.jpg", 0)
    assert plan["frame"] in ((3024, 4032), (4032, 3024)) and 450 <= plan["face_px"] <= 1200
    with pytest.raises(ValueError):
        place(face, (1920, 1080), 1200, 1)
    upright = Image.open(io.BytesIO(encode(first, "JPEG", 90, 6)))
    assert upright.size == (1080, 1920) and upright.getexif()[0x0112] == 6


def test_torch_alignment_in_the_pipeline_on_the_cpu(parts, faces_dir):
    """The device path's alignment, falling back to the CPU: the same faces as numpy's."""
    photos = [
        encode(place(source(faces_dir, name), (4032, 3024), 500, 2)[0], "JPEG", 90)
        for name in ("Vladimir_Putin", "Donald_Rumsfeld")
    ]
    photos.append(encode(source(faces_dir, "Tony_Blair", 3), "JPEG", 95))
    with variant(parts, aligner="numpy") as exact, variant(parts, aligner="torch") as batched:
        assert exact.aligner == "numpy" and batched.aligner == "torch"
        for a, b in zip(exact.process(photos), batched.process(photos)):
            assert a.ok and b.ok and a.box == b.box
            assert np.linalg.norm(a.descriptor - b.descriptor) < 0.02
    with pytest.raises(ValueError):
        variant(parts, aligner="opencv")


def test_photo_table_prints_every_size(capsys):
    from bench.model import print_photo_table

    stages = {"decode": 1.0, "detect": 2.0, "landmarks": 0.5, "align": 1.5, "embed": 3.0}
    row = {
        "biofleet": stages,
        "dlib": stages,
        "biofleet_peak_rss_mib": 700.0,
        "dlib_peak_rss_mib": 900.0,
        "dlib_cnn_detect_ms_one_image": 4321.0,
    }
    print_photo_table({"photo_stages_ms_per_image": {"250x250": row, "12 MP": row}})
    out = capsys.readouterr().out
    assert "12 MP" in out and "250x250" in out and "4321" in out and "8.0" in out


def test_largest_passes_over_doubtful_faces():
    """Under "largest", a box scored under half the best score (a face cut by an edge) is passed
    over however large; boxes without a score are compared by size alone."""
    from worker.face.subject import largest
    from worker.face.types import Box

    subject, cut = Box(60, 60, 170, 170, score=1.03), Box(150, 0, 280, 130, score=0.32)
    assert largest([subject, cut]) == subject
    assert largest([subject, Box(150, 0, 280, 130, score=0.9)]).left == 150
    assert largest([Box(0, 0, 10, 10), Box(0, 0, 20, 20)]).right == 20
    same_size = [Box(0, 0, 10, 10, score=1.0), Box(5, 5, 15, 15, score=0.8)]
    assert largest(same_size) is same_size[0]


def test_largest_keeps_the_face_nearest_the_centre_among_alike_sizes():
    """Boxes within SAME_SIZE of the largest area are alike to the detector: the one nearest the
    frame's centre is kept, whatever its score; a clearly larger box still wins, and a doubtful
    one is still passed over. Without a frame the larger box is kept as before."""
    from worker.face.subject import SAME_SIZE, largest
    from worker.face.types import Box

    frame = (1000, 750)
    centred = Box(450, 320, 549, 419, score=1.03)  # 99 x 99, at the centre
    edge = Box(0, 300, 100, 400, score=1.08)  # 100 x 100 (2% more area), better scored, at the edge
    assert edge.area < (1 + SAME_SIZE) * centred.area
    assert largest([edge, centred], frame) == centred
    assert largest([centred, edge], frame) == centred
    assert largest([edge, centred]) == edge
    larger = Box(0, 300, 130, 430, score=1.0)  # 30% more area than the centred face
    assert largest([larger, centred], frame) == larger
    doubtful = Box(440, 310, 540, 410, score=0.4)  # alike and nearer the centre, but scored low
    assert largest([edge, doubtful], frame) == edge
    assert largest([Box(0, 0, 10, 10), Box(5, 5, 15, 15)], (20, 20)).left == 5


def test_largest_passes_over_a_less_sure_face_among_alike_sizes():
    """Among boxes alike in size, one scored under SURE_SHARE of the best (a face cut by an edge,
    turned away or half hidden) is passed over even when it lies nearer the frame's centre; alike
    boxes scored within that share still go to the one nearest the centre."""
    from worker.face.subject import DOUBTFUL_SHARE, SURE_SHARE, largest
    from worker.face.types import Box

    frame = (1000, 750)
    subject = Box(600, 400, 763, 563, score=1.07)  # off the centre, clearly scored
    cut = Box(420, 300, 584, 464, score=0.87)  # as large, nearer the centre, scored lower
    assert DOUBTFUL_SHARE * subject.score < cut.score < SURE_SHARE * subject.score
    assert largest([cut, subject], frame) == subject
    assert largest([subject, cut], frame) == subject
    sure = Box(420, 300, 584, 464, score=0.99)  # within the share: the centre decides
    assert largest([subject, sure], frame) == sure
    unscored = [Box(600, 400, 763, 563), Box(420, 300, 584, 464)]
    assert largest(unscored, frame) == unscored[1]


def test_12mp_photo_keeps_the_centred_face_beside_an_alike_cut_one(parts, faces_dir):
    """An LFW crop whose second face, cut by the crop's left edge, gets at 12 MP a box as large as
    the subject's and a better score: the face nearer the photo's centre (the crop's subject, as
    on the 250x250 crop) is kept. The photo is made here as bench.photos makes view1_12mp's."""
    path = faces_dir / "lfw_view1" / "Alvaro_Uribe" / "Alvaro_Uribe_0007.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found (LFW View 1 images)")
    from bench.photos import seed_of

    picture, crop = place(Image.open(path), (4032, 3024), 553, seed_of(path.name))  # as in view1_12mp
    with variant(parts) as pipeline:
        small, large = pipeline.process([path.read_bytes(), encode(picture, "JPEG", 92)])
    assert small.ok and large.ok and small.box.left > 50  # the crop keeps its centred face
    scale = (crop[2] - crop[0] + 1) / 250
    mapped = (small.landmarks + 0.5) * scale - 0.5 + np.array(crop[:2])
    assert np.abs(large.landmarks - mapped).max() <= 3 * scale
    assert np.linalg.norm(large.descriptor - small.descriptor) < 0.1


def test_12mp_photo_keeps_the_crops_face_beside_a_cut_one(parts, faces_dir):
    """An LFW crop with a second face cut by its corner, placed in a 12 MP photo as bench.photos
    places it: the cut face's box (not clipped by the crop's edge there) is larger than the
    subject's but scored low; the subject is kept, as on the 250x250 crop."""
    path = faces_dir / "lfw_view1" / "Elsa_Zylberstein" / "Elsa_Zylberstein_0005.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found (LFW View 1 images)")
    from bench.photos import seed_of

    picture, crop = place(Image.open(path), (3024, 4032), 619, seed_of(path.name))  # as in view1_12mp
    with variant(parts) as pipeline:
        small, large = pipeline.process([path.read_bytes(), encode(picture, "JPEG", 90)])
    assert small.ok and large.ok
    scale = (crop[2] - crop[0] + 1) / 250
    mapped = (small.landmarks + 0.5) * scale - 0.5 + np.array(crop[:2])
    assert np.abs(large.landmarks - mapped).max() <= 3 * scale
    assert np.linalg.norm(large.descriptor - small.descriptor) < 0.1


def test_12mp_photo_passes_over_an_alike_cut_face_scored_lower(parts, faces_dir):
    """An LFW crop with a second face cut by its corner: at 250x250 that face scores under half
    the subject's, at 12 MP its box is as large as the subject's and nearer the photo's centre,
    but still scored clearly lower. The subject is kept, as on the 250x250 crop; the photo is
    made here as bench.photos makes view1_12mp's (stored turned, EXIF orientation 8)."""
    path = faces_dir / "lfw_view1" / "Diane_Green" / "Diane_Green_0002.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found (LFW View 1 images)")
    from bench.photos import seed_of

    picture, crop = place(Image.open(path), (4032, 3024), 652, seed_of(path.name))  # as in view1_12mp
    with variant(parts) as pipeline:
        small, large = pipeline.process([path.read_bytes(), encode(picture, "JPEG", 89, 8)])
    assert small.ok and large.ok and large.faces_detected == 2
    scale = (crop[2] - crop[0] + 1) / 250
    mapped = (small.landmarks + 0.5) * scale - 0.5 + np.array(crop[:2])
    assert np.abs(large.landmarks - mapped).max() <= 3 * scale
    assert np.linalg.norm(large.descriptor - small.descriptor) < 0.1
