"""The polite HTTP client every network source uses: rate limits, retries, and an ETag cache.

- Sends a User-Agent; per-call headers carry credentials (a Hex API key, a GitHub token).
- Honours `x-ratelimit-remaining` / `x-ratelimit-reset` (epoch seconds; Hex and GitHub both send them)
  and `retry-after`: when a host's budget is spent, requests to it wait for the reset.
- Retries 429, 5xx, timeouts and connection errors with exponential backoff and full jitter.
- GETs are cached with their ETag; the next run sends `If-None-Match` and a 304 reuses the cached body,
  so a re-run downloads only what changed.
- Bounds what a hostile server can cost: every body is read as a stream and inflated here, chunk by chunk,
  so a gzip bomb stops at the cap (`max_json_bytes` for API answers, the caller's for downloads); each
  request has an overall deadline (`deadline_s`), so a body trickled a byte at a time ends; redirects stop
  after `max_redirects`. Such an answer is a BadAnswer: its unit fails alone.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.utils
import hashlib
import json
import logging
import random
import time
import zlib
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator
from urllib.parse import urlsplit

import httpx

from data_pipeline.sources import BadAnswer, FetchFailed, UnitRejected
from devstral_jax.atomic import atomic_write

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    user_agent: str
    timeout_s: float
    retries: int
    backoff_s: float
    backoff_max_s: float
    max_rate_limit_wait_s: float
    max_connections: int
    deadline_s: float = 600.0  # one request, body included, from start to end
    max_json_bytes: int = 64 << 20  # an API answer, inflated
    max_redirects: int = 5


class _Retry(Exception):
    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s  # None: exponential backoff


class HttpClient:
    def __init__(self, config: HttpConfig, cache_dir: Path):
        self.config = config
        self.cache_dir = cache_dir
        self.stats: collections.Counter[str] = collections.Counter()
        self._reset_at: dict[str, float] = {}  # host -> epoch seconds before which its budget is spent
        self._slots = asyncio.Semaphore(config.max_connections)
        self._client = httpx.AsyncClient(
            headers={"user-agent": config.user_agent, "accept-encoding": "gzip, deflate"}, timeout=config.timeout_s,
            follow_redirects=True, max_redirects=config.max_redirects,
            limits=httpx.Limits(max_connections=config.max_connections))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get_json(self, url: str, *, params: dict[str, Any] | None = None,
                       headers: dict[str, str] | None = None) -> Any:
        """GET with the ETag cache: a 304 answers from the cached body."""
        key = self._cache_key(url, params)
        body_path, meta = self.cache_dir / f"{key}.body", self._cached_meta(key)
        etag = meta.get("etag") if body_path.exists() else None

        async def attempt() -> bytes:
            response = await self._send("GET", url, params=params, headers=_with_etag(headers, etag))
            try:
                if response.status_code == 304 and etag:
                    self.stats["not_modified"] += 1
                    return body_path.read_bytes()
                _raise_for_status(response)
                body = await self._json_body(response, url)
            finally:
                await response.aclose()
            if response.headers.get("etag"):
                atomic_write(body_path, body)
                self._save_meta(key, {"url": url, "etag": response.headers["etag"]})
            return body

        return _json(url, await self._with_retries(url, attempt))

    async def post_json(self, url: str, payload: Any, *, headers: dict[str, str] | None = None) -> Any:
        async def attempt() -> bytes:
            response = await self._send("POST", url, json=payload, headers=headers)
            try:
                _raise_for_status(response)
                return await self._json_body(response, url)
            finally:
                await response.aclose()

        return _json(url, await self._with_retries(url, attempt))

    async def _json_body(self, response: httpx.Response, url: str) -> bytes:
        chunks: list[bytes] = []
        size = await _read_body(response, self.config.max_json_bytes, url, chunks.append)
        self.stats["downloaded_bytes"] += size
        return b"".join(chunks)

    async def download(self, url: str, dest: Path, *, max_bytes: int, headers: dict[str, str] | None = None) -> Path:
        """Streams `url` to `dest` (reused on a 304). Over `max_bytes`: UnitRejected, nothing kept."""
        key = self._cache_key(url, None)
        meta = self._cached_meta(key)
        etag = meta.get("etag") if dest.exists() else None

        async def attempt() -> Path:
            response = await self._send("GET", url, headers=_with_etag(headers, etag))
            try:
                if response.status_code == 304 and etag:
                    self.stats["not_modified"] += 1
                    return dest
                _raise_for_status(response)
                declared = int(response.headers.get("content-length") or 0)
                if declared > max_bytes:
                    raise UnitRejected(f"too large: {url} is {declared} bytes, over the {max_bytes}-byte cap")
                await self._stream_to(response, dest, max_bytes, url)
            finally:
                await response.aclose()
            if response.headers.get("etag"):
                self._save_meta(key, {"url": url, "etag": response.headers["etag"]})
            return dest

        return await self._with_retries(url, attempt)

    async def _stream_to(self, response: httpx.Response, dest: Path, max_bytes: int, url: str) -> None:
        partial = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(partial, "wb") as file:
                size = await _read_body(response, max_bytes, url, file.write, too_large=UnitRejected)
            partial.replace(dest)
            self.stats["downloaded_bytes"] += size
        finally:
            partial.unlink(missing_ok=True)

    async def _send(self, method: str, url: str, **kwargs) -> httpx.Response:
        """One request within the connection limit and the host's rate budget, its body left to stream (the
        caller closes the response); 429 and 5xx raise _Retry."""
        request = self._client.build_request(method, url, **kwargs)
        async with self._slots:
            await self._wait_for_budget(url)
            self.stats["requests"] += 1
            try:
                response = await self._client.send(request, stream=True)
            except httpx.TooManyRedirects:
                raise BadAnswer(f"{url}: more than {self.config.max_redirects} redirects (a redirect loop?)") from None
        try:
            self._note_rate_limit(url, response)
        except _Retry:
            await response.aclose()
            raise
        return response

    async def _with_retries(self, url: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        for tries in range(self.config.retries + 1):
            try:
                await self._wait_for_budget(url)  # waiting for a rate limit is not the server being slow
                return await asyncio.wait_for(attempt(), self.config.deadline_s)
            except TimeoutError:
                raise BadAnswer(f"{url}: no complete answer within http.deadline_s={self.config.deadline_s:g} s "
                                "(a stalled or trickling server)") from None
            except (httpx.TimeoutException, httpx.TransportError) as error:
                failure = _Retry(f"{type(error).__name__}: {error}")
            except _Retry as retry:
                failure = retry
            if tries == self.config.retries:
                break
            self.stats["retries"] += 1
            backoff = min(self.config.backoff_max_s, self.config.backoff_s * 2 ** tries)
            wait = failure.wait_s if failure.wait_s is not None else random.uniform(0, backoff)
            if wait > self.config.max_rate_limit_wait_s:
                raise FetchFailed(f"{url}: rate limited for {wait:.0f} s, more than http.max_rate_limit_wait_s; "
                                  f"run again later (done units are kept) or use an API key/token.")
            log.info("%s: %s; retrying in %.2f s", url, failure, wait)
            await asyncio.sleep(wait)
        raise FetchFailed(f"{url}: gave up after {self.config.retries + 1} attempts ({failure}).")

    def defer_host(self, url: str, reset_epoch_s: float) -> None:
        """Holds further requests to `url`'s host until `reset_epoch_s` (a budget reported in a body)."""
        host = urlsplit(url).netloc
        self._reset_at[host] = max(self._reset_at.get(host, 0.0), reset_epoch_s)

    async def _wait_for_budget(self, url: str) -> None:
        wait = self._reset_at.get(urlsplit(url).netloc, 0.0) - time.time()
        if wait > 0:
            if wait > self.config.max_rate_limit_wait_s:
                raise FetchFailed(f"{url}: the rate limit resets in {wait:.0f} s, more than "
                                  f"http.max_rate_limit_wait_s; run again later or use an API key/token.")
            self.stats["rate_limit_waits"] += 1
            log.info("%s: rate limit spent; waiting %.1f s for the reset", urlsplit(url).netloc, wait)
            await asyncio.sleep(wait)

    def _note_rate_limit(self, url: str, response: httpx.Response) -> None:
        """Remembers when a host's budget resets, and turns 429/5xx into retries."""
        host, headers = urlsplit(url).netloc, response.headers
        spent = headers.get("x-ratelimit-remaining") == "0"
        limited = response.status_code == 429 or (response.status_code == 403 and (spent or "retry-after" in headers))
        if spent or limited:
            reset = _reset_time(headers)
            if reset is not None:
                self.defer_host(url, reset)
        if limited:
            self.stats["rate_limited"] += 1
            reset = self._reset_at.get(host)
            raise _Retry(f"HTTP {response.status_code} (rate limited)",
                         max(0.0, reset - time.time()) if reset else None)
        if response.status_code >= 500:
            raise _Retry(f"HTTP {response.status_code}")

    def _cache_key(self, url: str, params: dict[str, Any] | None) -> str:
        return hashlib.sha256(json.dumps([url, sorted((params or {}).items())]).encode()).hexdigest()[:32]

    def _cached_meta(self, key: str) -> dict[str, str]:
        path = self.cache_dir / f"{key}.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save_meta(self, key: str, meta: dict[str, str]) -> None:
        atomic_write(self.cache_dir / f"{key}.json", json.dumps(meta).encode())


