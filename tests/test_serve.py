"""launch/serve.py for real: llama.cpp's OpenAI-compatible server on an exported GGUF, on 127.0.0.1 and a free
port, talked to with httpx. Streamed completions (server-sent events) equal the non-streamed greedy run, chat
included; a missing or wrong API key gets 401; a request beyond --max_concurrent gets 429."""

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devstral_jax.config import preset
from tests.serving_helpers import CONVERSATION, random_gguf

ROOT = Path(__file__).resolve().parents[1]
CONFIG = preset("tiny", num_layers=1)
KEY = "test-key-5f0c"
PROMPT = "defmodule Greeter do\n  def hello(name), do:"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """launch/serve.py on a one-layer random model's F16 GGUF, at most one request at a time; yields its URL."""
    path = tmp_path_factory.mktemp("serve") / "devstral-elixir-f16.gguf"
    random_gguf(path, CONFIG, seed=11)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "launch/serve.py", f"--gguf={path.parent}", f"--port={port}", "--max_concurrent=1",
         "--n_ctx=256", "--n_threads=2"],
        cwd=ROOT, env={**os.environ, "DEVSTRAL_API_KEY": KEY}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=5) as client:
            for _ in range(600):  # until the model is loaded and uvicorn listens (a few seconds; bounded)
                if process.poll() is not None:
                    pytest.fail(f"launch/serve.py exited: {process.stdout.read()[-3000:]}")
                try:
                    if client.get(f"{url}/v1/models", headers=_auth()).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            else:
                pytest.fail("launch/serve.py did not start listening")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _events(client: httpx.Client, url: str, body: dict) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order."""
    with client.stream("POST", url, json={**body, "stream": True}, headers=_auth()) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return [line.removeprefix("data:").strip() for line in response.iter_lines() if line.startswith("data:")]


def test_streamed_completions_equal_the_greedy_non_streamed_run(server):
    with httpx.Client(timeout=120) as client:
        body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0.0}
        events = _events(client, f"{server}/v1/completions", body)
        assert events[-1] == "[DONE]"
        pieces = [json.loads(event)["choices"][0]["text"] for event in events[:-1]]
        whole = client.post(f"{server}/v1/completions", json=body, headers=_auth()).json()
        assert whole["usage"]["completion_tokens"] == 24 and len([p for p in pieces if p]) > 1
        assert "".join(pieces) == whole["choices"][0]["text"]

        body = {"messages": CONVERSATION, "max_tokens": 16, "temperature": 0.0}
        events = _events(client, f"{server}/v1/chat/completions", body)
        assert events[-1] == "[DONE]"
        deltas = [json.loads(event)["choices"][0]["delta"].get("content") or "" for event in events[:-1]]
        whole = client.post(f"{server}/v1/chat/completions", json=body, headers=_auth()).json()
        assert "".join(deltas) == whole["choices"][0]["message"]["content"] and len([d for d in deltas if d]) > 1


def test_a_missing_or_wrong_api_key_gets_401(server):
    with httpx.Client(timeout=60) as client:
        body = {"prompt": PROMPT, "max_tokens": 2}
        assert client.post(f"{server}/v1/completions", json=body).status_code == 401
        assert client.post(f"{server}/v1/completions", json=body, headers=_auth("wrong")).status_code == 401
        assert client.post(f"{server}/v1/chat/completions", json={"messages": CONVERSATION},
                           headers=_auth("wrong")).status_code == 401
        assert client.get(f"{server}/v1/models", headers=_auth("wrong")).status_code == 401


def _hold(url: str, body: bytes) -> socket.socket:
    """A completion request sent but for its body's last byte, so the server holds it in flight."""
    host, port = url.removeprefix("http://").split(":")
    held = socket.create_connection((host, int(port)))
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    held.sendall(head.encode() + body[:-1])
    return held


def _answered(held: socket.socket) -> bool:
    return bool(select.select([held], [], [], 0)[0])


def _response(held: socket.socket) -> tuple[int, bytes]:
    """The status and body of the response on `held`, read to the end (the server closes it)."""
    data = b""
    while chunk := held.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_a_request_beyond_max_concurrent_gets_429(server):
    """One completion is held in flight (its body's last byte not yet sent); meanwhile another request is refused.
    Where a probe took the only slot as the held request arrived, the held one got 429 itself: it is sent again."""
    body = json.dumps({"prompt": PROMPT, "max_tokens": 2, "temperature": 0.0}).encode()
    held = _hold(server, body)
    try:
        with httpx.Client(timeout=60) as client:
            for _ in range(2400):  # until the server has started on the held request (bounded; slow when loaded)
                response = client.get(f"{server}/v1/models", headers=_auth())
                if response.status_code == 429:
                    break
                assert response.status_code == 200
                if _answered(held):  # refused while a probe held the slot
                    assert _response(held)[0] == 429
                    held.close()
                    held = _hold(server, body)
                time.sleep(0.05)
            assert response.status_code == 429 and "1 requests in flight" in response.text
        held.sendall(body[-1:])
        status, answer = _response(held)
    finally:
        held.close()
    assert status == 200 and json.loads(answer)["choices"][0]["text"]
    with httpx.Client(timeout=60) as client:  # the slot is free again
        assert client.get(f"{server}/v1/models", headers=_auth()).status_code == 200
