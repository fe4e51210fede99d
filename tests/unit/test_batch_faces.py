"""run_batch's face rules against the in-memory unit of work: read-your-writes inside a batch,
and identify results per face."""

from tests.unit.test_run_batch import FakeUnitOfWork, blobs, make_runtime  # noqa: F401 (blobs: fixture)
from worker.batch import run_batch


def test_a_verify_after_an_enrollment_in_the_same_batch_sees_its_templates(blobs):  # noqa: F811
    uow = FakeUnitOfWork()
    runtime, _ = make_runtime(blobs)
    enroll = uow.queue(blobs, "enroll", [b"face:ann", b"face:ann"], subject="ann")
    tenant = uow.job(enroll)["tenant_id"]
    same = uow.queue(blobs, "verify", [b"face:ann"], subject="ann", tenant=tenant)
    other = uow.queue(blobs, "verify", [b"face:bob"], subject="ann", tenant=tenant)
    found = uow.queue(blobs, "identify", [b"face:ann"], tenant=tenant, top_k=3)

    run_batch([enroll, same, other, found], runtime, uow)

    assert uow.job(same)["status"] == "succeeded", uow.job(same)
    assert uow.job(same)["result"]["match"] is True
    assert uow.job(other)["result"]["match"] is False
    assert uow.job(found)["result"]["candidates"][0]["subject_id"] == "ann"


def test_a_verify_submitted_before_the_enrollment_does_not_see_it(blobs):  # noqa: F811
    uow = FakeUnitOfWork()
    runtime, _ = make_runtime(blobs)
    early = uow.queue(blobs, "verify", [b"face:ann"], subject="ann")
    tenant = uow.job(early)["tenant_id"]
    enroll = uow.queue(blobs, "enroll", [b"face:ann"], subject="ann", tenant=tenant)

    run_batch([enroll, early], runtime, uow)

    assert uow.job(early)["error_code"] == "subject_not_found"
    assert uow.job(enroll)["status"] == "succeeded"
