"""Posting one callback: the job JSON (shared.jobs.job_json, as GET /v1/jobs/{id} answers), signed
with the tenant's secrets (shared.webhooks), to the address the SSRF guard checked.

post_pinned(target, url, body, headers, deadline_s, max_response_bytes) -> HTTP status (2xx), or
    CallbackFailed. The connection goes to target.addresses (never a second DNS lookup), with Host
    and TLS server name from the URL. deadline_s bounds the whole request (connect, TLS, send and
    receive): every socket operation gets what is left of it, so a receiver trickling a byte at a
    time is cut off. At most max_response_bytes of the response body are read.
encode(payload) -> the exact JSON bytes that are signed and sent.
backoff_s(attempt) -> seconds to wait before retry number `attempt` (1, 2, ...).
"""

import json
import ssl
import time

import certifi
import httpcore

from shared.callback_guard import Target


class CallbackFailed(RuntimeError):
    """The receiver did not answer 2xx in time, or could not be reached."""


def encode(payload: dict) -> bytes:
    """Compact JSON bytes: exactly what is signed and sent."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation gets at most what is left before the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float):
        self.inner = inner
        self.deadline = deadline

    def _left(self, error: type[Exception]) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise error("the callback deadline passed")
        return left

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, timeout=self._left(httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, timeout=self._left(httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        inner = self.inner.start_tls(ssl_context, server_hostname, timeout=self._left(httpcore.ConnectTimeout))
        return _DeadlineStream(inner, self.deadline)

    def get_extra_info(self, info: str):
        return self.inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the checked addresses whatever host the URL names, within the deadline."""

    def __init__(self, target: Target, deadline: float):
        self.target = target
        self.deadline = deadline
        self.inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        error: Exception = httpcore.ConnectError("no address to connect to")
        for address in self.target.addresses:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ConnectTimeout("the callback deadline passed")
            try:
                stream = self.inner.connect_tcp(str(address), self.target.port, timeout=left,
                                                socket_options=socket_options)  # fmt: skip
                return _DeadlineStream(stream, self.deadline)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


_ssl_context = None


def _tls() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context(cafile=certifi.where())
    return _ssl_context


def post_pinned(
    target: Target, url: str, body: bytes, headers: dict, deadline_s: float, max_response_bytes: int
) -> int:
    """POST body to url through target's addresses; the 2xx status, or CallbackFailed."""
    deadline = time.monotonic() + deadline_s
    backend = _PinnedBackend(target, deadline)
    timeouts = {"connect": deadline_s, "read": deadline_s, "write": deadline_s, "pool": deadline_s}
    try:
        with httpcore.ConnectionPool(ssl_context=_tls(), network_backend=backend, max_connections=1) as pool:
            with pool.stream("POST", url, headers=list(headers.items()), content=body,
                             extensions={"timeout": timeouts}) as response:  # fmt: skip
                read = 0
                for chunk in response.iter_stream():
                    read += len(chunk)
                    if read >= max_response_bytes:
                        break
                status = response.status
    except httpcore.TimeoutException:
        raise CallbackFailed("the receiver did not answer within the deadline") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, OSError) as exc:
        raise CallbackFailed(f"the receiver could not be reached ({type(exc).__name__})") from None
    if not 200 <= status < 300:
        raise CallbackFailed(f"the receiver answered HTTP {status}")
    return status


def backoff_s(attempt: int, base_s: float = 2.0, cap_s: float = 300.0) -> float:
    """Exponential backoff: base_s, 2 base_s, 4 base_s, ... capped at cap_s."""
    return min(cap_s, base_s * 2 ** max(0, attempt - 1))
