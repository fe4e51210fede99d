"""The callback receivers of `biofleet chaos` (cli/chaos_run.py), on 127.0.0.1 only.

Receivers(secrets): a fast receiver at fast_url(tenant) that verifies every post with
    standardwebhooks and that tenant's secret (forged: posts that do not verify), and counts
    distinct webhook-ids per job; and a slow one at slow_url(tenant) that reads the request,
    then trickles its answer a byte every TRICKLE_S seconds (never answering within the
    dispatcher's deadline). close() stops both.
delivered(job_ids) -> how many of job_ids have at least one verified delivery.
"""

import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRICKLE_S = 2.0
SLOW_ANSWER = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"." * 200 + b"\r\n\r\n"


class Receivers:
    def __init__(self, secrets: dict[str, str]):
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError

        self.webhooks = {tenant: Webhook(secret) for tenant, secret in secrets.items()}
        self.ids_by_job: dict[str, set[str]] = {}
        self.posts = 0
        self.forged = 0
        self.slow_posts = 0
        self.stop = threading.Event()
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                tenant = self.path.rsplit("/", 1)[-1]
                webhook = owner.webhooks.get(tenant)
                with lock:
                    owner.posts += 1
                    try:
                        if webhook is None:
                            raise WebhookVerificationError("unknown tenant")
                        job = webhook.verify(body, dict(self.headers))
                        owner.ids_by_job.setdefault(job["id"], set()).add(self.headers["webhook-id"])
                    except (WebhookVerificationError, ValueError, KeyError, TypeError):
                        owner.forged += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.fast = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.fast.daemon_threads = True
        threading.Thread(target=self.fast.serve_forever, name="fast-receiver", daemon=True).start()
        self.slow = socket.socket()
        self.slow.bind(("127.0.0.1", 0))
        self.slow.listen(64)
        self.slow.settimeout(0.2)
        threading.Thread(target=self._accept_slow, name="slow-receiver", daemon=True).start()

    def fast_url(self, tenant: str) -> str:
        return f"http://127.0.0.1:{self.fast.server_address[1]}/hook/{tenant}"

    def slow_url(self, tenant: str) -> str:
        return f"http://127.0.0.1:{self.slow.getsockname()[1]}/hook/{tenant}"

    def delivered(self, job_ids) -> int:
        return sum(1 for job_id in job_ids if self.ids_by_job.get(job_id))

    def _accept_slow(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.slow.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.slow_posts += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn) -> None:
        try:
            with conn:
                conn.settimeout(None)
                for byte in SLOW_ANSWER:
                    until = time.monotonic() + TRICKLE_S
                    while (left := until - time.monotonic()) > 0:
                        readable, _, _ = select.select([conn], [], [], min(left, 0.5))
                        if self.stop.is_set():
                            return
                        if readable and not conn.recv(65536):
                            return  # the dispatcher gave up
                    conn.sendall(bytes([byte]))
        except OSError:
            return

    def close(self) -> None:
        self.stop.set()
        self.fast.shutdown()
        self.fast.server_close()
        self.slow.close()
