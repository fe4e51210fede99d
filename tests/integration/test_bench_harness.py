"""bench/harness.py's submits through biofleet_client on a real BenchStack (Valkey, Postgres, the
API; no worker): every body gets one Sent in the order given, with its job id and 202 when
accepted, the HTTP status when refused, 0 when the API cannot be reached; wait_jobs reads the
jobs' server-side times."""

import pytest

from biofleet_client import Client

IMAGE = b"\xff\xd8 not decoded before a worker reads it"


@pytest.fixture(scope="module")
def bench_stack():
    from bench.harness import BenchStack

    with BenchStack() as stack:
        stack.start_api()
        yield stack


def test_every_kind_is_submitted_in_order_with_its_times(bench_stack):
    from bench.harness import submit_all, wait_jobs

    stack = bench_stack
    verify = [{"subject_id": f"person-{i}", "image": IMAGE} for i in range(7)]
    sent = submit_all(stack.api_url, stack.key, "verify", verify, concurrency=3)
    assert [s.status for s in sent] == [202] * 7
    assert all(s.job_id and s.sent <= s.answered for s in sent)
    with Client(stack.api_url, api_key=stack.key) as client:
        assert [client.get_job(s.job_id).subject_id for s in sent] == [b["subject_id"] for b in verify]

    others = {
        "enroll": {"subject_id": "enrolled", "images": [IMAGE, IMAGE]},
        "identify": {"image": IMAGE, "top_k": 3},
        "detect": {"image": IMAGE},
    }
    kinds = {kind: submit_all(stack.api_url, stack.key, kind, [body], 1)[0] for kind, body in others.items()}
    assert all(s.status == 202 and s.job_id for s in kinds.values())
    with Client(stack.api_url, api_key=stack.key) as client:
        assert {kind: client.get_job(s.job_id).kind for kind, s in kinds.items()} == {k: k for k in others}

    jobs = wait_jobs(stack, [s.job_id for s in sent], timeout=0.3, poll_s=0.1)
    assert set(jobs) == {s.job_id for s in sent}
    for s in sent:  # no worker runs: queued, its submitted_at within the request
        job = jobs[s.job_id]
        assert job.status == "queued" and job.finished is None
        assert s.sent - 0.05 <= job.submitted <= s.answered + 0.05


def test_refused_and_unreachable_requests_count_with_their_status(bench_stack):
    from bench.harness import submit_all
    from shared.stack import free_port

    stack = bench_stack
    body = {"subject_id": "person-1", "image": IMAGE}
    bad_key = submit_all(stack.api_url, "bf_not-a-key", "verify", [body] * 3, concurrency=2)
    assert [(s.status, s.job_id) for s in bad_key] == [(401, None)] * 3

    bodies = [body, {"subject_id": "not a valid id!", "image": IMAGE}, body]
    mixed = submit_all(stack.api_url, stack.key, "verify", bodies, concurrency=2)
    assert [s.status for s in mixed] == [202, 422, 202]
    assert mixed[0].job_id and mixed[1].job_id is None and mixed[2].job_id

    closed = f"http://127.0.0.1:{free_port()}"
    unreachable = submit_all(closed, stack.key, "identify", [{"image": IMAGE}] * 2, concurrency=2)
    assert [(s.status, s.job_id) for s in unreachable] == [(0, None)] * 2
    assert all(s.sent <= s.answered for s in unreachable)
