"""A small HTTP proxy in front of the GCS-protocol server that damages transfers the way a
bad network does: one flipped byte in a download, a download cut half-way through, or one
flipped byte in an upload chunk.

Everything else (and every download once the faults are used up) passes through as is,
headers included, so the client checks the bytes against the server's own x-goog-hash.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

Fault = Literal["flip-byte", "cut", "flip-upload"]
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
}


class FaultyProxy:
    def __init__(self, upstream: str, fault: Fault, times: int) -> None:
        self.upstream = urlsplit(upstream)
        self.fault = fault
        self.faults_left = times
        self.media_requests = 0
        self.methods: list[str] = []  # every request's method, in order
        self._lock = threading.Lock()

    def take_fault(self, kind: Literal["download", "upload"]) -> Fault | None:
        with self._lock:
            if kind == "download":
                self.media_requests += 1
            wanted = (
                self.fault == "flip-upload" if kind == "upload" else self.fault != "flip-upload"
            )
            if not wanted or self.faults_left == 0:
                return None
            self.faults_left -= 1
            return self.fault


def flip_middle_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def _handler(proxy: FaultyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet test output
            pass

        def _forward(self) -> None:
            proxy.methods.append(self.command)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.command == "PUT" and body and proxy.take_fault("upload"):
                body = flip_middle_byte(body)  # a resumable upload's chunk
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("host", "accept-encoding")
            }
            upstream = http.client.HTTPConnection(
                proxy.upstream.hostname, proxy.upstream.port, timeout=30
            )
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            upstream.close()

            is_media = self.command == "GET" and "alt=media" in self.path and response.status == 200
            fault = proxy.take_fault("download") if is_media and payload else None
            if fault == "flip-byte":
                payload = flip_middle_byte(payload)

            self.send_response(response.status, response.reason)
            upstream_url = f"http://{proxy.upstream.netloc}"
            host, port = self.server.server_address[:2]
            own_url = f"http://{host}:{port}"
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    # resumable upload sessions must come back through the proxy too
                    self.send_header(key, value.replace(upstream_url, own_url))
            self.send_header("Content-Length", str(len(payload)))
            if fault == "cut":
                self.send_header("Connection", "close")
            self.end_headers()
            if fault == "cut":
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    return Handler


@contextmanager
def faulty_proxy(upstream: str, fault: Fault, times: int) -> Iterator[tuple[str, FaultyProxy]]:
    """Serve the proxy on a free port; yields its URL and its counters."""
    proxy = FaultyProxy(upstream, fault, times)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", proxy
    finally:
        server.shutdown()
        server.server_close()
