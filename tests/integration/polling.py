"""Waiting for jobs through the API with the Python client, bounded (a bound on waiting, not a
timing assertion)."""

from biofleet_client import Client

DEADLINE_S = 300.0


def wait_final(client, key: str, job_ids: list[str]) -> dict[str, dict]:
    """Poll GET /v1/jobs/{id} until every job is succeeded or failed; {job_id: job JSON}.
    client: any httpx.Client on the API (a TestClient too)."""
    jobs = Client(api_key=key, http=client).wait_all(job_ids, timeout=DEADLINE_S)
    return {job_id: job.model_dump(mode="json") for job_id, job in jobs.items()}
