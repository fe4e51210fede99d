"""Request and response examples shown in the OpenAPI document (/docs)."""

from typing import Any

_IMAGE = "/9j/4AAQSkZJRgABAQAAAQABAAD..."  # base64 of a JPEG, shortened
_TIMES = {
    "submitted_at": "2026-01-05T10:00:00.120000+00:00",
    "started_at": "2026-01-05T10:00:00.310000+00:00",
    "finished_at": "2026-01-05T10:00:00.590000+00:00",
}
_JOB = {"status": "succeeded", "error": None, "model_version": "dlib-resnet-v1", "attempts": 1, **_TIMES}
_JOB_ID = "0b6f4c1e-8a52-4d8e-9f3a-5d1c2b7e9a40"
_BATCH_ID = "2f1a9c3e-77b0-4c55-8e21-0a6d3f5b9c12"

ENROLLMENT: dict[str, Any] = {"images": [_IMAGE, _IMAGE], "callback_url": "https://example.com/hooks/biofleet"}
VERIFICATION: dict[str, Any] = {"subject_id": "alice", "image": _IMAGE}
IDENTIFICATION: dict[str, Any] = {"image": _IMAGE, "top_k": 3}
DETECTION: dict[str, Any] = {"image": _IMAGE, "max_faces": 10, "min_face_size": 40}

BATCH: dict[str, Any] = {
    "jobs": [
        {"kind": "enroll", "ref": "enrol-alice", "subject_id": "alice", "images": [_IMAGE]},
        {"kind": "verify", "ref": "door-7", "subject_id": "alice", "image": {"uri": "s3://my-bucket/probes/p1.jpg"}},
        {"kind": "identify", "image": _IMAGE, "top_k": 3},
    ]
}

QUEUED_JOB: dict[str, Any] = {
    "id": _JOB_ID,
    "kind": "verify",
    "status": "queued",
    "subject_id": "alice",
    "error": None,
    "result": None,
    "model_version": None,
    "batch_id": None,
    "attempts": 0,
    "submitted_at": _TIMES["submitted_at"],
    "started_at": None,
    "finished_at": None,
}
ENROLL_JOB: dict[str, Any] = {
    "id": _JOB_ID,
    "kind": "enroll",
    "subject_id": "alice",
    "result": {
        "subject_id": "alice",
        "templates_created": 1,
        "model_version": "dlib-resnet-v1",
        "images": [
            {"index": 0, "status": "enrolled", "error": None},
            {"index": 1, "status": "failed", "error": {"code": "no_face", "message": "no face found"}},
        ],
    },
    "batch_id": _BATCH_ID,
    **_JOB,
}
VERIFY_JOB: dict[str, Any] = {
    "id": _JOB_ID,
    "kind": "verify",
    "subject_id": "alice",
    "result": {
        "distance": 0.41,
        "threshold": 0.6,
        "match": True,
        "model_version": "dlib-resnet-v1",
        "templates_compared": 2,
    },
    "batch_id": _BATCH_ID,
    **_JOB,
}
IDENTIFY_JOB: dict[str, Any] = {
    "id": _JOB_ID,
    "kind": "identify",
    "subject_id": None,
    "result": {
        "candidates": [{"subject_id": "alice", "distance": 0.38}, {"subject_id": "bob", "distance": 0.71}],
        "threshold": 0.6,
        "model_version": "dlib-resnet-v1",
    },
    "batch_id": _BATCH_ID,
    **_JOB,
}
FAILED_JOB: dict[str, Any] = {
    **VERIFY_JOB,
    "status": "failed",
    "result": None,
    "error": {"code": "no_face", "message": "no face found in the image"},
}
SUBJECT: dict[str, Any] = {
    "subject_id": "alice",
    "created_at": "2026-01-05T10:00:00.590000+00:00",
    "templates": [{"model_version": "dlib-resnet-v1", "count": 2}],
}
JOB_EXAMPLES: dict[str, Any] = {
    "enroll": {"summary": "An enroll job, succeeded", "value": ENROLL_JOB},
    "verify": {"summary": "A verify job, succeeded", "value": VERIFY_JOB},
    "identify": {"summary": "An identify job, succeeded", "value": IDENTIFY_JOB},
    "failed": {"summary": "A failed job", "value": FAILED_JOB},
    "queued": {"summary": "A job still queued", "value": QUEUED_JOB},
}


def json_examples(examples: dict[str, Any]) -> dict[str, Any]:
    """The `content` of an OpenAPI response with these named examples."""
    return {"application/json": {"examples": examples}}
