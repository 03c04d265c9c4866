"""The lean HTTP/1.1 client (pipeline/engines/http1.py) against a raw socket server that writes scripted bytes.

    .venv/bin/pytest tests/test_http1.py -q

Each scripted answer is the exact bytes the server sends back for one request, so framing (Content-Length,
chunked, to the end of the connection), keep-alive and a server that closes or stalls are all covered
without a model. The engine's retries over this client are in tests/test_engine_openai.py (the stub there is
plain http, so the lean client serves it), and the real ``vllm serve`` tests there use it too.
"""

from __future__ import annotations

import asyncio
import json
import socketserver
import threading
import time

import httpx
import pytest

from pipeline.engines import GenRequest, http1
from pipeline.engines.openai import OpenAIEngine
from tests.conftest import LocalServer, free_port

OK = b'{"ok": true}'


def answer(body: bytes = OK, status: str = "200 OK", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


class RawServer(LocalServer):
    """Reads one request at a time per connection; answers with the next scripted step: bytes to send, or
    ("close",) to hang up without answering, or ("sleep", s, bytes) to answer late."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.requests: list[tuple[str, dict, bytes]] = []
        self.connections = 0
        lock = threading.Lock()
        raw = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                with lock:
                    raw.connections += 1
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    headers = {}
                    while (h := self.rfile.readline()) not in (b"\r\n", b""):
                        k, _, v = h.decode().partition(":")
                        headers[k.strip().lower()] = v.strip()
                    body = self.rfile.read(int(headers.get("content-length", 0)))
                    with lock:
                        raw.requests.append((line.decode().strip(), headers, body))
                        step = raw.steps.pop(0) if raw.steps else answer()
                    if step == ("close",):
                        return
                    if isinstance(step, tuple) and step[0] == "sleep":
                        time.sleep(step[1])
                        step = step[2]
                    try:
                        self.wfile.write(step)
                        self.wfile.flush()
                    except OSError:
                        return
                    if b"connection: close" in step.lower() or step.startswith(b"HTTP/1.0"):
                        return

        super().__init__(Handler)


@pytest.fixture
def raw(local_servers):
    return lambda steps: local_servers(RawServer, steps)


def calls(url, n=1, timeout=5.0, headers=None, path="/chat/completions"):
    """n sequential POSTs over one client; the responses (or the exception of the first that failed)."""

    async def go():
        client = http1.Client(url, headers, timeout)
        try:
            return [await client.post(path, json={"i": i, "text": "é"}) for i in range(n)]
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_content_length_answers_reuse_one_connection(raw):
    s = raw([answer(b'{"a": 1}'), answer(b'{"a": 2}', headers="X-Extra: yes\r\n"), answer(b"{}")])
    out = calls(s.url, 3, headers={"Authorization": "Bearer k"})
    assert [r.status_code for r in out] == [200, 200, 200]
    assert out[0].json() == {"a": 1} and out[1].headers["x-extra"] == "yes"
    assert s.connections == 1
    line, headers, body = s.requests[0]
    assert line == "POST /v1/chat/completions HTTP/1.1"
    assert headers["authorization"] == "Bearer k" and headers["content-type"] == "application/json"
    assert headers["host"] == s.url.split("/")[2]
    assert json.loads(body) == {"i": 0, "text": "é"}


def test_chunked_answer_with_extension_and_trailer(raw):
    body = b'{"choices": [1, 2, 3]}'
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"5;name=x\r\n"
        + body[:5]
        + b"\r\n"
        + f"{len(body) - 5:x}\r\n".encode()
        + body[5:]
        + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    s = raw([chunked, answer(b'{"next": 1}')])
    first, second = calls(s.url, 2)
    assert first.json() == {"choices": [1, 2, 3]} and second.json() == {"next": 1}
    assert s.connections == 1  # the chunked body was read to its end, so the connection stayed usable


def test_body_to_end_of_connection_and_connection_close(raw):
    s = raw([b"HTTP/1.0 200 OK\r\n\r\n" + OK, answer(headers="Connection: close\r\n"), answer()])
    out = calls(s.url, 3)
    assert [r.json() for r in out] == [{"ok": True}] * 3
    assert s.connections == 3  # neither of the first two connections could be reused


def test_error_status_and_text(raw):
    s = raw([answer(b"not json", status="503 Service Unavailable", headers="Retry-After: 2\r\n")])
    [r] = calls(s.url)
    assert r.status_code == 503 and r.text == "not json" and r.headers["retry-after"] == "2"
    with pytest.raises(ValueError):
        r.json()


def test_idle_connection_closed_by_the_server_is_replaced(raw):
    """A server that drops a keep-alive connection after answering (as uvicorn does after 5 s idle): the
    next request goes out on a fresh connection instead of failing."""
    s = raw([answer(), ("close",), answer(b'{"fresh": 1}')])
    first, second = calls(s.url, 2)
    assert second.json() == {"fresh": 1} and s.connections == 2


def test_fresh_connection_closed_without_answer_is_an_error(raw):
    s = raw([("close",)])
    with pytest.raises(http1.RemoteProtocolError, match="without sending a response"):
        calls(s.url)


def test_truncated_body_is_an_error(raw):
    s = raw([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n" + OK])
    with pytest.raises(http1.RemoteProtocolError, match="complete message body"):
        calls(s.url)


def test_garbage_is_an_error(raw):
    s = raw([b"SSH-2.0-OpenSSH\r\n\r\n"])
    with pytest.raises(http1.RemoteProtocolError, match="malformed"):
        calls(s.url)


def test_timeout_covers_the_whole_exchange_and_drops_the_connection(raw):
    s = raw([("sleep", 1.0, answer()), answer(b'{"after": 1}')])

    async def go():
        client = http1.Client(s.url, timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.post("/x", json={})
        elapsed = time.monotonic() - t0
        client.timeout = 5.0
        after = await client.post("/x", json={})
        await client.aclose()
        return elapsed, after

    elapsed, after = asyncio.run(go())
    assert 0.25 < elapsed < 0.9 and after.json() == {"after": 1}
    assert s.connections == 2  # the timed-out connection was not reused


def test_connection_refused_is_a_connect_error():
    with pytest.raises(http1.ConnectError):
        calls(f"http://127.0.0.1:{free_port()}/v1")


def test_get_sends_no_body(raw):
    s = raw([answer(b"vllm:generation_tokens_total 5\n")])

    async def go():
        client = http1.Client(s.url.removesuffix("/v1"))
        r = await client.get("/metrics")
        await client.aclose()
        return r

    assert asyncio.run(go()).text.startswith("vllm:")
    line, headers, body = s.requests[0]
    assert line == "GET /metrics HTTP/1.1" and "content-length" not in headers and body == b""


def test_usable_only_for_plain_http_without_a_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert http1.usable("http://127.0.0.1:8000/v1") and http1.usable("http://gpu-node/v1")
    assert not http1.usable("https://api.example.com/v1")
    assert not http1.usable("http://user:pw@host/v1")
    assert not http1.usable("http://host:notaport/v1")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not http1.usable("http://gpu-node/v1")
    monkeypatch.setenv("NO_PROXY", "gpu-node,127.0.0.1")
    assert http1.usable("http://gpu-node/v1") and not http1.usable("http://other/v1")


def test_engine_picks_the_client_by_url():
    engine = OpenAIEngine("http://127.0.0.1:9/v1", "m")
    assert isinstance(engine._client("http://127.0.0.1:9/v1", {}, 1.0, 1, False), http1.Client)
    assert isinstance(engine._client("https://example.com/v1", {}, 1.0, 1, None), httpx.AsyncClient)
    pinned = OpenAIEngine("http://127.0.0.1:9/v1", "m", http_client="httpx")
    assert isinstance(pinned._client("http://127.0.0.1:9/v1", {}, 1.0, 1, False), httpx.AsyncClient)
    with pytest.raises(ValueError, match="http_client"):
        OpenAIEngine("http://127.0.0.1:9/v1", "m", http_client="curl")


@pytest.mark.parametrize("client", ["auto", "httpx"])
def test_engine_error_rows_read_the_same_over_either_client(raw, client):
    """Retries of a 503, a hang-up and a timeout, then a 400: the same rows whichever client sent them."""
    err = json.dumps({"error": {"message": "bad  request\nhere"}}).encode()
    s = raw(
        [
            answer(b"{}", status="503 Service Unavailable"),
            ("close",),
            ("sleep", 0.6, answer()),
            answer(err, status="400 Bad Request"),
        ]
    )
    engine = OpenAIEngine(s.url, "m", http_client=client, max_retries=3, backoff_base=0.01, timeout=0.3)
    [r] = engine.generate([GenRequest(id="a", messages=[{"role": "user", "content": "hi"}])])
    assert r.error == "http_400: bad request here" and not r.transient
    assert len(s.requests) == 4

    s2 = raw([answer(b"{}", status="503 Service Unavailable")] * 2)
    engine = OpenAIEngine(s2.url, "m", http_client=client, max_retries=1, backoff_base=0.01)
    [r] = engine.generate([GenRequest(id="a", messages=[{"role": "user", "content": "hi"}])])
    assert r.error == "gave_up after 1 retries: http_503: {}" and r.transient

    dead = f"http://127.0.0.1:{free_port()}/v1"
    engine = OpenAIEngine(dead, "m", http_client=client, max_retries=0)
    [r] = engine.generate([GenRequest(id="a", messages=[{"role": "user", "content": "hi"}])])
    assert r.error == "gave_up after 0 retries: connection_error: ConnectError" and r.transient