def _with_etag(headers: dict[str, str] | None, etag: str | None) -> dict[str, str]:
    return {**(headers or {}), **({"if-none-match": etag} if etag else {})}


def _reset_time(headers: httpx.Headers) -> float | None:
    """Epoch seconds when the budget resets, from retry-after (seconds or a date) or x-ratelimit-reset."""
    if retry_after := headers.get("retry-after"):
        if retry_after.strip().isdigit():
            return time.time() + int(retry_after)
        try:
            return email.utils.parsedate_to_datetime(retry_after).timestamp()
        except (TypeError, ValueError):
            return None
    if reset := headers.get("x-ratelimit-reset"):
        try:
            return float(reset)
        except ValueError:
            return None
    return None


async def _read_body(response: httpx.Response, max_bytes: int, url: str, sink: Callable[[bytes], Any],
                     too_large: type[Exception] = BadAnswer) -> int:
    """Streams the body into `sink`, inflating gzip/deflate here a bounded piece at a time; returns its size.
    Over `max_bytes` once inflated: `too_large`, whatever the compressed size."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
        raise BadAnswer(f"{url}: unsupported content-encoding {encoding[:40]!r}")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if "gzip" in encoding else 0))
    size = 0
    try:
        async for raw in response.aiter_raw():
            for piece in (_inflate(inflater, raw) if encoding not in ("", "identity") else (raw,)):
                size += len(piece)
                if size > max_bytes:
                    raise too_large(f"too large: {url} is over the {max_bytes}-byte cap"
                                    + (" once inflated" if encoding not in ("", "identity") else ""))
                sink(piece)
    except zlib.error as error:
        raise BadAnswer(f"{url}: the {encoding} body is corrupt ({error})") from None
    return size


def _inflate(inflater: Any, data: bytes, piece: int = 1 << 20) -> Iterator[bytes]:
    """What `data` inflates to, in pieces of at most `piece` bytes: a bomb never sits in memory whole."""
    while True:
        out = inflater.decompress(data, piece)
        yield out
        data = inflater.unconsumed_tail
        if not data and len(out) < piece:
            return


def _json(url: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadAnswer(f"{url}: the answer is not JSON ({body[:80]!r})") from None
    except RecursionError:
        raise BadAnswer(f"{url}: the JSON answer is nested too deeply") from None


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code == 404:
        raise UnitRejected(f"not found: {response.request.url} answered 404")
    if response.status_code in (401, 403):
        raise FetchFailed(f"{response.request.url} answered {response.status_code}: check the API key or token "
                          f"(Hex: HEX_API_KEY, GitHub: GITHUB_TOKEN).")
    if response.status_code >= 400:
        raise FetchFailed(f"{response.request.url} answered {response.status_code}.")
