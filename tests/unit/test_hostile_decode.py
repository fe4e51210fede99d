"""Hostile image bytes against the decoder and the whole face pipeline: every input ends in an
image or a FaceError with a stable code, never another exception."""

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from worker.face.decode import decode_image
from worker.face.errors import BAD_IMAGE, IMAGE_TOO_LARGE, FaceError

LIMIT = 25_000_000
CODES = {BAD_IMAGE, IMAGE_TOO_LARGE}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring width x height, with a few bytes of (far too little) pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def jpeg(size=(64, 48), **save) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buffer, format="JPEG", **save)
    return buffer.getvalue()


def decode_or_code(data: bytes) -> str | None:
    """None when decoded to a valid RGB array, else the FaceError code."""
    try:
        pixels = decode_image(data, LIMIT)
    except FaceError as exc:
        assert exc.code in CODES, exc.code
        return exc.code
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    return None


def test_decompression_bomb_png_is_too_large_from_its_header():
    assert decode_or_code(png_declaring(30000, 30000)) == IMAGE_TOO_LARGE


def test_zero_bytes_and_a_png_with_zero_width():
    assert decode_or_code(b"") == BAD_IMAGE
    assert decode_or_code(png_declaring(0, 10)) == BAD_IMAGE


def test_huge_exif_block_still_decodes():
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: close to the 64 KiB APP1 limit
    assert decode_or_code(jpeg(exif=exif.tobytes())) is None


def test_sixteen_bit_rgb_png_decodes_or_is_refused_with_a_code():
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(buffer, format="PNG")
    assert decode_or_code(buffer.getvalue()) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_never_escape_as_another_error(data):
    decode_or_code(data)


def real_face() -> list[bytes]:
    """A real face JPEG and its PNG, when the face images are present."""
    from shared.settings import get_settings

    path = get_settings().faces_dir / "lfw_colour" / "Tony_Blair" / "Tony_Blair_0001.jpg"
    if not path.exists():
        return []
    data = path.read_bytes()
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, format="PNG")
    return [data, buffer.getvalue()]


SEEDS = [jpeg(), jpeg(progressive=True), png_declaring(8, 8), *real_face()]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(SEEDS))),
    st.lists(st.tuples(st.integers(0, 200_000), st.integers(0, 255)), max_size=8),
    st.integers(0, 200_000),
)
def test_mutated_images_never_escape_as_another_error(seed, flips, cut):
    data = bytearray(SEEDS[seed])
    for position, value in flips:
        data[position % len(data)] = value
    decode_or_code(bytes(data[: max(1, len(data) - cut % len(data))]))


@pytest.fixture(scope="module")
def pipeline():
    from shared.settings import get_settings
    from worker.face.pipeline import load_pipeline

    loaded = load_pipeline(device="cpu", cache_dir=get_settings().model_cache_dir, threads=1)
    yield loaded
    loaded.close()


def test_hostile_batch_through_the_pipeline_gives_codes(pipeline, faces_dir):
    """Each hostile image fails alone with its code; the real face in the same batch succeeds."""
    real = (faces_dir / "lfw_colour" / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()
    tiny = io.BytesIO()
    Image.open(io.BytesIO(real)).resize((24, 24)).save(tiny, format="JPEG")
    images = [b"", b"\x00" * 100, real[: len(real) // 3], png_declaring(30000, 30000), tiny.getvalue(), real]
    results = pipeline.process(images, [False] * len(images))
    codes = [r.error_code for r in results]
    assert codes == [BAD_IMAGE, BAD_IMAGE, codes[2], IMAGE_TOO_LARGE, "no_face", None], codes
    assert codes[2] in (BAD_IMAGE, "no_face")  # a truncated JPEG may decode to a partial grey image
    assert results[-1].ok
