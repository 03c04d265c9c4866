"""A lean HTTP/1.1 client on asyncio streams, for the openai engine's plain ``http://`` servers.

On a small machine the client and a local ``vllm serve`` share the cores, and every millisecond of CPU the
client spends per request is one the server does not get. httpx is general (TLS, proxies, HTTP/2, cookies,
redirects, a layered transport) and pays for it on each request, more the more requests are in flight
(its connection pool). This client does only what a JSON POST to an inference server needs: against a stub
server holding every request for 1 s, the engine spent 0.16 ms of CPU per request with it and 1.96 ms with
httpx at 128 in flight, 0.14 ms and 13.2 ms at 512 (``scripts/bench_generate.py --client-cpu``).

- keep-alive connections, one request at a time each, reused from an idle list (the caller bounds how many
  requests are in flight, so it bounds the connections too); an idle connection the server has closed is
  replaced by a fresh one;
- answers sized by Content-Length, by chunked transfer coding, or by the server closing the connection;
- one deadline per request (connecting, sending and the whole answer), raised as the builtin ``TimeoutError``.

No TLS, proxies, redirects, compression or HTTP/2: ``usable(url)`` says when a URL needs none of them, and
the engine keeps httpx for every other URL. Failures are named like httpx's (``ConnectError``,
``WriteError``, ``ReadError``, ``RemoteProtocolError``), so the engine's error rows read the same whichever
client sent the request.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request


class TransportError(Exception):
    """The exchange failed before a whole answer came back."""


class ConnectError(TransportError):
    pass


class WriteError(TransportError):
    pass


class ReadError(TransportError):
    pass


class RemoteProtocolError(TransportError):
    pass


def usable(url: str) -> bool:
    """True for a plain ``http://host[:port][/path]`` URL that no proxy setting in the environment covers."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.username or parts.password:
        return False
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    proxies = urllib.request.getproxies_environment()
    if proxies.get("http") or proxies.get("all"):
        return bool(urllib.request.proxy_bypass_environment(parts.hostname, proxies))
    return True


class Response:
    """The parts of an httpx response the engine reads."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers  # names in lower case
        self.content = content

    def json(self):
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class Client:
    """``await client.post(path, json=...)`` / ``get(path)`` against one server; ``await client.aclose()``."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 600.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        fixed = {"Host": parts.netloc, "Accept": "*/*", "User-Agent": "distill", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, json: object) -> Response:  # noqa: A002 - httpx's keyword
        body = _dumps(json)
        return await self.request("POST", path, body, "Content-Type: application/json\r\n")

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def request(self, method: str, path: str, body: bytes = b"", extra: str = "") -> Response:
        length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\n{self._fixed}{extra}{length}\r\n".encode("latin-1")
        async with asyncio.timeout(self.timeout):
            while True:
                reused = bool(self._idle)
                reader, writer = self._idle.pop() if reused else await self._connect()
                if reused and (reader.at_eof() or writer.is_closing()):
                    writer.close()  # the server has closed it since (uvicorn does after 5 s idle)
                    continue
                try:
                    response, keep = await _exchange(reader, writer, head + body, method)
                except _Closed as e:
                    writer.close()
                    if reused:
                        continue  # the server closed this idle connection as we picked it: use a fresh one
                    raise e.error from None
                except BaseException:
                    writer.close()  # a half-read answer (or a timeout) leaves the connection unusable
                    raise
                if keep and not reader.at_eof():
                    self._idle.append((reader, writer))
                else:
                    writer.close()
                return response

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection(self.host, self.port)
        except OSError as e:
            raise ConnectError(str(e) or type(e).__name__) from e

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            try:
                await writer.wait_closed()
            except OSError:
                pass


class _Closed(Exception):
    """The server closed the connection before the first byte of an answer; ``error`` is what that means on
    a fresh connection (on a reused one, the server had closed it while idle)."""

    def __init__(self, error: TransportError) -> None:
        self.error = error


def _dumps(obj: object) -> bytes:
    # What httpx sends for json=: compact, UTF-8, no NaN.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


async def _exchange(reader, writer, data: bytes, method: str) -> tuple[Response, bool]:
    """Send one request and read its answer; (response, may the connection be reused)."""
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError as e:
        raise _Closed(WriteError(str(e) or type(e).__name__)) from e
    except OSError as e:
        raise WriteError(str(e) or type(e).__name__) from e
    try:
        while True:
            try:
                line = await reader.readline()
            except ConnectionError as e:
                raise _Closed(ReadError(str(e) or type(e).__name__)) from e
            if not line:
                raise _Closed(RemoteProtocolError("Server disconnected without sending a response."))
            version, status, headers = await _head(reader, line)
            if not 100 <= status < 200:  # an informational answer comes before the real one
                break
        if method == "HEAD" or status in (204, 304):
            content = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            content = await _chunked(reader)
        elif "content-length" in headers:
            content = await reader.readexactly(int(headers["content-length"]))
        else:
            content = await reader.read()  # the body runs to the end of the connection
            return Response(status, headers, content), False
    except asyncio.IncompleteReadError as e:
        raise RemoteProtocolError("peer closed connection without sending complete message body") from e
    except (ValueError, asyncio.LimitOverrunError) as e:
        raise RemoteProtocolError(f"malformed response: {e}") from e
    except OSError as e:
        raise ReadError(str(e) or type(e).__name__) from e
    connection = headers.get("connection", "").lower()
    keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return Response(status, headers, content), keep


async def _head(reader: asyncio.StreamReader, status_line: bytes) -> tuple[str, int, dict[str, str]]:
    version, _, rest = status_line.decode("latin-1").partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            return version, status, headers
        if not line:
            raise asyncio.IncompleteReadError(line, None)
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ValueError(f"bad header line: {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readline()).split(b";", 1)[0].strip() or b"x", 16)  # b"x": an empty line
        if size == 0:
            break
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailer fields, ignored
        pass
    return b"".join(parts)
