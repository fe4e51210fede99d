"""worker.batch.pixel_parts: images go through the pipeline in parts within the pixel budget."""

import io
import uuid

from PIL import Image

from shared.settings import Settings
from worker.batch import Runtime, pixel_parts


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def runtime(budget: int, pipeline=None) -> Runtime:
    settings = Settings(batch_pixel_budget=budget, redis_url="redis://x", database_url="postgresql://x")
    return Runtime(pipeline=pipeline, blobs=None, database_url="", model_version="v", settings=settings, republish=None)


def slots_of(*jobs: int) -> list:
    """(job, image index) per image, for jobs with these numbers of images."""
    slots = []
    for count in jobs:
        job = uuid.uuid4()
        slots += [(job, index) for index in range(count)]
    return slots


def test_a_batch_over_the_budget_runs_in_parts_that_keep_jobs_whole():
    images = [png(100, 100)] * 7  # 10,000 pixels each
    slots = slots_of(2, 3, 1, 1)
    assert pixel_parts(runtime(50_000), images, slots) == [(0, 5), (5, 7)]
    assert pixel_parts(runtime(40_000), images, slots) == [(0, 2), (2, 6), (6, 7)]
    assert pixel_parts(runtime(10**9), images, slots) == [(0, 7)]


def test_a_job_over_the_budget_runs_alone():
    images = [png(100, 100), png(300, 300), png(300, 300), png(100, 100)]
    slots = slots_of(1, 2, 1)
    assert pixel_parts(runtime(50_000), images, slots) == [(0, 1), (1, 3), (3, 4)]


def test_pixels_are_counted_as_the_pipeline_decodes_them():
    class Shrinking:
        def decoded_pixels(self, data: bytes) -> int:
            return 1

    images = [png(1000, 1000)] * 4
    assert pixel_parts(runtime(3, Shrinking()), images, slots_of(1, 1, 1, 1)) == [(0, 3), (3, 4)]
    assert pixel_parts(runtime(3), images, slots_of(1, 1, 1, 1)) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_phone_photos_count_as_their_working_copies():
    """The real pipeline counts a 12 MP photo as its 1000x750 working copy and its face."""
    from worker.face.pipeline import FACE_PIXELS, FacePipeline

    images = [png(4000, 3000)] * 4
    each = 1000 * 750 + FACE_PIXELS
    with FacePipeline(None, None, None, max_pixels=25_000_000, detect_max_side=1000) as pipeline:
        assert pipeline.decoded_pixels(images[0]) == each
        assert pixel_parts(runtime(3 * each, pipeline), images, slots_of(1, 1, 1, 1)) == [(0, 3), (3, 4)]
        assert pixel_parts(runtime(4 * each, pipeline), images, slots_of(1, 1, 1, 1)) == [(0, 4)]


def test_unreadable_images_count_nothing():
    assert pixel_parts(runtime(1), [b"junk", b"junk"], slots_of(1, 1)) == [(0, 2)]
