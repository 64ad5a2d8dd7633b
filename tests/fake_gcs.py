"""A local Google Cloud Storage for tests: `gs://<bucket>/<path>` is the file `<root>/<bucket>/<path>`, reached the
ways the real code reaches GCS, with no network:

- an HTTP server on 127.0.0.1 speaking the GCS JSON API (read with ranges and generation preconditions, media
  upload, list, delete, bucket metadata), where TensorStore (Orbax's arrays), ArrayRecord's C++ GCS reader
  and google-cloud-storage (Orbax's bucket check) are pointed by their emulator environment variables;
- an fsspec filesystem registered for `gs://`, in place of gcsfs (not installed here), for etils.epath: it
  behaves as an object store, with no appending and no empty directories.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import threading
import urllib.parse
from typing import Iterator

import fsspec
from etils.epath import backend as epath_backend
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import _registry as fsspec_registry


class FakeGCSFileSystem(DirFileSystem):
    """`gs://bucket/x` as `<root>/bucket/x`, with an object store's rules: files can only be written whole or read
    (no append), and a directory exists only while it holds a file."""

    protocol = ("gs", "gcs")
    cachable = False  # the root changes from test to test
    root = ""

    def __init__(self, *args, **kwargs):
        super().__init__(path=self.root, fs=LocalFileSystem(auto_mkdir=True))

    @classmethod
    def _strip_protocol(cls, path):
        path = path[0] if isinstance(path, list) else path
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return path.rstrip("/")

    def _open(self, path, mode="rb", *args, **kwargs):
        if mode not in ("rb", "wb"):
            raise NotImplementedError(f"GCS objects cannot be opened with mode {mode!r}")
        return super()._open(path, mode, *args, **kwargs)

    def _holds_files(self, local: str) -> bool:
        return any(files for _, _, files in os.walk(local))

    def isdir(self, path):
        local = self._join(path)
        return os.path.isdir(local) and self._holds_files(local)

    def exists(self, path, **kwargs):
        local = self._join(path)
        return os.path.isfile(local) or self.isdir(path)

    def ls(self, path, detail=True, **kwargs):
        if not self.exists(path):
            raise FileNotFoundError(path)
        entries = super().ls(path, detail=True, **kwargs)
        entries = [e for e in entries if e["type"] != "directory" or self._holds_files(self._join(e["name"]))]
        return entries if detail else [e["name"] for e in entries]

    def mkdir(self, path, create_parents=True, **kwargs):
        pass  # GCS has no directories

    def makedirs(self, path, exist_ok=False):
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict) -> None:
        self._reply(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _route(self) -> tuple[str, str | None, dict]:
        """(bucket, object name or None, query) of a JSON API or XML API path."""
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = url.path.split("/")
        if url.path.startswith(("/storage/v1/b/", "/upload/storage/v1/b/", "/download/storage/v1/b/")):
            start = parts.index("b")
            bucket = parts[start + 1]
            name = urllib.parse.unquote("/".join(parts[start + 3:])) if len(parts) > start + 3 else None
            return bucket, name or query.get("name"), query
        return parts[1], urllib.parse.unquote("/".join(parts[2:])) or None, query  # XML API: /bucket/object

    def _metadata(self, bucket: str, name: str) -> dict:
        path = self.server.local(bucket, name)
        return {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(os.path.getsize(path)),
                "generation": str(self.server.generation(path)), "metageneration": "1",
                "contentType": "application/octet-stream"}

    def do_GET(self):
        bucket, name, query = self._route()
        if name is None and self.path.startswith("/storage/v1/b/") and "/o" not in self.path.split("?")[0][15:]:
            return self._json(200, {"kind": "storage#bucket", "name": bucket, "id": bucket,
                                    "hierarchicalNamespace": {"enabled": False}})
        if name is None:
            return self._list(bucket, query)
        path = self.server.local(bucket, name)
        if not os.path.isfile(path):
            return self._json(404, {"error": {"code": 404, "message": f"No such object: {bucket}/{name}"}})
        generation = self.server.generation(path)
        if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != generation:
            return self._json(412, {"error": {"code": 412, "message": "Precondition Failed"}})
        if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
            return self._reply(304, headers={"x-goog-generation": generation})
        if query.get("alt") != "media" and not self.path.startswith("/download/") and \
                not self.path.startswith(f"/{bucket}/"):
            return self._json(200, self._metadata(bucket, name))
        with open(path, "rb") as f:
            data = f.read()
        headers = {"x-goog-generation": generation, "x-goog-metageneration": 1,
                   "x-goog-stored-content-length": len(data), "Content-Type": "application/octet-stream"}
        if (ranged := self.headers.get("Range")) and ranged.startswith("bytes="):
            first, _, last = ranged[6:].partition("-")
            if first == "":  # the last N bytes
                first, last = max(len(data) - int(last), 0), len(data) - 1
            first, last = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            if first >= len(data):
                return self._reply(416, headers={"Content-Range": f"bytes */{len(data)}"})
            return self._reply(206, data[first:last + 1],
                               {**headers, "Content-Range": f"bytes {first}-{last}/{len(data)}"})
        return self._reply(200, data, headers)

    do_HEAD = do_GET

    def _list(self, bucket: str, query: dict) -> None:
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter")
        root = os.path.join(self.server.root, bucket)
        names = sorted(os.path.relpath(os.path.join(folder, file), root)
                       for folder, _, files in os.walk(root) for file in files)
        names = [n for n in names if n.startswith(prefix) and n >= query.get("startOffset", "")
                 and (not query.get("endOffset") or n < query["endOffset"])]
        items, prefixes = [], set()
        for n in names:
            if delimiter and delimiter in n[len(prefix):]:
                prefixes.add(prefix + n[len(prefix):].split(delimiter)[0] + delimiter)
            else:
                items.append(self._metadata(bucket, n))
        self._json(200, {"kind": "storage#objects", "items": items, "prefixes": sorted(prefixes)})

    def do_POST(self):
        bucket, name, query = self._route()
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if query.get("uploadType") == "multipart":  # metadata part (with the name), then the data part
            boundary = self.headers["Content-Type"].split("boundary=")[1].strip('"').encode()
            parts = [p for p in body.split(b"--" + boundary) if p.strip() not in (b"", b"--")]
            name = name or json.loads(parts[0].split(b"\r\n\r\n", 1)[1])["name"]
            body = parts[1].split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")
        path = self.server.local(bucket, name)
        with self.server.lock:
            exists = os.path.isfile(path)
            if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != (
                    self.server.generation(path) if exists else 0):
                return self._json(412, {"error": {"code": 412, "message": "Precondition Failed"}})
            self.server.write(path, body)
        self._json(200, self._metadata(bucket, name))

    def do_DELETE(self):
        bucket, name, query = self._route()
        path = self.server.local(bucket, name)
        with self.server.lock:
            if not os.path.isfile(path):
                return self._json(404, {"error": {"code": 404, "message": "Not Found"}})
            if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != self.server.generation(path):
                return self._json(412, {"error": {"code": 412, "message": "Precondition Failed"}})
            os.remove(path)
        self._reply(204)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.lock = root, threading.Lock()
        self._generations: dict[str, tuple[int, int]] = {}  # path -> (mtime_ns, generation) of its last write here

    def local(self, bucket: str, name: str) -> str:
        return os.path.join(self.root, bucket, name)

    def generation(self, path: str) -> int:
        """Changes with every write, this server's or the fsspec filesystem's."""
        mtime = os.stat(path).st_mtime_ns
        known = self._generations.get(path)
        return known[1] if known and known[0] == mtime else mtime

    def write(self, path: str, data: bytes) -> None:
        before = self.generation(path) if os.path.isfile(path) else 0
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".uploading", "wb") as f:
            f.write(data)
        os.replace(path + ".uploading", path)
        self._generations[path] = (os.stat(path).st_mtime_ns, max(before + 1, os.stat(path).st_mtime_ns))


@contextlib.contextmanager
def fake_gcs(root: str) -> Iterator[str]:
    """Serves `root` as GCS (each folder in it a bucket) for this process and the ones it starts; yields the URL.
    Leaving restores the environment; the server itself (a daemon thread) lives on."""
    server = _Server(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    env = {"TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",
           "CLOUD_STORAGE_EMULATOR_ENDPOINT": url, "STORAGE_EMULATOR_HOST": url}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    FakeGCSFileSystem.root = root
    for protocol in FakeGCSFileSystem.protocol:
        fsspec.register_implementation(protocol, FakeGCSFileSystem, clobber=True)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    try:
        yield url
    finally:  # the server keeps serving until the process ends: tensorboardX's writers upload again at exit
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for protocol in FakeGCSFileSystem.protocol:
            fsspec_registry.pop(protocol, None)  # back to the real implementation (gcsfs), if installed
        epath_backend.fsspec_backend._get_filesystem.cache_clear()
