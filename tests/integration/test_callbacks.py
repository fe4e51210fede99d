"""Callbacks end to end: the outbox written with the job's final status, the callback dispatcher
(`python -m worker --callbacks`) sending it with per-tenant Standard Webhooks signatures, and a
slow receiver slowing only its own tenant."""

import base64
import io
import select
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.stack

BOUND_S = 180.0  # a bound on waiting, not a timing assertion
LOOPBACK = "127.0.0.1/32"


# --- helpers ---------------------------------------------------------------------------------


def blank_png(shade: int = 180) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((200, 200, 3), shade, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def tenant_of(services, key: str) -> tuple[uuid.UUID, str]:
    """(tenant id, its current webhook secret) of an API key."""
    from shared.db.session import session_scope
    from shared.keys import tenant_for_key
    from shared.webhooks import ensure_secret

    with session_scope(services.database_url) as session:
        tenant_id = tenant_for_key(session, key)
        return tenant_id, ensure_secret(session, tenant_id)


def wait_until(condition, what: str, bound_s: float = BOUND_S) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound_s:.0f} s")
        time.sleep(0.2)


def outbox_rows(services, job_ids) -> list:
    from sqlalchemy import select

    from shared.db.models import CallbackDelivery
    from shared.db.session import session_scope

    with session_scope(services.database_url) as session:
        return list(
            session.scalars(
                select(CallbackDelivery).where(CallbackDelivery.job_id.in_([uuid.UUID(str(j)) for j in job_ids]))
            )
        )


class Receiver:
    """A loopback receiver of one tenant: verifies each post with standardwebhooks and the tenant's
    secret (forged counts those that do not verify), keeps the verified ones by webhook-id, and
    answers 500 to the first fail_first posts, then 204."""

    def __init__(self, secret: str, fail_first: int = 0, on_post=None):
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError

        self.by_id: dict[str, dict] = {}
        self.posts = 0
        self.forged = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    receiver.posts += 1
                    refuse = receiver.posts <= fail_first
                    try:
                        payload = Webhook(secret).verify(body, dict(self.headers))
                        if not refuse:
                            receiver.by_id.setdefault(self.headers["webhook-id"], payload)
                    except WebhookVerificationError:
                        receiver.forged += 1
                    if on_post is not None:
                        on_post(receiver)
                self.send_response(500 if refuse else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def jobs(self) -> dict[str, dict]:
        """job id -> the posted job JSON, over distinct webhook-ids."""
        return {payload["id"]: payload for payload in list(self.by_id.values())}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Trickler:
    """A loopback receiver that reads the request, then answers one byte every every_s seconds
    (a status line that would take minutes). Counts open connections and the most at once."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.open = 0
        self.most = 0
        self.cut = 0  # connections the client closed before the answer was complete
        self.finished = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with self.lock:
            self.open += 1
            self.most = max(self.most, self.open)
        try:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n":
                until = time.monotonic() + self.every_s
                while (left := until - time.monotonic()) > 0:  # wait, noticing the client hang up
                    readable, _, _ = select.select([conn], [], [], left)
                    if self.stop.is_set():
                        return
                    if readable and not conn.recv(65536):
                        raise ConnectionResetError("the client closed the connection")
                conn.sendall(bytes([byte]))
            self.finished += 1
        except OSError:
            self.cut += 1
        finally:
            conn.close()
            with self.lock:
                self.open -= 1

    def close(self):
        self.stop.set()
        self.listener.close()


@pytest.fixture
def loopback_api(api_client, monkeypatch):
    """The API client, with loopback callback URLs allowed."""
    backends = api_client.app.state.backends
    monkeypatch.setattr(
        backends, "settings", backends.settings.model_copy(update={"callback_allowed_networks": LOOPBACK})
    )
    return api_client


def submit_verify(client, key: str, subject: str, callback_url: str, shade: int = 180) -> str:
    image = base64.b64encode(blank_png(shade)).decode()
    response = client.post(
        "/v1/verifications",
        json={"subject_id": subject, "image": image, "callback_url": callback_url},
        headers=auth(key),
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


# --- signatures --------------------------------------------------------------------------------


def test_one_tenants_secret_cannot_sign_for_another(services, make_key):
    """Tenant A can no longer forge a signed {"match": true} for tenant B's receiver."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from shared.db.session import session_scope
    from shared.webhooks import signed_headers, signing_secrets

    a, secret_a = tenant_of(services, make_key(f"forge-a-{uuid.uuid4().hex[:8]}"))
    b, secret_b = tenant_of(services, make_key(f"forge-b-{uuid.uuid4().hex[:8]}"))
    assert secret_a != secret_b and secret_a.startswith("whsec_")
    with session_scope(services.database_url) as session:
        signing_a = signing_secrets(session, a)
    body = b'{"result":{"match":true},"status":"succeeded"}'
    headers = signed_headers(signing_a, "msg_forged", body)
    assert Webhook(secret_a).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_b).verify(body, headers)


