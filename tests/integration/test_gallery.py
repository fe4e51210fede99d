"""Operating the gallery against real services: enroll-dir resumes without enrolling twice,
reenroll moves every subject to a new version while verifications keep succeeding, activation
refuses incomplete coverage, and calibrate on the LFW View 1 pairs."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

pytestmark = [pytest.mark.stack, pytest.mark.faces]

JITTER = "dlib-resnet-v1-jitter4"
BASE = "dlib-resnet-v1"
DEADLINE_S = 300.0  # a bound on waiting, not a timing assertion
ENROLL_PEOPLE = ["Ariel_Sharon", "Colin_Powell", "Hugo_Chavez", "Tony_Blair"]
MOVE_PEOPLE = ["Gerhard_Schroeder", "Jacques_Chirac", "Vladimir_Putin"]
LOST_PEOPLE = {"expired": "Donald_Rumsfeld", "erased": "George_W_Bush"}  # images gone, two ways


def _cli() -> str:
    return os.path.join(os.path.dirname(sys.executable), "biofleet")


def biofleet(env: dict, *args: str, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess:
    """Run the console command in a subprocess with env."""
    return subprocess.run([_cli(), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def api_server(services, worker_env, tmp_path_factory):
    """`python -m api` on a free port; yields its base URL."""
    from shared import stack

    port = stack.free_port()
    env = dict(worker_env, BIOFLEET_API_PORT=str(port))
    log_path = tmp_path_factory.mktemp("api") / "api.log"
    proc = stack.start_process([sys.executable, "-m", "api"], env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        stack.wait_http(url + "/healthz", 60)
        yield url
    finally:
        stack.stop_process(proc, timeout=20)


def db(services):
    from shared.db.session import session_scope

    return session_scope(services.database_url)


def tenant_of(services, key: str) -> uuid.UUID:
    from shared.keys import tenant_for_key

    with db(services) as session:
        return tenant_for_key(session, key)


def templates_by_subject(services, tenant: uuid.UUID, version: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from shared.db.models import Subject, Template

    with db(services) as session:
        rows = session.execute(
            select(Subject.external_id, func.count())
            .join(Template, Template.subject_id == Subject.id)
            .where(Subject.tenant_id == tenant, Template.model_version == version)
            .group_by(Subject.external_id)
        ).all()
    return dict(rows)


class EventLog(threading.Thread):
    """Celery task events from the broker, as Flower receives them, until stopped."""

    def __init__(self, redis_url: str):
        super().__init__(daemon=True)
        self.redis_url = redis_url
        self.events: list[dict] = []
        self.ready = threading.Event()

    def run(self) -> None:
        from celery import Celery

        app = Celery(broker=self.redis_url)
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": self.events.append})
            subscribed = receiver.on_consume_ready

            def on_ready(*args, **kwargs):
                subscribed(*args, **kwargs)
                self.ready.set()

            receiver.on_consume_ready = on_ready
            self.receiver = receiver
            receiver.capture(limit=None, timeout=None, wakeup=False)  # until should_stop

    def finish(self) -> None:
        receiver = getattr(self, "receiver", None)
        if receiver is not None:
            receiver.should_stop = True
        self.join(timeout=10)


def link_subjects(faces_dir, root, people: list[str], images: int) -> None:
    """ROOT/<person>/ with symlinks to the first images of each person (nothing copied)."""
    for person in people:
        folder = root / person
        folder.mkdir(parents=True)
        for source in sorted((faces_dir / "lfw_colour" / person).iterdir())[:images]:
            (folder / source.name).symlink_to(source)


def test_enroll_dir_resumes_after_an_interruption_without_enrolling_twice(
    faces_dir, services, start_worker, api_server, worker_env, make_key, tmp_path
):
    from sqlalchemy import func, select

    from shared.db.models import Job

    start_worker()
    key = make_key(f"gallery-dir-{uuid.uuid4().hex[:8]}")
    tenant = tenant_of(services, key)
    root = tmp_path / "gallery"
    link_subjects(faces_dir, root, ENROLL_PEOPLE, images=2)
    state = tmp_path / "state.jsonl"
    args = [_cli(), "enroll-dir", str(root), "--api", api_server, "--key", key, "--samples-per-subject", "2",
            "--concurrency", "1", "--state", str(state)]  # fmt: skip

    events = EventLog(services.redis_url)
    events.start()
    events.ready.wait(30)
    first = subprocess.Popen(args, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and first.poll() is None:
        lines = state.read_text().splitlines() if state.exists() else []
        if any(json.loads(line)["status"] == "submitted" for line in lines):
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)  # interrupted with at least one job submitted
    out, err = first.communicate(timeout=120)
    assert first.returncode in (130, 0), err[-2000:]
    interrupted_at = len(state.read_text().splitlines())

    second = subprocess.run(args, env=worker_env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "subjects enrolled" in second.stdout and "failures" in second.stdout

    with db(services) as session:
        jobs = dict(
            session.execute(
                select(Job.subject_external_id, func.count())
                .where(Job.tenant_id == tenant, Job.kind == "enroll")
                .group_by(Job.subject_external_id)
            ).all()
        )
    assert jobs == {person: 1 for person in ENROLL_PEOPLE}  # each subject enrolled by one job
    assert templates_by_subject(services, tenant, BASE) == {person: 2 for person in ENROLL_PEOPLE}
    final = {}
    for line in state.read_text().splitlines():
        entry = json.loads(line)
        final[entry["subject"]] = entry["status"]
    assert final == {person: "succeeded" for person in ENROLL_PEOPLE}
    assert interrupted_at >= 1

    # Flower's view of the batches: each job's task started and succeeded, naming its batch.
    from shared.db.models import Job as JobRow

    with db(services) as session:
        batches = dict(session.execute(select(JobRow.id, JobRow.batch_id).where(JobRow.tenant_id == tenant)).all())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        succeeded = {e["uuid"]: json.loads(e["result"]) for e in list(events.events) if e["type"] == "task-succeeded"}
        if all(str(job_id) in succeeded for job_id in batches):
            break
        time.sleep(0.2)
    events.finish()
    started = {e["uuid"] for e in events.events if e["type"] == "task-started"}
    for job_id, batch_id in batches.items():
        assert str(job_id) in started
        assert succeeded[str(job_id)]["batch_id"] == batch_id and succeeded[str(job_id)]["status"] == "succeeded"
    finished = [e for e in events.events if e["type"] == "batch-finished"]
    assert {str(j) for j in batches} <= {j for e in finished for j in e["job_ids"]}

    third = subprocess.run(args, env=worker_env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert third.returncode == 0 and "enrolled earlier (skipped)" in third.stdout
    assert templates_by_subject(services, tenant, BASE) == {person: 2 for person in ENROLL_PEOPLE}


class Verifier(threading.Thread):
    """Verifies the subjects in a loop through the HTTP API until stopped; keeps every result."""

    def __init__(self, api_url: str, key: str, probes: dict[str, bytes]):
        super().__init__(daemon=True)
        import httpx

        self.http = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self.probes = probes
        self.stop = threading.Event()
        self.results: list[dict] = []

    def verify_once(self, subject: str, image: bytes) -> dict:
        import base64

        body = {"subject_id": subject, "image": base64.b64encode(image).decode()}
        response = self.http.post("/v1/verifications", json=body)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed"):
                return job
            time.sleep(0.1)
        return {"status": "timeout", "id": job_id}

    def run(self) -> None:
        while not self.stop.is_set():
            for subject, image in self.probes.items():
                self.results.append(self.verify_once(subject, image))


def test_reenroll_moves_every_subject_while_verifications_keep_succeeding(
    faces_dir, services, start_worker, api_server, worker_env, make_key
):
    import base64

    import httpx

    start_worker()
    key = make_key(f"gallery-move-{uuid.uuid4().hex[:8]}")
    tenant = tenant_of(services, key)
    http = httpx.Client(base_url=api_server, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    pictures = {p: sorted((faces_dir / "lfw_colour" / p).iterdir()) for p in MOVE_PEOPLE}
    ids = []
    lost = {subject: sorted((faces_dir / "lfw_colour" / person).iterdir()) for subject, person in LOST_PEOPLE.items()}
    for person, files in {**pictures, **lost}.items():
        body = {"images": [base64.b64encode(f.read_bytes()).decode() for f in files[:2]]}
        response = http.post(f"/v1/subjects/{person}/enrollments", json=body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    verifier = Verifier(api_server, key, {p: files[5].read_bytes() for p, files in pictures.items()})
    for job_id in ids:
        assert _wait(http, job_id)["status"] == "succeeded"
    lose_images(services, tenant)

    registered = biofleet(worker_env, "models", "register", JITTER)
    assert registered.returncode == 0, registered.stderr
    try:
        refused = biofleet(worker_env, "models", "activate", JITTER)
        assert refused.returncode == 1 and "reenroll" in refused.stderr  # coverage is incomplete

        verifier.start()
        moved = biofleet(worker_env, "reenroll", "--to-model", JITTER, "--json")
        verifier.stop.set()
        verifier.join(timeout=DEADLINE_S)
        # The subjects whose images are gone are reported, and coverage stays incomplete.
        assert moved.returncode == 1, moved.stdout + moved.stderr[-2000:]
        summary = json.loads(moved.stdout)
        assert [(f["subject_id"], f["code"]) for f in summary["failed_jobs"]] == [("expired", "internal_error")]
        assert [e["subject_id"] for e in summary["no_retained_images"]] == ["erased"]
        assert summary["coverage"] < 1.0
        assert templates_by_subject(services, tenant, JITTER) == {p: 2 for p in MOVE_PEOPLE}
        refused_again = biofleet(worker_env, "models", "activate", JITTER)
        assert refused_again.returncode == 1 and "covers" in refused_again.stderr

        for subject in LOST_PEOPLE:  # what an operator does with them: erase (or re-enroll from new images)
            assert http.delete(f"/v1/subjects/{subject}").status_code == 204
        rerun = biofleet(worker_env, "reenroll", "--to-model", JITTER, "--json")
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-2000:]
        assert json.loads(rerun.stdout)["coverage"] == 1.0

        during = verifier.results
        assert during, "no verification ran during the move"
        assert all(r["status"] == "succeeded" and r["result"]["match"] for r in during), during
        assert {r["result"]["model_version"] for r in during} == {BASE}

        listed = json.loads(biofleet(worker_env, "models", "list", "--json").stdout)
        assert {r["name"]: r["coverage"] for r in listed}[JITTER] == 1.0
        activated = biofleet(worker_env, "models", "activate", JITTER)
        assert activated.returncode == 0, activated.stderr
        after = verifier.verify_once(MOVE_PEOPLE[0], pictures[MOVE_PEOPLE[0]][5].read_bytes())
        assert after["status"] == "succeeded" and after["result"]["match"]
        assert after["result"]["model_version"] == JITTER
        other = verifier.verify_once(MOVE_PEOPLE[0], pictures[MOVE_PEOPLE[1]][5].read_bytes())
        assert other["status"] == "succeeded" and not other["result"]["match"]

        # A new enrollment writes the active version and the previous one (now a candidate).
        late = http.post("/v1/subjects/late/enrollments",
                         json={"images": [base64.b64encode(pictures[MOVE_PEOPLE[2]][7].read_bytes()).decode()]})  # fmt: skip
        assert _wait(http, late.json()["id"])["status"] == "succeeded"
        assert templates_by_subject(services, tenant, JITTER)["late"] == 1
        assert templates_by_subject(services, tenant, BASE)["late"] == 1
        assert biofleet(worker_env, "models", "retire", JITTER).returncode == 1  # active: refused
    finally:  # leave the base version active, alone, for the other tests
        biofleet(worker_env, "models", "activate", BASE, "--force")
        biofleet(worker_env, "models", "retire", JITTER)


def lose_images(services, tenant: uuid.UUID) -> None:
    """ "expired": its stored images deleted from the blob store (as retention would);
    "erased": its templates no longer name a retained image."""
    from sqlalchemy import select, update

    from shared.blob import open_blob_store
    from shared.db.models import Subject, Template

    blobs = open_blob_store(services.blob_url)
    with db(services) as session:
        subjects = dict(session.execute(
            select(Subject.external_id, Subject.id).where(Subject.tenant_id == tenant)
        ).all())  # fmt: skip
        for key in session.scalars(select(Template.image_key).where(Template.subject_id == subjects["expired"])):
            blobs.delete(key)
        session.execute(update(Template).where(Template.subject_id == subjects["erased"]).values(image_key=None))


def _wait(http, job_id: str) -> dict:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not final")


def test_calibrate_on_lfw_view1_reproduces_its_fmr(faces_dir, worker_env, tmp_path):
    from worker.face.calibration import fmr_at

    view1 = faces_dir / "lfw_view1"
    env = dict(worker_env, BIOFLEET_DETECTOR_UPSAMPLE="0")  # LFW faces are ~110 px: no upsampling needed
    distances, plot = tmp_path / "d.npz", tmp_path / "det.png"
    run = biofleet(env, "calibrate", "--pairs", str(view1 / "pairsDevTest.txt"), "--root", str(view1),
                   "--target-fmr", "1e-3", "--bootstrap", "20", "--json", "--plot", str(plot),
                   "--distances", str(distances))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert 0 < report["eer"] < 1
    assert report["genuine"] > 400 and report["impostor"] > 100_000
    saved = np.load(distances)
    assert fmr_at(saved["impostor"], report["threshold"]) == pytest.approx(report["fmr"])
    assert report["fmr"] <= 1e-3
    assert report["threshold_low"] <= report["threshold"] <= report["threshold_high"]
    assert report["fnmr_at_fmr"]["0.0001"] is not None
    assert plot.stat().st_size > 10_000
