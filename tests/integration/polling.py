"""Waiting for jobs through the API, bounded (a bound on waiting, not a timing assertion)."""

import time

DEADLINE_S = 300.0


def wait_final(client, key: str, job_ids: list[str]) -> dict[str, dict]:
    """Poll GET /v1/jobs/{id} until every job is succeeded or failed; {job_id: job JSON}."""
    deadline = time.monotonic() + DEADLINE_S
    done = {}
    while len(done) < len(job_ids):
        for job_id in job_ids:
            if job_id not in done:
                job = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
                if job["status"] in ("succeeded", "failed"):
                    done[job_id] = job
        assert time.monotonic() < deadline, f"{len(job_ids) - len(done)} jobs not final"
        time.sleep(0.3)
    return done