def test_a_rotated_secret_signs_beside_the_new_one_for_the_grace_period(services, make_key):
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from shared.db.session import session_scope
    from shared.webhooks import rotate_secret, signed_headers, signing_secrets

    name = f"rotate-{uuid.uuid4().hex[:8]}"
    tenant_id, old = tenant_of(services, make_key(name))
    with session_scope(services.database_url) as session:
        new = rotate_secret(session, name, grace_s=3600)
    with session_scope(services.database_url) as session:
        both = signing_secrets(session, tenant_id)
    assert both == [new, old]
    headers = signed_headers(both, "msg_1", b"{}")
    assert Webhook(old).verify(b"{}", headers) == {} and Webhook(new).verify(b"{}", headers) == {}

    with session_scope(services.database_url) as session:
        newest = rotate_secret(session, name, grace_s=0)  # the old one stops at once
    with session_scope(services.database_url) as session:
        assert signing_secrets(session, tenant_id) == [newest]
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(b"{}", signed_headers([newest], "msg_2", b"{}"))


# --- the outbox --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline():
    from shared.settings import get_settings
    from worker.face.pipeline import load_pipeline

    loaded = load_pipeline(device="cpu", cache_dir=get_settings().model_cache_dir, threads=2)
    yield loaded
    loaded.close()


def batch_runtime(services, pipeline):
    from shared.blob import open_blob_store
    from shared.settings import get_settings
    from worker.app import ensure_model_version
    from worker.batch import Runtime

    settings = get_settings()
    ensure_model_version(services.database_url, settings, pipeline.embedder.weights_sha256)
    return Runtime(pipeline=pipeline, blobs=open_blob_store(services.blob_url), database_url=services.database_url,
                   model_version=settings.model_version, settings=settings, republish=lambda deliveries: None)  # fmt: skip


def queued_verify(services, tenant_id, callback_url: str):
    """A queued verify job of a blank image (it ends no_face) and its message, as the API makes them."""
    from shared.blob import open_blob_store
    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.messages import JobMessage
    from worker.batch import Delivery

    job_id = uuid.uuid4()
    key = f"{tenant_id}/{job_id}/0"
    open_blob_store(services.blob_url).put(key, blank_png())
    with session_scope(services.database_url) as session:
        session.add(Job(id=job_id, tenant_id=tenant_id, kind="verify", status="queued", subject_external_id="s",
                        blob_keys=[key], cropped=False, attempts=0, callback_url=callback_url))  # fmt: skip
    message = JobMessage(job_id=str(job_id), tenant_id=str(tenant_id), kind="verify", blob_keys=[key],
                         subject_id="s", submitted_at=time.time())  # fmt: skip
    return str(job_id), Delivery(task_id=str(job_id), kwargs=message.model_dump(mode="json"))


