"""Hostile input through the API and a real worker: each ends with a stable error code (at the
API, or as the job's error), and the worker never crashes. Then random and mutated bytes at the
API (hypothesis), and schemathesis against the API's own OpenAPI document."""

import base64
import io
import json
import os
import struct
import uuid
import zlib

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from api.app import create_app
from shared.settings import Settings
from tests.integration.polling import wait_final

pytestmark = [pytest.mark.stack]

FACE = ("Tony_Blair", 1)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def hostile_images(faces_dir) -> dict[str, tuple[bytes, set[str]]]:
    """name -> (image bytes, the outcomes allowed: "succeeded" or error codes)."""
    path = faces_dir / "lfw_colour" / FACE[0] / f"{FACE[0]}_{FACE[1]:04d}.jpg"
    real = path.read_bytes()
    face = Image.open(io.BytesIO(real)).convert("RGB")
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000
    grey16 = Image.fromarray(np.asarray(face.convert("L"), dtype=np.uint16) * 257)
    frames = [face, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    others = ["Colin_Powell", "George_W_Bush", "Ariel_Sharon"]
    grid = Image.new("RGB", (500, 500), (255, 255, 255))
    for index, person in enumerate([FACE[0], *others]):
        tile = Image.open(faces_dir / "lfw_colour" / person / f"{person}_0001.jpg").convert("RGB")
        grid.paste(tile, ((index % 2) * 250, (index // 2) * 250))
    return {
        "random": (os.urandom(4096), {"bad_image"}),
        "truncated_jpeg": (real[: len(real) // 4], {"bad_image", "no_face"}),
        "truncated_png": (encode(face, "PNG")[:3000], {"bad_image"}),
        "bomb_png": (png_declaring(30000, 30000), {"image_too_large"}),
        "animated_gif": (gif.getvalue(), {"succeeded"}),
        "cmyk_jpeg": (encode(face.convert("CMYK"), "JPEG", quality=95), {"succeeded"}),
        "png_16_bit": (encode(grey16, "PNG"), {"succeeded", "no_face"}),
        "huge_exif": (encode(face, "JPEG", exif=exif.tobytes()), {"succeeded"}),
        "big_base64": (os.urandom(3 * 1024 * 1024), {"bad_image"}),
        "tiny_face": (encode(face.resize((30, 30)), "PNG"), {"no_face"}),
        "many_faces": (encode(grid, "JPEG"), {"multiple_faces"}),
    }


def drain_tenant_messages(redis_client, tenant_ids: set[str]) -> None:
    """Remove the messages of these tenants from the job queues (no worker will take them)."""
    from shared.queues import JOB_QUEUES

    for queue in JOB_QUEUES:
        for raw in redis_client.lrange(queue, 0, -1):
            try:
                _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
            except ValueError:
                continue
            if kwargs.get("tenant_id") in tenant_ids:
                redis_client.lrem(queue, 1, raw)


def tenant_of(services, key: str) -> str:
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key

    with session_scope(services.database_url) as session:
        return str(tenant_for_key(session, key))


@pytest.mark.faces
def test_hostile_images_end_with_codes_and_the_worker_survives(api_client, make_key, start_worker, faces_dir):
    key = make_key(f"hostile-{uuid.uuid4().hex[:8]}")
    worker = start_worker(batch_size=8, multiple_faces="reject")
    real = (faces_dir / "lfw_colour" / FACE[0] / f"{FACE[0]}_0002.jpg").read_bytes()
    enrolled = api_client.post(
        "/v1/subjects/hostile-a/enrollments", json={"images": [b64(real)]}, headers=auth(key)
    ).json()["id"]
    assert wait_final(api_client, key, [enrolled])[enrolled]["status"] == "succeeded"

    cases = hostile_images(faces_dir)
    submitted = {}
    for name, (data, _) in cases.items():
        response = api_client.post(
            "/v1/verifications", json={"subject_id": "hostile-a", "image": b64(data)}, headers=auth(key)
        )
        assert response.status_code == 202, (name, response.text)
        submitted[name] = response.json()["id"]

    # Refused at the API, before any job exists.
    refused = {
        "zero_bytes": api_client.post("/v1/verifications", json={"subject_id": "hostile-a", "image": ""}, headers=auth(key)),
        "too_many": api_client.post("/v1/subjects/hostile-a/enrollments", json={"images": [b64(real)] * 11},
                                    headers=auth(key)),
        "oversized": api_client.post("/v1/identifications", content=b"{" + b" " * (21 * 1024 * 1024),
                                     headers={**auth(key), "Content-Type": "application/json"}),
    }  # fmt: skip
    assert {name: (r.status_code, r.json()["error"]["code"]) for name, r in refused.items()} == {
        "zero_bytes": (422, "empty_image"),
        "too_many": (422, "too_many_images"),
        "oversized": (413, "body_too_large"),
    }

    jobs = wait_final(api_client, key, list(submitted.values()))
    outcomes = {}
    for name, job_id in submitted.items():
        job = jobs[job_id]
        outcomes[name] = "succeeded" if job["status"] == "succeeded" else job["error"]["code"]
    unexpected = {name: got for name, got in outcomes.items() if got not in cases[name][1]}
    assert not unexpected, unexpected
    assert worker.poll() is None
    log = worker.log_path.read_text()
    assert "Traceback" not in log and "CRITICAL" not in log


MUTATION_SEEDS: list[bytes] = []


def real_face_jpeg() -> bytes:
    """A real face when the images are present, else a plain JPEG."""
    path = Settings().faces_dir / "lfw_colour" / FACE[0] / f"{FACE[0]}_0003.jpg"
    return path.read_bytes() if path.exists() else encode(Image.new("RGB", (60, 60), (90, 60, 30)), "JPEG")


@pytest.fixture(scope="module")
def fuzz_key(make_key, services, redis_client):
    key = make_key(f"fuzz-{uuid.uuid4().hex[:8]}")
    yield key
    drain_tenant_messages(redis_client, {tenant_of(services, key)})


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=2048),
        st.tuples(st.integers(0, 2), st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 255)), max_size=6)),
    ),
    as_multipart=st.booleans(),
)
def test_random_and_mutated_bytes_at_the_api(api_client, fuzz_key, data, as_multipart):
    """The API takes any non-empty bytes as an image (the worker decides) and never answers 5xx."""
    if isinstance(data, tuple):
        if not MUTATION_SEEDS:
            MUTATION_SEEDS.extend(
                [real_face_jpeg(), encode(Image.new("RGB", (40, 40)), "PNG"), png_declaring(300, 300)]
            )
        seed, flips = data
        mutated = bytearray(MUTATION_SEEDS[seed])
        for position, value in flips:
            mutated[position % len(mutated)] = value
        data = bytes(mutated)
    if as_multipart:
        response = api_client.post("/v1/identifications", files={"image": ("x.bin", data)}, headers=auth(fuzz_key))
    else:
        response = api_client.post("/v1/identifications", json={"image": b64(data)}, headers=auth(fuzz_key))
    assert response.status_code == 202, response.text


