"""A fault-injecting HTTP proxy for the tests: between s3fs and the moto S3 server.

Point s3fs's ``endpoint_url`` at :attr:`FaultProxy.endpoint`; every request is forwarded
to the upstream server (moto), except that, with probability ``rate`` (a seeded random
draw per request), one fault of ``kinds`` is injected instead:

* ``slowdown``: an HTTP 503 with S3's ``SlowDown`` error body; not forwarded.
* ``internal``: an HTTP 500 with S3's ``InternalError`` error body; not forwarded.
* ``reset``: the connection is closed (RST) without an answer; not forwarded.
* ``lost``: forwarded (the server did it), then the connection is closed without an
  answer: the client does not know its request succeeded.
* ``cut``: forwarded, then the status line, headers and half of the body are sent and
  the connection is closed mid-response.
* ``slow``: forwarded, then the answer is held back ``delay`` seconds (past the client's
  read timeout) before it is sent to a client that has given up.

Besides the random draws, ``rules`` inject a given fault into given requests (e.g. the
first ``CreateMultipartUpload``): each ``[method, text in the path, kind, times]``.
:attr:`FaultProxy.injected` counts the faults per kind, :attr:`FaultProxy.faulted` lists
``(kind, method, path)`` of each, :attr:`FaultProxy.requests` counts every request seen.
"""

from __future__ import annotations

import collections
import http.client
import random
import socket
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable, Optional

KINDS = ("slowdown", "internal", "reset", "lost", "cut", "slow")

_ERROR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
          '<RequestId>FAULTPROXY</RequestId><HostId>fault-proxy</HostId></Error>')
_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
}
#: Hop-by-hop headers not passed on.
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 (random port) in front of ``upstream``.

    Args:
        upstream: The server's ``http://host:port``.
        rate: Fraction of requests that get a fault (0 to 1).
        kinds: The faults to draw from (uniformly), a subset of :data:`KINDS`.
        seed: Seed of the draws.
        delay: Seconds a ``slow`` answer is held back.
        rules: ``[method, text, kind, times]``: the next ``times`` requests with that
            method and ``text`` in their path get ``kind`` (before any random draw).

    Attributes:
        endpoint: ``http://127.0.0.1:PORT``, for s3fs's ``endpoint_url``.
        injected: Faults injected so far, per kind.
        requests: Requests seen so far.
    """

    def __init__(self, upstream: str, rate: float = 0.0, kinds: Iterable[str] = KINDS, seed: int = 0,
                 delay: float = 3.0, rules: Iterable[list] = ()):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.rate = rate
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"Expected fault kinds among {KINDS}; got {sorted(unknown)}")
        self.delay = delay
        self.injected: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self.faulted: list[tuple[str, str, str]] = []
        self.rules = [list(rule) for rule in rules]
        for rule in self.rules:
            if rule[2] not in KINDS:
                raise ValueError(f"Expected a fault kind among {KINDS}; got {rule[2]!r}")
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.endpoint = ""

    # -- the draw ------------------------------------------------------------------------------

    def draw(self, method: str = "", path: str = "") -> Optional[str]:
        """The fault for the next request, or None (counted)."""
        with self._lock:
            self.requests += 1
            kind = None
            for rule in self.rules:
                if rule[3] > 0 and rule[0] == method and rule[1] in path:
                    rule[3] -= 1
                    kind = rule[2]
                    break
            else:
                if not self.kinds or self._random.random() >= self.rate:
                    return None
                kind = self._random.choice(self.kinds)
            self.injected[kind] += 1
            self.faulted.append((kind, method, path))
            return kind

    @property
    def total_injected(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.request_queue_size = 128
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    """One client connection (keep-alive): each request forwarded, or a fault."""

    protocol_version = "HTTP/1.1"
    owner: FaultProxy
    _upstream: Optional[http.client.HTTPConnection] = None

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            headers["Content-Length"] = str(len(body))
        for attempt in range(2):  # a kept-alive upstream connection may have been closed
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                response = self._upstream.getresponse()
                data = response.read()
                return response.status, response.reason, response.getheaders(), data
            except (ConnectionError, http.client.HTTPException):
                self._upstream.close()
                self._upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _reset(self) -> None:
        """Close the client connection with a RST, no answer."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass

    def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes,
                cut: bool = False) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if cut:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._reset()
            return
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _handle(self) -> None:
        body = self._read_body()
        kind = self.owner.draw(self.command, self.path)
        if kind in _ERRORS:
            status, code, message = _ERRORS[kind]
            data = _ERROR.format(code=code, message=message).encode()
            self._answer(status, code, [("Content-Type", "application/xml")], data)
            return
        if kind == "reset":
            self._reset()
            return
        status, reason, headers, data = self._forward(body)
        if kind == "lost":
            self._reset()
            return
        if kind == "slow":
            time.sleep(self.owner.delay)
            try:
                self._answer(status, reason, headers, data)
            except OSError:
                self.close_connection = True
            return
        if kind == "cut" and self.command != "HEAD" and len(data) >= 2:
            self._answer(status, reason, headers, data, cut=True)
            return
        if kind == "cut":  # nothing to cut: the connection goes after the status line
            self.send_response_only(status, reason)
            self.end_headers()
            self._reset()
            return
        self._answer(status, reason, headers, data)

    def _any(self) -> None:
        try:
            self._handle()
        except OSError:
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        if self._upstream is not None:
            self._upstream.close()
