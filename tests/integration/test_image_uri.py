"""Images by reference through the real stack: the API records {"uri": ...} (refused with 422
uri_not_allowed outside the tenant's prefixes), a real worker reads the object from S3 (moto's
server, the worker pointed at it with AWS_ENDPOINT_URL_S3) or from a file, with the byte and pixel
limits of uploads; a missing object fails the job with image_not_found; the objects are never
deleted."""

import base64
import json
import os
import struct
import subprocess
import sys
import zlib

import pytest
from sqlalchemy import func, select

from shared import stack
from tests.integration.polling import wait_final

pytestmark = [pytest.mark.stack, pytest.mark.faces]

BUCKET = "gallery"
PERSON_A = "Tony_Blair"
PERSON_B = "Colin_Powell"
MAX_IMAGE_BYTES = 300_000  # every LFW photo is far smaller


def face(faces_dir, person: str, number: int) -> bytes:
    return (faces_dir / "lfw_colour" / person / f"{person}_{number:04d}.jpg").read_bytes()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def uri(value: str) -> dict:
    return {"uri": value}


@pytest.fixture(scope="module")
def moto_s3():
    """moto's S3 in server mode on a free port: (endpoint URL, boto3 client), buckets created."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = stack.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    for bucket in (BUCKET, BUCKET + "-evil"):
        client.create_bucket(Bucket=bucket)
    yield endpoint, client
    server.stop()


def set_prefixes(services, tenant: str, prefixes: list[str]) -> None:
    from shared.db.session import session_scope
    from shared.image_refs import set_tenant_prefixes

    with session_scope(services.database_url) as session:
        assert set_tenant_prefixes(session, tenant, prefixes) is not None


def job_count(services, tenant: str) -> int:
    from shared.db.models import Job, Tenant
    from shared.db.session import session_scope

    with session_scope(services.database_url) as session:
        return session.execute(
            select(func.count()).select_from(Job).join(Tenant, Tenant.id == Job.tenant_id).where(Tenant.name == tenant)
        ).scalar_one()


def test_uris_outside_the_tenants_prefixes_are_refused_at_submit(api_client, make_key, services, tmp_path):
    key = make_key("uri-refused")
    other = make_key("uri-refused-other")
    nothing = make_key("uri-refused-none")  # a tenant with no prefixes at all
    set_prefixes(services, "uri-refused", [f"s3://{BUCKET}/faces/", (tmp_path / "images").as_uri()])
    set_prefixes(services, "uri-refused-other", [f"s3://{BUCKET}/other/"])
    refused = {
        "outside the prefix": (key, f"s3://{BUCKET}/private/a.jpg"),
        "a bucket whose name starts the same": (key, f"s3://{BUCKET}-evil/faces/a.jpg"),
        "a folder whose name starts the same": (key, f"s3://{BUCKET}/faces-evil/a.jpg"),
        "dot-dot": (key, f"s3://{BUCKET}/faces/../private/a.jpg"),
        "encoded dot-dot": (key, f"s3://{BUCKET}/faces/%2e%2e/private/a.jpg"),
        "file dot-dot": (key, (tmp_path / "images").as_uri() + "/../secret.jpg"),
        "another scheme": (key, "https://example.com/a.jpg"),
        "a file outside": (key, (tmp_path / "other.jpg").as_uri()),
        "the first tenant's prefix": (other, f"s3://{BUCKET}/faces/a.jpg"),
        "no prefixes": (nothing, f"s3://{BUCKET}/faces/a.jpg"),
    }
    for name, (caller, value) in refused.items():
        for path, body in (
            ("/v1/verifications", {"subject_id": "someone", "image": uri(value)}),
            ("/v1/identifications", {"image": uri(value)}),
            ("/v1/subjects/someone/enrollments", {"images": [uri(value)]}),
        ):
            response = api_client.post(path, json=body, headers=auth(caller))
            assert response.status_code == 422, (name, path, response.text)
            assert response.json()["error"]["code"] == "uri_not_allowed", (name, path, response.text)
            assert response.json()["error"]["message"]
    # A reference among uploaded images is checked too; multipart forms take files only.
    mixed = {"images": [base64.b64encode(b"x").decode(), uri(f"s3://{BUCKET}/private/a.jpg")]}
    response = api_client.post("/v1/subjects/someone/enrollments", json=mixed, headers=auth(key))
    assert response.json()["error"]["code"] == "uri_not_allowed"
    form = {"image": f'{{"uri": "s3://{BUCKET}/faces/a.jpg"}}', "subject_id": "someone"}
    parts = {name: (None, value) for name, value in form.items()}  # multipart, no file
    response = api_client.post("/v1/verifications", files=parts, headers=auth(key))
    assert response.status_code == 422, response.text
    assert [job_count(services, t) for t in ("uri-refused", "uri-refused-other", "uri-refused-none")] == [0, 0, 0]


def test_enroll_and_verify_by_reference_through_a_worker(
    api_client, make_key, services, start_worker, worker_env, faces_dir, moto_s3, tmp_path, monkeypatch
):
    endpoint, s3 = moto_s3
    folder = tmp_path / "images"
    folder.mkdir()
    key = make_key("uri-stack")
    set_prefixes(services, "uri-stack", [f"s3://{BUCKET}/faces/", folder.as_uri()])
    for n in (1, 2, 3, 4):
        s3.put_object(Bucket=BUCKET, Key=f"faces/a/{n}.jpg", Body=face(faces_dir, PERSON_A, n))
    s3.put_object(Bucket=BUCKET, Key="faces/big.jpg", Body=face(faces_dir, PERSON_A, 5) + b"\0" * MAX_IMAGE_BYTES)
    s3.put_object(Bucket=BUCKET, Key="faces/bomb.png", Body=png_declaring(30000, 30000))
    for n in (1, 2, 3):
        (folder / f"b{n}.jpg").write_bytes(face(faces_dir, PERSON_B, n))
    for name, value in {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setitem(worker_env, name, value)
    start_worker(batch_size=8, max_image_bytes=MAX_IMAGE_BYTES)

    def post(path: str, body: dict) -> str:
        response = api_client.post(path, json=body, headers=auth(key))
        assert response.status_code == 202, response.text
        return response.json()["id"]

    s3_images = [uri(f"s3://{BUCKET}/faces/a/{n}.jpg") for n in (1, 2, 3)]
    file_images = [uri((folder / f"b{n}.jpg").as_uri()) for n in (1, 2)]
    enrolled = wait_final(
        api_client,
        key,
        [
            post("/v1/subjects/person-a/enrollments", {"images": s3_images}),
            post("/v1/subjects/person-b/enrollments", {"images": file_images}),
        ],
    )
    assert [job["status"] for job in enrolled.values()] == ["succeeded", "succeeded"], enrolled
    assert sorted(job["result"]["templates_created"] for job in enrolled.values()) == [2, 3]

    probes = {
        "s3 same": post("/v1/verifications", {"subject_id": "person-a", "image": uri(f"s3://{BUCKET}/faces/a/4.jpg")}),
        "file same": post("/v1/verifications", {"subject_id": "person-b", "image": uri((folder / "b3.jpg").as_uri())}),
        "s3 other": post("/v1/verifications", {"subject_id": "person-b", "image": uri(f"s3://{BUCKET}/faces/a/4.jpg")}),
        "identify": post("/v1/identifications", {"image": uri(f"s3://{BUCKET}/faces/a/4.jpg"), "top_k": 1}),
        "missing s3": post(
            "/v1/verifications", {"subject_id": "person-a", "image": uri(f"s3://{BUCKET}/faces/none.jpg")}
        ),
        "missing file": post("/v1/identifications", {"image": uri((folder / "none.jpg").as_uri())}),
        "too many bytes": post(
            "/v1/verifications", {"subject_id": "person-a", "image": uri(f"s3://{BUCKET}/faces/big.jpg")}
        ),
        "too many pixels": post("/v1/identifications", {"image": uri(f"s3://{BUCKET}/faces/bomb.png")}),
    }
    jobs = wait_final(api_client, key, list(probes.values()))
    got = {name: jobs[job_id] for name, job_id in probes.items()}
    assert got["s3 same"]["status"] == "succeeded" and got["s3 same"]["result"]["match"] is True, got["s3 same"]
    assert got["file same"]["status"] == "succeeded" and got["file same"]["result"]["match"] is True
    assert got["s3 other"]["status"] == "succeeded" and got["s3 other"]["result"]["match"] is False
    assert [c["subject_id"] for c in got["identify"]["result"]["candidates"]] == ["person-a"]
    for name, code in {
        "missing s3": "image_not_found",
        "missing file": "image_not_found",
        "too many bytes": "image_too_large",
        "too many pixels": "image_too_large",
    }.items():
        assert got[name]["status"] == "failed" and got[name]["error"]["code"] == code, (name, got[name])
        assert got[name]["error"]["message"]
    # A replay with the same Idempotency-Key and uri gives the same job; another uri conflicts.
    body = {"subject_id": "person-a", "image": uri(f"s3://{BUCKET}/faces/a/4.jpg")}
    first = api_client.post("/v1/verifications", json=body, headers={**auth(key), "Idempotency-Key": "uri-1"})
    again = api_client.post("/v1/verifications", json=body, headers={**auth(key), "Idempotency-Key": "uri-1"})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    body["image"] = uri(f"s3://{BUCKET}/faces/a/3.jpg")
    conflict = api_client.post("/v1/verifications", json=body, headers={**auth(key), "Idempotency-Key": "uri-1"})
    assert conflict.status_code == 409, conflict.text
    wait_final(api_client, key, [first.json()["id"]])

    # The customer's objects outlive the jobs: not deleted after the probes, nor by retention, nor
    # by erasing the subject; results hold no image data.
    from shared.blob import open_blob_store
    from shared.retention import run_retention
    from shared.settings import Settings

    run_retention(services.database_url, open_blob_store(services.blob_url), Settings(enrollment_retention_days=0))
    assert api_client.delete("/v1/subjects/person-a", headers=auth(key)).status_code == 204
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="faces/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "faces/a/1.jpg",
        "faces/a/2.jpg",
        "faces/a/3.jpg",
        "faces/a/4.jpg",
        "faces/big.jpg",
        "faces/bomb.png",
    ]
    assert sorted(p.name for p in folder.iterdir()) == ["b1.jpg", "b2.jpg", "b3.jpg"]
    for job in [*enrolled.values(), *got.values()]:
        assert "uri" not in str(job["result"]) and BUCKET not in str(job)
    from shared.db.models import Job, Tenant
    from shared.db.session import session_scope

    with session_scope(services.database_url) as session:
        kept = session.execute(
            select(Job.blob_keys).join(Tenant, Tenant.id == Job.tenant_id).where(Tenant.name == "uri-stack")
        ).scalars()
        assert all(keys == [] for keys in kept)  # retention and the erasure forgot the references


def test_enroll_dir_sends_s3_images_by_reference(
    make_key, services, start_worker, worker_env, faces_dir, moto_s3, tmp_path, monkeypatch
):
    endpoint, s3 = moto_s3
    for name, value in {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setitem(worker_env, name, value)
    for person in (PERSON_A, PERSON_B):
        for n in (1, 2):
            s3.put_object(Bucket=BUCKET, Key=f"dir/{person}/{n}.jpg", Body=face(faces_dir, person, n))
    cli = os.path.join(os.path.dirname(sys.executable), "biofleet")
    created = subprocess.run(
        [cli, "keys", "create", "--tenant", "uri-dir", "--image-uri-prefix", f"s3://{BUCKET}/dir"],
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    shown = subprocess.run(
        [cli, "keys", "image-prefixes", "--tenant", "uri-dir"], env=worker_env, capture_output=True, text=True
    )
    assert shown.stdout.split() == [f"s3://{BUCKET}/dir/"], shown.stderr
    start_worker(batch_size=8)
    port = stack.free_port()
    api = stack.start_process(
        [sys.executable, "-m", "api"], dict(worker_env, BIOFLEET_API_PORT=str(port)), tmp_path / "api.log"
    )
    try:
        url = f"http://127.0.0.1:{port}"
        stack.wait_http(url + "/healthz", 60)
        state = tmp_path / "state.jsonl"
        args = [cli, "enroll-dir", f"s3://{BUCKET}/dir/", "--api", url, "--key", key, "--state", str(state)]
        run = subprocess.run(args, env=worker_env, capture_output=True, text=True, timeout=600)
    finally:
        stack.stop_process(api, timeout=20)
    assert run.returncode == 0, run.stderr[-2000:]
    latest = {entry["subject"]: entry for entry in map(json.loads, state.read_text().splitlines())}
    assert {s: (e["status"], e.get("templates")) for s, e in latest.items()} == {
        PERSON_A: ("succeeded", 2),
        PERSON_B: ("succeeded", 2),
    }
    from shared.db.models import Job, Tenant
    from shared.db.session import session_scope

    with session_scope(services.database_url) as session:
        keys = session.execute(
            select(Job.blob_keys).join(Tenant, Tenant.id == Job.tenant_id).where(Tenant.name == "uri-dir")
        ).scalars()
        assert sorted(k for job_keys in keys for k in job_keys) == sorted(
            f"s3://{BUCKET}/dir/{p}/{n}.jpg" for p in (PERSON_A, PERSON_B) for n in (1, 2)
        )  # references recorded, no bytes uploaded