# --- schemathesis ------------------------------------------------------------------------------
# The schema is read from an app made at import; its backends are pointed at the test services
# by the schema_services fixture (the app opens them on first use).

SCHEMA_APP = create_app(Settings(rate_limit_requests=0, auth_failure_limit=0))
schema = schemathesis.openapi.from_asgi("/openapi.json", SCHEMA_APP)


@pytest.fixture(scope="module")
def schema_key(make_key, services, redis_client):
    from api.deps import Backends
    from api.metrics import ApiMetrics
    from shared.settings import get_settings

    # No rate limits: the conformance of the API itself (its many 401s would limit this address).
    backends = Backends(get_settings().model_copy(update={"rate_limit_requests": 0, "auth_failure_limit": 0}))
    SCHEMA_APP.state.backends = backends
    SCHEMA_APP.state.metrics = ApiMetrics()
    key = make_key(f"schema-{uuid.uuid4().hex[:8]}")
    yield key
    backends.close()
    drain_tenant_messages(redis_client, {tenant_of(services, key)})


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_conforms_to_its_openapi(case, schema_key):
    """No 5xx, and every response matches the documented status codes, content types, headers and
    schemas. (Limits that depend on settings, such as at least one image, are not in the schema,
    so schema-valid requests may get a documented 422: acceptance checks are not run.)"""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]  # fmt: skip
    case.call_and_validate(headers=auth(schema_key), checks=checks)


# --- bodies that once answered 500 or took the API's memory ---------------------------------------


