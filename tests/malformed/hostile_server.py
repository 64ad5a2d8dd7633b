"""A real HTTP server on 127.0.0.1 that answers each path with whatever a test hands it: wrong shapes, nulls,
redirect loops, trickled bodies, gzip bombs, connection resets."""

from __future__ import annotations

import gzip
import http.server
import json
import socket
import struct
import threading
import time
import zlib
from typing import Callable

Answer = Callable[[http.server.BaseHTTPRequestHandler], None]


def body(data: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    def answer(request) -> None:
        request.send_response(status)
        for key, value in {"content-length": str(len(data)), **(headers or {})}.items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(data)
    return answer


def json_body(value) -> Answer:
    return body(json.dumps(value).encode(), headers={"content-type": "application/json"})


def redirect_to(location: str) -> Answer:
    return body(b"", 302, {"location": location})


def trickle(data: bytes, every_s: float) -> Answer:
    """`data` one byte at a time, `every_s` apart: each read arrives well within any read timeout."""
    def answer(request) -> None:
        request.send_response(200)
        request.send_header("content-length", str(len(data)))
        request.end_headers()
        for byte in data:
            request.wfile.write(bytes([byte]))
            request.wfile.flush()
            time.sleep(every_s)
    return answer


def gzip_bomb(inflated_bytes: int, prefix: bytes = b"") -> Answer:
    """A gzip body (content-encoding: gzip) that inflates to `inflated_bytes`, most of them zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk, parts = bytes(1 << 20), [compressor.compress(prefix)]
    for _ in range(inflated_bytes // len(chunk)):
        parts.append(compressor.compress(chunk))
    data = b"".join(parts) + compressor.flush()
    return body(data, headers={"content-encoding": "gzip"})


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data)


def reset(request) -> None:
    """Closes the connection with a TCP reset before any answer."""
    request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    request.close_connection = True


class HostileServer:
    def __init__(self):
        self.answers: dict[str, Answer] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server._answer(self)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                server._answer(self)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _answer(self, request) -> None:
        path = request.path.split("?")[0]
        self.hits[path] = self.hits.get(path, 0) + 1
        try:
            self.answers.get(path, body(b"no route", 404))(request)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
