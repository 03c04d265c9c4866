"""Teacher generation over HTTP from any OpenAI-compatible chat server, e.g. ``vllm serve``.

    python -m vllm.entrypoints.openai.api_server --model DIR --host 127.0.0.1 --port 8000 \\
        --dtype float32 --enforce-eager --max-model-len 1024 \\
        --no-enable-chunked-prefill --max-num-batched-tokens 8192    # CPU: avoids the seeded-prefill crash

    from pipeline.engines.openai import OpenAIEngine
    engine = OpenAIEngine(["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"], "DIR", concurrency=64)
    results = engine.generate(requests)

Each server gets its own async httpx client and ``concurrency`` workers that pull requests from one shared
queue, so a fast server takes more of the work and a slow or dead one less. A request that fails with 429,
a 5xx, a timeout or a dropped connection is retried with exponential backoff and full jitter (and never
sooner than the server's ``Retry-After``). Anything else, or a request still failing after ``max_retries``
retries, becomes ``GenResult(error=...)``: one bad prompt never stops a run. Failures that may go away
(server errors, timeouts, refused connections) are marked ``transient``; the generate stage leaves those
rows to be retried on resume (or by ``distill retry``) instead of rejecting them for good.

The API key is read from the environment variable named by ``api_key_env`` and lives only in the
client's headers; it is never part of a result, an error message or a log line.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Callable

from pipeline.engines import GenRequest, GenResult, Sample

Progress = Callable[[int, int], None]  # (rows finished, completion tokens of those rows)

DEFAULT_CONCURRENCY = 64  # requests in flight per server; 64 keeps one vLLM server's batch full
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIEngine:
    """``generate(requests) -> results`` against ``{base_url}/chat/completions``."""

    name = "openai"

    def __init__(
        self,
        base_url: str | list[str],
        model_name: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = 600.0,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        token_ids: bool = True,
    ) -> None:
        """``token_ids`` asks the server for top-k token ids (vLLM's ``return_tokens_as_token_ids``);
        turn it off for servers that reject unknown fields; top-k columns are then left empty.
        ``concurrency`` is per server: with several base URLs, each gets that many requests in flight."""
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ValueError("OpenAIEngine needs at least one base URL")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.base_url = self.base_urls[0]
        self.model_name = model_name
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.token_ids = token_ids
        self.options = {
            "base_url": self.base_urls if len(self.base_urls) > 1 else self.base_url,
            "model_name": model_name,
            "api_key_env": api_key_env,  # the variable's name, never its value
            "concurrency": concurrency,
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
        thread = threading.Thread(target=lambda: box.setdefault("r", asyncio.run(coro)))
        thread.start()
        thread.join()
        return box["r"]

    async def agenerate(
        self, requests: list[GenRequest], progress: Progress | None = None
    ) -> list[GenResult]:
        import httpx

        headers = {}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        results: list[GenResult | None] = [None] * len(requests)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(requests)):
            queue.put_nowait(i)
        workers = min(self.concurrency, max(1, len(requests)))
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)

        async def worker(client) -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results[i] = result = await self._request(client, requests[i])
                if progress is not None:
                    progress(1, sum(s.completion_tokens for s in result.samples))

        clients = [
            httpx.AsyncClient(base_url=url, headers=headers, timeout=self.timeout, limits=limits)
            for url in self.base_urls
        ]
        try:
            await asyncio.gather(*(worker(c) for c in clients for _ in range(workers)))
        finally:
            for client in clients:
                await client.aclose()
        return results  # type: ignore[return-value] - every index was filled by a worker

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

    async def _request(self, client, req: GenRequest) -> GenResult:
        import httpx

        body = self._body(req)
        last = "unknown"
        for attempt in range(self.max_retries + 1):
            retry_after = 0.0
            try:
                resp = await client.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                last = f"timeout after {self.timeout:g}s"
            except httpx.TransportError as e:
                last = f"connection_error: {type(e).__name__}"
            else:
                if resp.status_code == 200:
                    try:
                        return _parse(req, resp.json())
                    except (ValueError, KeyError, TypeError, IndexError) as e:
                        return GenResult(id=req.id, error=f"bad_response: {type(e).__name__}: {str(e)[:200]}")
                message = _error_message(resp)
                if resp.status_code not in RETRY_STATUS:
                    return GenResult(id=req.id, error=_classify(resp.status_code, message))
                last = f"http_{resp.status_code}: {message}"
                retry_after = _retry_after(resp.headers.get("retry-after"))
            if attempt == self.max_retries:
                break
            # Full jitter: spreads retries of many concurrent requests instead of retrying in lockstep.
            delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
            await asyncio.sleep(max(delay, min(retry_after, self.backoff_max)))
        return GenResult(id=req.id, error=f"gave_up after {self.max_retries} retries: {last}", transient=True)


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
