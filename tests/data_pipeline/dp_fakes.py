"""Test doubles that are real things: an HTTP server on 127.0.0.1 playing hex.pm, repo.hex.pm and GitHub,
and Hex v3 / GitHub tarballs built byte for byte."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import http.server
import io
import json
import re
import tarfile
import threading
import time
from typing import Iterable
from urllib.parse import parse_qs, urlsplit

# --- archives ------------------------------------------------------------------------------------------------

class Zeros(io.RawIOBase):
    """`size` zero bytes, read in chunks, so huge members cost no memory."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def tar_bytes(members: Iterable[tarfile.TarInfo | tuple[str, bytes]], *, compressed: bool) -> bytes:
    """A tar (gzipped when `compressed`) of (name, data) files and ready-made TarInfo entries (links...)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if compressed else "w", format=tarfile.GNU_FORMAT) as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member, Zeros(member.size) if member.isfile() else None)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def hex_metadata(name: str, version: str, licenses: Iterable[str]) -> bytes:
    """metadata.config as Hex writes it: one Erlang term per line."""
    licence_list = ",".join(f'<<"{licence}">>' for licence in licenses)
    return (f'{{<<"name">>,<<"{name}">>}}.\n{{<<"version">>,<<"{version}">>}}.\n'
            f'{{<<"licenses">>,[{licence_list}]}}.\n{{<<"build_tools">>,[<<"mix">>]}}.\n'
            f'{{<<"requirements">>,[{{<<"jason">>,[{{<<"app">>,<<"jason">>}},{{<<"optional">>,false}}]}}]}}.\n'
            ).encode()


def hex_tarball(name: str, version: str, contents: bytes, *, licenses: Iterable[str] = ("MIT",),
                checksum: str | None = None) -> bytes:
    """A Hex v3 tarball around `contents` (a contents.tar.gz); `checksum` overrides the true CHECKSUM."""
    metadata = hex_metadata(name, version, licenses)
    inner = hashlib.sha256(b"3" + metadata + contents).hexdigest().upper()
    return tar_bytes([("VERSION", b"3"), ("CHECKSUM", (checksum or inner).encode()), ("metadata.config", metadata),
                      ("contents.tar.gz", contents)], compressed=False)


def elixir_files(name: str, count: int = 2) -> list[tuple[str, bytes]]:
    """Small, distinct, parseable Elixir files for package `name`."""
    module = "".join(part.capitalize() for part in name.split("_"))
    files = []
    for i in range(count):
        files.append((f"lib/{name}/part{i}.ex", f'''defmodule {module}.Part{i} do
  @moduledoc """
  Part {i} of the {name} package: helpers numbered {i} that {name} uses to add and scale values.
  """

  @doc """
  Adds {i} to `x` for the {name} package.

      iex> {module}.Part{i}.add_{name}_{i}(1)
      {i + 1}
  """
  @spec add_{name}_{i}(integer()) :: integer()
  def add_{name}_{i}(x) do
    x + {i}
  end

  @doc "Scales `value` by {i + 2} for {name}."
  def scale_{name}_{i}(value), do: value * {i + 2}
end
'''.encode()))
    return files


def package_tarball(name: str, version: str, **kwargs) -> bytes:
    return hex_tarball(name, version, tar_bytes(elixir_files(name), compressed=True), **kwargs)


# --- the server ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Repo:
    owner: str
    name: str
    sha: str
    created: str  # YYYY-MM-DD
    licence: str | None
    files: list[tuple[str, bytes]]


class FakeHub:
    """hex.pm (/api), repo.hex.pm (/repo) and GitHub (/github) on one ThreadingHTTPServer.

    `faults` maps a path to responses to give before the real one: an HTTP status (429 comes with
    rate-limit headers), or "timeout" (the answer comes too late for the client)."""

    def __init__(self, page_size: int = 2, search_cap: int = 1000, timeout_sleep_s: float = 1.5):
        self.packages: list[dict] = []
        self.tarballs: dict[str, bytes] = {}
        self.streamed: dict[str, int] = {}  # tarball name -> size of a body streamed without content-length
        self.repos: list[Repo] = []
        self.page_size = page_size
        self.search_cap = search_cap
        self.timeout_sleep_s = timeout_sleep_s
        self.tarball_delay_s = 0.0
        self.faults: dict[str, list] = {}
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self.token = "test-token"
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_package(self, name: str, version: str, tarball: bytes, licenses: Iterable[str] = ("MIT",),
                    checksum: str | None = None) -> None:
        self.packages.append({"name": name, "latest_stable_version": version, "latest_version": version,
                              "meta": {"licenses": list(licenses), "description": f"The {name} package"},
                              "releases": [{"version": version}]})
        self.tarballs[f"{name}-{version}.tar"] = tarball
        self.packages[-1]["_checksum"] = checksum or hashlib.sha256(tarball).hexdigest()

    def statuses(self, prefix: str = "") -> list[int]:
        return [status for _, path, status in self.log if path.startswith(prefix)]

    # --- routes ---

    def _handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                hub._serve(self, "GET")

            def do_POST(self) -> None:
                hub._serve(self, "POST")

        return Handler

    def _serve(self, request, method: str) -> None:
        path = urlsplit(request.path).path
        with self._lock:
            faults = self.faults.get(path)
            fault = faults.pop(0) if faults else None
        try:
            if fault == "timeout":
                time.sleep(self.timeout_sleep_s)
                self._send(request, 200, b"[]")
            elif fault is not None:
                headers = {}
                if fault == 429:
                    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 1)}
                self._send(request, fault, b"slow down" if fault == 429 else b"oops", headers)
            else:
                self._route(request, method, path)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _respond(self, request, status: int) -> None:
        """Logs the answer before it leaves, so the log is complete when the client has it."""
        with self._lock:
            self.log.append((request.command, urlsplit(request.path).path, status))
        request.send_response(status)

    def _route(self, request, method: str, path: str) -> int:
        query = parse_qs(urlsplit(request.path).query)
        if path == "/api/packages":
            page = int(query.get("page", ["1"])[0])
            items = self.packages[(page - 1) * self.page_size:page * self.page_size]
            return self._send_json(request, [{k: v for k, v in p.items() if k != "_checksum"} for p in items])
        if match := re.fullmatch(r"/api/packages/(\w+)/releases/([\w.\-]+)", path):
            for package in self.packages:
                if (package["name"], package["latest_stable_version"]) == match.groups():
                    return self._send_json(request, {"version": match[2], "checksum": package["_checksum"],
                                                     "meta": {"build_tools": ["mix"]}})
            return self._send(request, 404, b"not found")
        if match := re.fullmatch(r"/repo/tarballs/(.+\.tar)", path):
            time.sleep(self.tarball_delay_s)
            if match[1] in self.streamed:
                return self._stream_zeros(request, self.streamed[match[1]])
            if match[1] in self.tarballs:
                return self._send(request, 200, self.tarballs[match[1]], etag=True)
            return self._send(request, 404, b"not found")
        if path == "/github/graphql" and method == "POST":
            return self._graphql(request)
        if match := re.fullmatch(r"/github/repos/([\w-]+)/([\w-]+)/tarball/(\w+)", path):
            if request.headers.get("authorization") != f"bearer {self.token}":
                return self._send(request, 401, b"bad credentials")
            self._respond(request, 302)
            request.send_header("location", f"/codeload/{match[1]}/{match[2]}/{match[3]}.tar.gz")
            request.send_header("content-length", "0")
            request.end_headers()
            return 302
        if match := re.fullmatch(r"/codeload/([\w-]+)/([\w-]+)/(\w+)\.tar\.gz", path):
            repo = next(r for r in self.repos if (r.owner, r.name, r.sha) == match.groups())
            top = f"{repo.owner}-{repo.name}-{repo.sha[:7]}/"
            return self._send(request, 200, tar_bytes([(top + p, d) for p, d in repo.files], compressed=True))
        return self._send(request, 404, b"no route")

    def _graphql(self, request) -> int:
        if request.headers.get("authorization") != f"bearer {self.token}":
            return self._send(request, 401, b"bad credentials")
        body = json.loads(request.rfile.read(int(request.headers["content-length"])))
        variables = body["variables"]
        start, end = re.search(r"created:(\S+)\.\.(\S+)", variables["query"]).groups()
        matching = sorted((r for r in self.repos if start <= r.created <= end), key=lambda r: r.created)
        reachable = matching[:self.search_cap]  # like GitHub: at most search_cap results per query
        offset = int(variables["after"] or 0)
        page = reachable[offset:offset + variables["first"]]
        nodes = [{"nameWithOwner": f"{r.owner}/{r.name}", "url": f"https://github.com/{r.owner}/{r.name}",
                  "stargazerCount": 42, "licenseInfo": {"spdxId": r.licence} if r.licence else None,
                  "defaultBranchRef": {"target": {"oid": r.sha}}} for r in page]
        next_offset = offset + len(page)
        reset = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        return self._send_json(request, {"data": {
            "rateLimit": {"cost": 1, "remaining": 4999, "resetAt": reset},
            "search": {"repositoryCount": len(matching), "nodes": nodes,
                       "pageInfo": {"hasNextPage": next_offset < len(reachable), "endCursor": str(next_offset)}}}})

    # --- responses ---

    def _send_json(self, request, value) -> int:
        return self._send(request, 200, json.dumps(value).encode(), etag=True)

    def _send(self, request, status: int, body: bytes, headers: dict[str, str] | None = None,
              etag: bool = False) -> int:
        tag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        if etag and request.headers.get("if-none-match") == tag:
            self._respond(request, 304)
            request.send_header("etag", tag)
            request.send_header("content-length", "0")
            request.end_headers()
            return 304
        self._respond(request, status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        if etag:
            request.send_header("etag", tag)
        request.send_header("content-length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
        return status

    def _stream_zeros(self, request, size: int) -> int:
        """A body with no content-length, ended by closing the connection."""
        self._respond(request, 200)
        request.send_header("connection", "close")
        request.end_headers()
        request.close_connection = True
        chunk = bytes(1 << 16)
        for _ in range(size // len(chunk)):
            request.wfile.write(chunk)
        return 200