@pytest.fixture(scope="module")
def plain_key(make_key, services, redis_client):
    key = make_key(f"plain-{uuid.uuid4().hex[:8]}")
    yield key
    drain_tenant_messages(redis_client, {tenant_of(services, key)})


SUBMIT_PATHS = ["/v1/subjects/deep/enrollments", "/v1/verifications", "/v1/identifications"]


@pytest.mark.parametrize("path", SUBMIT_PATHS)
def test_deeply_nested_json_is_a_validation_error(api_client, plain_key, path):
    for body in (b"[" * 100_000, b'{"images": ' + b"[" * 100_000, b'{"image": ' + b"{" * 50_000):
        response = api_client.post(path, content=body, headers={**auth(plain_key), "Content-Type": "application/json"})
        assert response.status_code == 422, response.text[:200]
        assert response.json()["error"]["code"] == "validation_error"


NOT_STORABLE = ["http://example.com/\x00hook", "https://exa\x00mple.com/h", "http://example.com/\ud800"]


@pytest.mark.parametrize("url", NOT_STORABLE)
def test_a_callback_url_postgres_cannot_store_is_refused(api_client, plain_key, url):
    body = json.dumps({"image": b64(b"x" * 10), "callback_url": url}).encode()
    response = api_client.post("/v1/identifications", content=body,
                               headers={**auth(plain_key), "Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "bad_callback_url"
    form = api_client.post("/v1/identifications", files={"image": ("x.bin", b"x" * 10)},
                           data={"callback_url": url.replace("\ud800", "\x01")}, headers=auth(plain_key))  # fmt: skip
    assert form.status_code == 422, form.text
    assert form.json()["error"]["code"] == "bad_callback_url"


MAX_LISTED = 20


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/subjects/many/enrollments", b'{"images": [' + b"0," * 10_000_000 + b"0]}"),  # ~20 MB
        ("/v1/identifications", b"{" + b",".join(b'"k%07d":0' % i for i in range(1_500_000)) + b"}"),
        ("/v1/verifications", b"[" + b"0," * 10_000_000 + b"0]"),
        ("/v1/identifications", b'{"' + b"k" * 19_000_000 + b'": 0}'),
    ],
    ids=["ten-million-images", "unknown-fields", "top-level-list", "long-field-name"],
)
def test_millions_of_invalid_items_get_a_short_answer(api_client, plain_key, path, body):
    """A body near the size limit full of invalid items: a 422 listing a capped number of errors
    and their count, not one entry per item."""
    assert len(body) <= Settings().max_body_bytes
    response = api_client.post(path, content=body, headers={**auth(plain_key), "Content-Type": "application/json"})
    assert response.status_code == 422, response.text[:300]
    assert len(response.content) < 16_384, f"a {len(response.content)} byte answer"
    answer = response.json()
    assert answer["error"]["code"] in ("validation_error", "too_many_images")
    assert len(answer.get("details", [])) <= MAX_LISTED


def test_validation_errors_list_a_capped_number_and_their_count(api_client, plain_key):
    body = {"images": [0] * 50}
    response = api_client.post("/v1/subjects/fifty/enrollments", json=body, headers=auth(plain_key))
    assert response.status_code == 422
    answer = response.json()
    assert answer["error"]["code"] == "validation_error"
    assert len(answer["details"]) == MAX_LISTED
    assert answer["error_count"] == 50


def test_postgres_down_is_503_database_unavailable(services, plain_key):
    """The key lookup (and every route's reads) with Postgres unreachable: 503 with Retry-After."""
    from fastapi.testclient import TestClient

    from shared import stack
    from shared.settings import get_settings

    closed = f"postgresql+psycopg://biofleet:x@127.0.0.1:{stack.free_port()}/biofleet"
    settings = get_settings().model_copy(update={"database_url": closed})
    with TestClient(create_app(settings)) as client:
        responses = [
            client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(plain_key)),
            client.get("/v1/subjects/someone", headers=auth(plain_key)),
            client.delete("/v1/subjects/someone", headers=auth(plain_key)),
            client.post("/v1/identifications", json={"image": b64(b"x" * 10)}, headers=auth(plain_key)),
        ]
    for response in responses:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "database_unavailable"
        assert int(response.headers["Retry-After"]) > 0
