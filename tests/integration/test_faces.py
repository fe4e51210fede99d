"""Which face: the face options through the API (checked at submit), a group photo identified
face by face and detected whole by a real worker, and the face each result reports."""

import uuid

import pytest

from tests.group_photo import PEOPLE, group_photo, inside
from tests.integration.test_job_path import auth, b64, enroll, face, submit, verify, wait_final

pytestmark = [pytest.mark.stack, pytest.mark.faces]


@pytest.mark.parametrize(
    "path, options, code",
    [
        ("/v1/identifications", {"max_faces": 0}, "bad_max_faces"),
        ("/v1/identifications", {"max_faces": 101}, "bad_max_faces"),
        ("/v1/verifications", {"max_faces": 2}, "bad_max_faces"),
        ("/v1/detections", {"min_face_size": -1}, "bad_min_face_size"),
        ("/v1/detections", {"min_face_size": 20_000}, "bad_min_face_size"),
        ("/v1/identifications", {"min_detector_confidence": 11}, "bad_min_detector_confidence"),
        ("/v1/identifications", {"quality_filter": "best"}, "bad_quality_filter"),
        ("/v1/subjects/s1/enrollments", {"multiple_faces": "all"}, "bad_multiple_faces"),
    ],
)
def test_face_options_out_of_bounds_are_refused_at_submit(api_client, make_key, faces_dir, path, options, code):
    key = make_key(f"options-{uuid.uuid4().hex[:8]}")
    image = b64(face(faces_dir, PEOPLE[0], 1))
    body = {"images": [image]} if path.endswith("enrollments") else {"image": image}
    if path == "/v1/verifications":
        body["subject_id"] = "s1"
    response = api_client.post(path, json={**body, **options}, headers=auth(key))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_the_openapi_schema_carries_the_face_fields(api_client):
    spec = api_client.get("/openapi.json").json()
    assert spec["paths"]["/v1/detections"]["post"]["operationId"] == "create_detection"
    schemas = spec["components"]["schemas"]
    assert {"box", "landmarks", "detector_confidence", "faces_detected", "quality"} <= set(
        schemas["Face"]["properties"]
    )
    assert "faces" in schemas["IdentifyResult"]["properties"] and "faces" in schemas["DetectResult"]["properties"]
    assert schemas["DetectJob"]["properties"]["result"]["anyOf"][0]["$ref"].endswith("/DetectResult")
    body = spec["paths"]["/v1/identifications"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"max_faces", "min_face_size", "min_detector_confidence", "quality_filter", "multiple_faces"} <= set(
        body["properties"]
    )


def test_a_group_photo_is_identified_face_by_face_and_detected_whole(api_client, make_key, start_worker, faces_dir):
    key = make_key(f"group-{uuid.uuid4().hex[:8]}")
    start_worker()
    enrolled = [enroll(api_client, key, person, [face(faces_dir, person, n) for n in (2, 3)]) for person in PEOPLE]
    jobs = wait_final(api_client, key, enrolled)
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    image = jobs[enrolled[0]]["result"]["images"][0]
    assert image["status"] == "enrolled" and image["face"]["box"] and image["face"]["quality"]["face_size_px"] > 50

    photo, regions = group_photo(faces_dir, 1)
    found = submit(api_client, key, "/v1/identifications", {"image": b64(photo), "top_k": 3, "max_faces": 3})
    detected = submit(api_client, key, "/v1/detections", {"image": b64(photo)})
    one = submit(api_client, key, "/v1/identifications", {"image": b64(photo), "top_k": 3})
    checked = verify(api_client, key, PEOPLE[0], face(faces_dir, PEOPLE[0], 4), quality_filter="low")
    done = wait_final(api_client, key, [found, detected, one, checked])
    assert all(job["status"] == "succeeded" for job in done.values()), done

    faces = done[found]["result"]["faces"]
    assert len(faces) == 3
    for got, (person, region) in zip(faces, regions, strict=True):  # largest first
        assert inside(got["box"], region), (person, got["box"])
        assert got["candidates"][0]["subject_id"] == person, (person, got["candidates"])
        assert len(got["landmarks"]) == 5 and got["faces_detected"] == 3
    assert done[found]["result"]["candidates"] == faces[0]["candidates"]

    detect = done[detected]["result"]
    assert detect["faces_detected"] == 3 and len(detect["faces"]) == 3
    for got, (_, region) in zip(detect["faces"], regions, strict=True):
        assert inside(got["box"], region)
        assert got["detector_confidence"] > 0 and 0 <= got["quality"]["sharpness"] <= 1
        assert "descriptor" not in got

    single = done[one]["result"]
    assert len(single["faces"]) == 1 and single["candidates"][0]["subject_id"] == PEOPLE[0]
    assert [r["reason"] for r in single["refused"]] == ["exceeds_max_faces", "exceeds_max_faces"]

    probe = done[checked]["result"]
    assert probe["match"] is True and probe["face"]["detector"] == "cnn"
    assert set(probe["face"]["quality"]) >= {"sharpness", "yaw", "pitch", "roll", "brightness", "contrast"}