def test_a_callback_committed_but_never_posted_is_delivered_later(services, make_key, pipeline, start_dispatcher):
    """The batch commits (the job final, its outbox row pending) and its process dies before any
    post; a redelivered message for the final job adds nothing; a dispatcher started later posts
    the callback, once per delivery id, signed for the tenant, carrying GET /v1/jobs/{id}."""
    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.jobs import job_json
    from worker.batch import run_batch

    key = make_key(f"outbox-{uuid.uuid4().hex[:8]}")
    tenant_id, secret = tenant_of(services, key)
    receiver = Receiver(secret, fail_first=1)
    try:
        runtime = batch_runtime(services, pipeline)
        job_id, delivery = queued_verify(services, tenant_id, receiver.url)
        assert run_batch([delivery], runtime).finished == {job_id: "failed"}  # no_face
        [row] = outbox_rows(services, [job_id])
        assert (row.status, row.attempts, str(row.tenant_id), row.url) == ("pending", 0, str(tenant_id), receiver.url)

        again = run_batch([delivery], runtime)  # the message redelivered: the job is final
        assert again.skipped == 1 and again.finished == {}
        assert [r.id for r in outbox_rows(services, [job_id])] == [row.id]

        start_dispatcher(callback_allowed_networks=LOOPBACK)
        wait_until(lambda: job_id in receiver.jobs(), "the callback delivered")
        wait_until(lambda: outbox_rows(services, [job_id])[0].status == "delivered", "the row marked delivered")
        assert receiver.posts == 2 and receiver.forged == 0  # refused once (500), then delivered
        assert list(receiver.by_id) == [row.id]  # the same webhook-id on every attempt
        with session_scope(services.database_url) as session:
            assert receiver.jobs()[job_id] == job_json(session.get(Job, uuid.UUID(job_id)))
        [done] = outbox_rows(services, [job_id])
        assert (done.attempts, done.last_error) == (2, None)
    finally:
        receiver.close()


def test_a_job_cancelled_by_deleting_its_subject_sends_its_callback(
    services, make_key, loopback_api, redis_client, start_dispatcher
):
    key = make_key(f"erase-{uuid.uuid4().hex[:8]}")
    _, secret = tenant_of(services, key)
    receiver = Receiver(secret)
    try:
        job_id = submit_verify(loopback_api, key, "to-erase", receiver.url)
        redis_client.delete("verify")  # no inference worker takes it
        assert loopback_api.delete("/v1/subjects/to-erase", headers=auth(key)).status_code == 204
        start_dispatcher(callback_allowed_networks=LOOPBACK)
        wait_until(lambda: job_id in receiver.jobs(), "the cancelled job's callback")
        posted = receiver.jobs()[job_id]
        assert (posted["status"], posted["error"]["code"]) == ("failed", "subject_deleted")
        assert posted == loopback_api.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        assert receiver.forged == 0
    finally:
        receiver.close()


def test_the_dispatcher_checks_the_url_again_and_gives_up_on_a_refused_one(services, make_key):
    """A URL allowed at submission but refused at delivery (the allow-list changed) fails its row
    without connecting."""
    from shared.db.session import session_scope
    from shared.settings import get_settings
    from worker.dispatcher import Dispatcher

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    tenant_id, _ = tenant_of(services, make_key(f"refused-{uuid.uuid4().hex[:8]}"))
    job_id, _ = queued_verify(services, tenant_id, f"http://127.0.0.1:{listener.getsockname()[1]}/hook")
    from sqlalchemy import update

    from shared import outbox
    from shared.db.models import Job

    with session_scope(services.database_url) as session:
        session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(status="failed", error_code="no_face"))
        outbox.add(session, [uuid.UUID(job_id)])
    [row] = outbox_rows(services, [job_id])
    dispatcher = Dispatcher(get_settings().model_copy(update={"callback_allowed_networks": ""}), services.database_url)
    assert dispatcher.attempt(row) == "failed"
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing connected
    listener.close()
    [row] = outbox_rows(services, [job_id])
    assert row.status == "failed" and row.last_error.startswith("refused")


