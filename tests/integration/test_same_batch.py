"""Read-your-writes inside one batch: an enrollment applied before the comparisons after it."""

import pytest

from tests.integration.test_job_path import (
    PERSON_A,
    PERSON_B,
    Recorder,
    face,
    job_row,
    make_runtime,
    pipeline,  # noqa: F401 (fixture)
    queue_job,
    tenant_id,
)

pytestmark = [pytest.mark.stack, pytest.mark.faces]


def test_a_verify_after_its_enrollment_in_the_same_batch_matches(services, make_key, pipeline, faces_dir):  # noqa: F811
    from worker.batch import run_batch

    runtime = make_runtime(services, pipeline, Recorder())
    tenant = tenant_id(services, make_key)
    enrolled, enroll_delivery = queue_job(
        services, tenant, "enroll", [face(faces_dir, PERSON_A, n) for n in (1, 2)], subject="ryw"
    )
    same, same_delivery = queue_job(services, tenant, "verify", [face(faces_dir, PERSON_A, 3)], subject="ryw")
    other, other_delivery = queue_job(services, tenant, "verify", [face(faces_dir, PERSON_B, 1)], subject="ryw")

    report = run_batch([enroll_delivery, same_delivery, other_delivery], runtime)

    assert report.finished == {enrolled: "succeeded", same: "succeeded", other: "succeeded"}, [
        (job_row(services, j).error_code, job_row(services, j).error_message) for j in (same, other)
    ]
    assert job_row(services, same).result["match"] is True
    assert job_row(services, other).result["match"] is False
    assert {job_row(services, j).batch_id for j in (enrolled, same, other)} == {report.batch_id}


def test_through_the_api_a_verify_right_after_its_enrollment_matches(api_client, make_key, start_worker, faces_dir):
    """Both submitted before a worker starts, so they come to it in one batch."""
    import uuid

    from tests.integration.test_job_path import enroll, verify, wait_final

    key = make_key(f"ryw-{uuid.uuid4().hex[:8]}")
    enrolled = enroll(api_client, key, "ryw-api", [face(faces_dir, PERSON_A, n) for n in (1, 2)])
    checked = verify(api_client, key, "ryw-api", face(faces_dir, PERSON_A, 3))
    start_worker(batch_size=8, flush_interval_ms=2000)
    jobs = wait_final(api_client, key, [enrolled, checked])

    assert jobs[enrolled]["batch_id"] == jobs[checked]["batch_id"]
    assert jobs[checked]["status"] == "succeeded", jobs[checked]["error"]
    assert jobs[checked]["result"]["match"] is True
