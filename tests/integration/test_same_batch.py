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
