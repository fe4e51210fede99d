"""Posting a callback (worker.callbacks.post_pinned): to the address the SSRF guard checked, never
a second DNS answer; within one deadline for the whole request; reading a bounded answer."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.callback_guard import CallbackRefused, allowed_networks, check_callback_url
from worker.callbacks import CallbackFailed, post_pinned

BOUND_S = 60.0  # a bound on waiting for a post that should end long before; not a timing assertion
LOOPBACK = allowed_networks("127.0.0.1/32")


def deliver_checked(url: str, body: bytes, deadline_s: float = 5.0, max_bytes: int = 4096) -> int:
    """What the dispatcher does: check the URL once, then post to the checked address."""
    target = check_callback_url(url, LOOPBACK)
    return post_pinned(target, url, body, {"content-type": "application/json"}, deadline_s, max_bytes)


class Receiver:
    """A loopback HTTP server recording each POST's Host header and body; answers 204."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.headers.get("Host"), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def rebinding_resolver(monkeypatch, answers: list[str]) -> list[str]:
    """socket.getaddrinfo answering rebind.test with the next of answers at each call (the last
    one from then on); every other host as usual. Returns the list of hosts looked up."""
    real = socket.getaddrinfo
    asked = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        address = answers[min(len(asked), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_the_post_goes_to_the_checked_address_when_dns_rebinds(monkeypatch, receiver):
    """The name answers loopback (allowed here) for the check, then the metadata address: the
    post still reaches the checked address, with the original Host header."""
    asked = rebinding_resolver(monkeypatch, ["127.0.0.1", "169.254.169.254"])
    url = f"http://rebind.test:{receiver.port}/hook"
    assert deliver_checked(url, b'{"id":"1"}') == 204
    assert receiver.received == [(f"rebind.test:{receiver.port}", b'{"id":"1"}')]
    assert asked == ["rebind.test"]  # resolved once


def test_a_name_that_answers_the_metadata_address_first_is_refused(monkeypatch):
    rebinding_resolver(monkeypatch, ["169.254.169.254", "127.0.0.1"])
    with pytest.raises(CallbackRefused):
        deliver_checked("http://rebind.test:80/hook", b"{}")


def trickling_server(every_s: float, answer: bytes, stop: threading.Event) -> tuple[int, list]:
    """A loopback server that reads a request, then sends answer one byte every every_s seconds.
    Returns its port and a list that gets "cut" when the client hung up before the end."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    events = []

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                try:
                    for byte in answer:
                        if stop.wait(every_s):
                            return
                        conn.sendall(bytes([byte]))
                    events.append("finished")
                except OSError:
                    events.append("cut")
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], events


def run_bounded(fn) -> dict:
    """fn() in a thread, waited for at most BOUND_S: {"result"|"error"|"hung": ...}."""
    outcome = {}

    def run():
        try:
            outcome["result"] = fn()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    if thread.is_alive():
        outcome["hung"] = True
    return outcome


def test_a_trickling_receiver_is_cut_off_at_the_deadline():
    """A byte every 0.3 s resets any per-read timeout; the whole-request deadline (1 s) still ends
    the post, long before the 200-byte answer would be complete."""
    stop = threading.Event()
    answer = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\nContent-Length: 0\r\n\r\n"
    port, events = trickling_server(0.3, answer, stop)
    try:
        outcome = run_bounded(lambda: deliver_checked(f"http://127.0.0.1:{port}/hook", b"{}", deadline_s=1.0))
        assert "hung" not in outcome, "the post outlived the bound"
        assert isinstance(outcome.get("error"), CallbackFailed), outcome
        assert "deadline" in str(outcome["error"])
        assert "finished" not in events
    finally:
        stop.set()


def test_a_large_answer_is_read_only_up_to_the_limit():
    """A receiver answering 200 with an endless body: the post succeeds after max_bytes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sent = {"bytes": 0}

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
            try:
                while sent["bytes"] < 1_000_000_000:
                    conn.sendall(b"x" * 65536)
                    sent["bytes"] += 65536
            except OSError:
                pass
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    outcome = run_bounded(lambda: deliver_checked(url, b"{}", deadline_s=30.0, max_bytes=4096))
    assert outcome.get("result") == 200, outcome
    time.sleep(0.2)
    assert sent["bytes"] < 100_000_000  # far from the whole body


def test_a_receiver_answering_an_error_fails_the_attempt(receiver):
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()  # nothing listens there
    with pytest.raises(CallbackFailed):
        deliver_checked(f"http://127.0.0.1:{port}/hook", b"{}")


def test_tls_names_the_original_host_while_connecting_to_the_checked_address(monkeypatch):
    """https through a rebinding name: the TCP connection goes to the checked address, and the
    TLS ClientHello carries the URL's host as server name (SNI), so certificates are checked
    against it."""
    rebinding_resolver(monkeypatch, ["127.0.0.1", "169.254.169.254"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(BOUND_S)
    hello = {}

    def serve():
        conn, _ = listener.accept()
        with conn:
            hello["bytes"] = conn.recv(65536)  # the ClientHello; then hang up
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(CallbackFailed):
        deliver_checked(f"https://rebind.test:{listener.getsockname()[1]}/hook", b"{}")
    assert hello["bytes"][:1] == b"\x16"  # a TLS handshake record
    assert b"rebind.test" in hello["bytes"]


def test_tenant_slots_cap_deliveries_per_tenant_without_redis():
    import uuid

    from worker.dispatcher import TenantSlots

    slots = TenantSlots(None, cap=2, ttl_s=10)
    a, b = uuid.uuid4(), uuid.uuid4()
    assert slots.acquire(a, "1") and slots.acquire(a, "2")
    assert not slots.acquire(a, "3")
    assert slots.acquire(b, "4")  # another tenant is not held up
    slots.release(a, "1")
    assert slots.acquire(a, "3")