def test_a_row_claimed_by_a_dispatcher_that_died_comes_back_after_its_lease(services, make_key):
    from sqlalchemy import update

    from shared import outbox
    from shared.db.models import CallbackDelivery, Job
    from shared.db.session import session_scope

    tenant_id, _ = tenant_of(services, make_key(f"lease-{uuid.uuid4().hex[:8]}"))
    job_id, _ = queued_verify(services, tenant_id, "http://127.0.0.1:9/hook")
    with session_scope(services.database_url) as session:
        session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(status="failed", error_code="no_face"))
        outbox.add(session, [uuid.UUID(job_id)])
        outbox.add(session, [uuid.UUID(job_id)])  # made final twice: still one row

    def claim(lease_s: float) -> list[str]:
        with session_scope(services.database_url) as session:
            return [r.id for r in outbox.claim(session, 1000, lease_s) if r.job_id == uuid.UUID(job_id)]

    [row_id] = claim(lease_s=1.0)  # this dispatcher dies without a word
    assert claim(lease_s=1.0) == []  # hidden from the others while leased
    wait_until(lambda: claim(lease_s=1.0) == [row_id], "the row due again")
    with session_scope(services.database_url) as session:
        row = session.get(CallbackDelivery, row_id)
        assert (row.status, row.attempts) == ("pending", 0)


# --- a slow receiver ---------------------------------------------------------------------------


def test_a_slow_receiver_slows_only_its_own_tenant(services, make_key, loopback_api, start_worker, start_dispatcher):
    """A receiver trickling a byte every 3 s holds the slow tenant's deliveries (at most its
    per-tenant cap at once) until the deadline cuts them; the other tenant's jobs finish and
    their callbacks are all delivered while the slow ones are still held."""
    slow_key = make_key(f"slow-{uuid.uuid4().hex[:8]}")
    fast_key = make_key(f"fast-{uuid.uuid4().hex[:8]}")
    _, slow_secret = tenant_of(services, slow_key)
    _, fast_secret = tenant_of(services, fast_key)
    trickler = Trickler(every_s=3.0)
    held_while_fast = []  # the trickler's open connections at each fast delivery
    fast = Receiver(fast_secret, on_post=lambda r: held_while_fast.append(trickler.open))
    try:
        start_worker(batch_size=8)
        start_dispatcher(callback_allowed_networks=LOOPBACK, callback_deadline_s=20, callback_tenant_concurrency=2,
                         callback_max_attempts=1)  # fmt: skip
        slow_jobs = [submit_verify(loopback_api, slow_key, "s", trickler.url, shade=10 + i) for i in range(4)]
        wait_until(lambda: trickler.open >= 2, "the slow receiver holding deliveries")
        fast_jobs = [submit_verify(loopback_api, fast_key, "f", fast.url, shade=100 + i) for i in range(5)]
        wait_until(lambda: set(fast.jobs()) == set(fast_jobs), "the fast tenant's callbacks")

        assert fast.forged == 0 and len(fast.by_id) == 5
        assert held_while_fast and min(held_while_fast) >= 1, held_while_fast  # the slow ones still held

        wait_until(
            lambda: all(r.status == "failed" for r in outbox_rows(services, slow_jobs)), "the slow rows given up"
        )
        rows = outbox_rows(services, slow_jobs)
        assert {r.last_error for r in rows} == {"the receiver did not answer within the deadline"}
        assert trickler.most == 2  # the per-tenant cap
        assert trickler.finished == 0  # cut off, never waited out
        # The fast tenant's secret does not verify the slow tenant's signatures.
        assert slow_secret != fast_secret
    finally:
        fast.close()
        trickler.close()
