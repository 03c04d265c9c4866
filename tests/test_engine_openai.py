"""The openai engine: against a real vLLM OpenAI server on 127.0.0.1, and a stub server for retries/timeouts.

    .venv/bin/pytest tests/test_engine_openai.py -q

The real server (``python -m vllm.entrypoints.openai.api_server`` on the embedded model) takes ~40 s to
start; it is started once for this module and stopped afterwards. The stub only scripts failures
(503, 429 with Retry-After, slow replies) that a real server cannot be made to produce on demand.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from pipeline.engines import GenRequest
from pipeline.engines.openai import OpenAIEngine
from tests.conftest import LocalServer, free_port

Q = [{"role": "user", "content": "What is 3 + 5?"}]


# --------------------------------------------------------------------------- real vLLM server


class Server:
    """``python -m vllm.entrypoints.openai.api_server`` on the embedded model, on a fixed port, so a test can
    stop it (SIGKILL, as a crashed node would) and start it again at the same URL."""

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_path,
            "--served-model-name", "smol", "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
            # The per-request-seed crash workaround (see pipeline/engines/vllm.py and the README).
            "--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192",
        ]  # fmt: skip
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        # A process group of its own, so stopping it also stops its engine-core child.
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url.removesuffix("/v1") + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("vLLM server did not become healthy in 300 s")
            time.sleep(1)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.proc = None


@pytest.fixture(scope="module")
def server(model_path):
    srv = Server(model_path)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def vllm_server(server):
    if server.proc is None:
        server.start()
    return server.url


def test_real_server_samples_logprobs_and_seeds(vllm_server):
    engine = OpenAIEngine(vllm_server, "smol", concurrency=4)
    reqs = [
        GenRequest(id=str(i), messages=Q, n=2, temperature=0.9, max_tokens=12, seed=i, logprobs=3)
        for i in range(4)
    ]
    first = engine.generate(reqs)
    again = engine.generate(reqs)
    assert [r.id for r in first] == ["0", "1", "2", "3"]
    for r in first:
        assert r.error is None and r.prompt_tokens > 10 and len(r.samples) == 2
        for s in r.samples:
            assert s.finish_reason in ("stop", "length")
            assert 0 < s.completion_tokens <= 12
            assert len(s.topk_ids) == len(s.topk_logprobs) == s.completion_tokens
            assert all(len(ids) == 3 and all(isinstance(t, int) for t in ids) for ids in s.topk_ids)
            assert all(lps == sorted(lps, reverse=True) for lps in s.topk_logprobs)
    assert [[s.text for s in r.samples] for r in first] == [[s.text for s in r.samples] for r in again]


def test_real_server_rejects_too_long_prompt_without_crashing(vllm_server):
    engine = OpenAIEngine(vllm_server, "smol", max_retries=1)
    long = [{"role": "user", "content": "word " * 1000}]
    ok, bad = engine.generate(
        [GenRequest(id="ok", messages=Q, max_tokens=4), GenRequest(id="bad", messages=long, max_tokens=4)]
    )
    assert ok.error is None and ok.samples[0].completion_tokens > 0
    assert bad.error and not bad.samples
    assert bad.error.startswith(("prompt_too_long", "http_400")), bad.error


def test_real_server_greedy_n1_counts_tokens(vllm_server):
    engine = OpenAIEngine(vllm_server, "smol")
    [r] = engine.generate([GenRequest(id="g", messages=Q, max_tokens=8)])
    assert r.samples[0].completion_tokens > 0 and r.samples[0].topk_ids is None


def test_real_server_lean_client_and_httpx_read_the_same_answers(vllm_server):
    """Plain http goes over the lean client (pipeline/engines/http1.py); httpx reads the same seeded answers,
    logprobs included, from the same server."""
    from pipeline.engines import http1

    reqs = [
        GenRequest(id=str(i), messages=Q, n=2, temperature=0.9, max_tokens=10, seed=i, logprobs=2)
        for i in range(8)
    ]
    lean = OpenAIEngine(vllm_server, "smol")
    assert isinstance(lean._client(vllm_server, {}, 1.0, 1, False), http1.Client)

    def read(results):
        assert all(r.error is None for r in results)
        return [
            (r.prompt_tokens, [(s.text, s.completion_tokens, s.topk_ids) for s in r.samples]) for r in results
        ]

    assert read(lean.generate(reqs)) == read(
        OpenAIEngine(vllm_server, "smol", http_client="httpx").generate(reqs)
    )


def _prompts_file(path, n: int):
    from pipeline.tasks import load_task

    path.write_text("".join(json.dumps(r) + "\n" for r in load_task("arithmetic", split="train", n=n)))
    return path


def test_cli_generate_openai_exits_0(vllm_server, tmp_path):
    """The whole command as a user types it, with seeds and n=2 at the default 64 requests in flight."""
    from conftest import run_cli

    from pipeline import store

    inp = _prompts_file(tmp_path / "prompts.jsonl", 64)
    out = tmp_path / "gen"
    proc = run_cli(
        "generate", "--input", str(inp), "--output", str(out), "--teacher", "smol", "--engine", "openai",
        "--base-url", vllm_server, "--n", "2", "--max-tokens", "8", "--temperature", "0.8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = store.read_manifest(out)
    assert manifest["rows_out"] == 128 and manifest["rejected_by_reason"] == {}
    assert manifest["tokens_by_teacher"]["smol"]["completion_tokens"] > 0


def test_seeded_and_unseeded_runs_complete_at_128_in_flight(vllm_server, tmp_path):
    """The stage at its defaults puts all 128 prompts in flight at once, with seeds and with `seed: null`."""
    from pipeline import store
    from pipeline.recipe import ModelConfig, RunContext
    from pipeline.stages import generate

    inp = _prompts_file(tmp_path / "prompts.jsonl", 128)
    ctx = RunContext(teachers=[ModelConfig(model="smol", engine="openai", base_url=vllm_server)])
    for seed, out in ((0, tmp_path / "seeded"), (None, tmp_path / "unseeded")):
        cfg = generate.Config(
            n=1, temperature=0.8, max_tokens=4, seed=seed, system_template="system/default.jinja"
        )
        manifest = generate.run(cfg, inp, out, context=ctx, progress=False)
        assert manifest["rows_out"] == 128 and manifest["rejected_by_reason"] == {}
        assert manifest["seeded"] is (seed is not None) and manifest["sampling"]["seed"] == seed
        c = manifest["concurrency"]["smol"]
        assert c["mode"] == "adaptive" and c["start"] == c["peak_in_flight"] == 128 and c["backoffs"] == 0
        seeds = store.load_table(out / "data").column("seed").to_pylist()
        assert all(s is None for s in seeds) if seed is None else all(isinstance(s, int) for s in seeds)


def test_server_stopped_mid_stage_then_restarted_every_row_answered(server, tmp_path):
    """SIGKILL the server after the first shard; the rows that then fail are owed a retry, not rejected,
    and rerunning the stage against the restarted server answers every one of them."""
    from pipeline import store
    from pipeline.errors import RetryPending
    from pipeline.recipe import ModelConfig, RunContext
    from pipeline.stages import generate

    if server.proc is None:
        server.start()
    inp = _prompts_file(tmp_path / "prompts.jsonl", 24)
    out = tmp_path / "gen"
    cfg = generate.Config(n=1, temperature=0.8, max_tokens=12, seed=0, shard_size=4)
    teacher = ModelConfig(
        model="smol", engine="openai", base_url=server.url, concurrency=4, max_retries=1, backoff_base=0.05
    )
    ctx = RunContext(teachers=[teacher])
    stopped = threading.Event()

    def stop_after_first_shard():
        deadline = time.time() + 120
        while time.time() < deadline:
            if list((out / "shards").glob("*/.done")):
                server.stop(signal.SIGKILL)
                stopped.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=stop_after_first_shard, daemon=True)
    killer.start()
    with pytest.raises(RetryPending, match="distill retry"):
        generate.run(cfg, inp, out, context=ctx, progress=False)
    killer.join()
    assert stopped.is_set()
    status = store.stage_status(out)
    assert status["status"] == "partial" and status["shards_retry"] >= 1
    server.start()
    manifest = generate.run(cfg, inp, out, context=ctx, progress=False)
    assert manifest["rows_out"] == 24 and manifest["rejected_by_reason"] == {}
    rows = store.load_table(out / "data").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted({r["id"] for r in rows})
    assert all(r["completion"] for r in rows)


# --------------------------------------------------------------------------- stub server for failures


class Stub(LocalServer):
    """A scripted OpenAI-compatible server: each POST takes the next (status, headers, delay) step."""

    def __init__(self, steps, metrics: bool = False, error: str | None = None):
        self.steps = list(steps)
        self.calls: list[dict] = []
        self.in_flight = self.peak = 0
        self.generated = 0.0  # what GET /metrics reports as vllm:generation_tokens_total (metrics=True)
        lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                if not metrics or self.path != "/metrics":
                    self.send_error(404)
                    return
                text = f'# TYPE x counter\nvllm:generation_tokens_total{{engine="0"}} {stub.generated}\n'
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    stub.calls.append(
                        {"t": time.monotonic(), "auth": self.headers.get("Authorization"), "body": body}
                    )
                    status, headers, delay = stub.steps.pop(0) if stub.steps else (200, {}, 0)
                    stub.in_flight += 1
                    stub.peak = max(stub.peak, stub.in_flight)
                try:
                    time.sleep(delay)
                finally:
                    with lock:
                        stub.in_flight -= 1
                payload = (
                    {
                        "choices": [
                            {
                                "index": 0,
                                "message": {"content": "8"},
                                "finish_reason": "stop",
                                "logprobs": None,
                            }
                        ],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
                    }
                    if status == 200
                    else {"error": {"message": error or f"scripted {status}"}}
                )
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def log_message(self, *args):
                pass

        super().__init__(Handler, ThreadingHTTPServer)


@pytest.fixture
def stub(local_servers):
    return lambda steps, **kw: local_servers(Stub, steps, **kw)


def _engine(url, **kw):
    kw.setdefault("backoff_base", 0.05)
    return OpenAIEngine(url, "m", **kw)


def test_retries_5xx_then_succeeds(stub):
    s = stub([(503, {}, 0), (500, {}, 0), (502, {}, 0)])
    [r] = _engine(s.url).generate([GenRequest(id="a", messages=Q)])
    assert r.error is None and r.samples[0].text == "8" and r.samples[0].completion_tokens == 2
    assert len(s.calls) == 4


def test_429_honours_retry_after(stub):
    s = stub([(429, {"Retry-After": "1"}, 0)])
    [r] = _engine(s.url).generate([GenRequest(id="a", messages=Q)])
    assert r.error is None
    assert s.calls[1]["t"] - s.calls[0]["t"] >= 0.95


def test_timeout_is_retried_then_reported(stub):
    s = stub([(200, {}, 1.0)] * 3)
    [r] = _engine(s.url, timeout=0.3, max_retries=2).generate([GenRequest(id="a", messages=Q)])
    assert r.error.startswith("gave_up after 2 retries: timeout")
    assert len(s.calls) == 3 and not r.samples


def test_timeout_then_success(stub):
    s = stub([(200, {}, 1.0)])
    [r] = _engine(s.url, timeout=0.3).generate([GenRequest(id="a", messages=Q)])
    assert r.error is None and len(s.calls) == 2


def test_client_errors_are_not_retried(stub):
    s = stub([(400, {}, 0)])
    [r] = _engine(s.url).generate([GenRequest(id="a", messages=Q)])
    assert r.error == "http_400: scripted 400" and len(s.calls) == 1


def test_connection_refused_gives_error_row():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    [r] = _engine(url, max_retries=2).generate([GenRequest(id="a", messages=Q)])
    assert r.error.startswith("gave_up after 2 retries: connection_error")


def test_concurrency_is_bounded(stub):
    s = stub([(200, {}, 0.2)] * 12)
    t0 = time.monotonic()
    results = _engine(s.url, concurrency=4).generate([GenRequest(id=str(i), messages=Q) for i in range(12)])
    elapsed = time.monotonic() - t0
    assert all(r.error is None for r in results)
    assert elapsed >= 0.55  # 12 requests of 0.2 s, 4 at a time: at least 3 rounds


def test_api_key_from_env_is_sent_but_never_reported(stub, monkeypatch):
    monkeypatch.setenv("DISTILL_TEST_KEY", "sk-secret-123")
    s = stub([(401, {}, 0)])
    engine = _engine(s.url, api_key_env="DISTILL_TEST_KEY")
    [r] = engine.generate([GenRequest(id="a", messages=Q)])
    assert s.calls[0]["auth"] == "Bearer sk-secret-123"
    assert "sk-secret" not in r.error and "sk-secret" not in repr(engine)
    assert "sk-secret" not in json.dumps(engine.options)


def test_request_body_carries_sampling_settings(stub):
    s = stub([])
    req = GenRequest(id="a", messages=Q, n=1, temperature=0.5, top_p=0.9, max_tokens=7, stop=["\n"], seed=11)
    _engine(s.url).generate([req])
    body = s.calls[0]["body"]
    assert body["model"] == "m" and body["messages"] == Q
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"], body["seed"]) == (
        0.5, 0.9, 7, ["\n"], 11
    )  # fmt: skip


def test_generate_leaves_no_connection_open_so_close_has_nothing_to_free(stub):
    """`close` frees nothing because each generate call closes its own connections: check that it does, and
    that the engine still works after close (the loop keeps engines across rounds)."""

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    s = stub([(200, {}, 0)] * 9)
    engine = _engine(s.url, concurrency=4)
    before = open_fds()
    results = engine.generate([GenRequest(id=str(i), messages=Q) for i in range(8)])
    assert [r.error for r in results] == [None] * 8
    deadline = time.time() + 5  # the in-process server closes its side when it reads the client's close
    while open_fds() > before and time.time() < deadline:
        time.sleep(0.05)
    assert open_fds() == before, "a connection (or the call's event loop) outlived generate"
    engine.close()
    engine.close()
    [again] = engine.generate([GenRequest(id="again", messages=Q)])
    assert again.error is None and again.samples[0].text == "8"


def test_several_base_urls_share_the_work(stub):
    a, b = stub([(200, {}, 0.05)] * 20), stub([(200, {}, 0.05)] * 20)
    results = _engine([a.url, b.url], concurrency=2).generate(
        [GenRequest(id=str(i), messages=Q) for i in range(20)]
    )
    assert [r.id for r in results] == [str(i) for i in range(20)]
    assert all(r.error is None for r in results)
    assert len(a.calls) + len(b.calls) == 20 and a.calls and b.calls


def test_a_dead_server_in_the_list_leaves_the_work_to_the_live_one(stub):
    live = stub([(200, {}, 0)] * 10)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    results = _engine([dead, live.url], concurrency=2, max_retries=0).generate(
        [GenRequest(id=str(i), messages=Q) for i in range(10)]
    )
    failed = [r for r in results if r.error]
    assert all(r.transient and r.error.startswith("gave_up") for r in failed)
    assert len(live.calls) == 10 - len(failed) > 0


def test_transient_failures_are_owed_a_retry_not_rejected(stub, tmp_path):
    """503s past max_retries leave the stage partial (exit 1 from the CLI); a rerun answers those rows, and
    `merge --keep-failed` would have rejected them instead."""
    from pipeline import store
    from pipeline.errors import RetryPending
    from pipeline.recipe import ModelConfig, RunContext
    from pipeline.runner import merge
    from pipeline.stages import generate

    rows = [{"id": f"p{i}", "task": "custom", "prompt": f"What is {i} + 1?"} for i in range(6)]
    inp = tmp_path / "p.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = generate.Config(n=1, max_tokens=4, shard_size=3)
    s = stub([(503, {}, 0)] * 2)  # the first two requests fail, everything after succeeds
    teacher = ModelConfig(model="m", engine="openai", base_url=s.url, concurrency=1, max_retries=0)
    ctx = RunContext(teachers=[teacher])
    with pytest.raises(RetryPending, match="2 rows failed"):
        generate.run(cfg, inp, tmp_path / "gen", context=ctx, progress=False)
    assert store.stage_status(tmp_path / "gen")["shards_retry"] == 1
    with pytest.raises(Exception, match="not done"):
        merge(tmp_path / "gen")
    manifest = generate.run(cfg, inp, tmp_path / "gen", context=ctx, progress=False)
    assert manifest["rows_out"] == 6 and manifest["rejected_by_reason"] == {}
    assert manifest["tokens_by_teacher"]["m"]["rows"] == 6
    assert len(s.calls) == 8  # 6 rows + the 2 failed tries, nothing answered twice

    s2 = stub([(503, {}, 0)] * 2)
    ctx2 = RunContext(teachers=[ModelConfig(model="m", engine="openai", base_url=s2.url, max_retries=0)])
    with pytest.raises(RetryPending):
        generate.run(cfg, inp, tmp_path / "gen2", context=ctx2, progress=False)
    kept = merge(tmp_path / "gen2", keep_failed=True)
    assert kept["rows_out"] == 4 and sum(kept["rejected_by_reason"].values()) == 2


def test_default_puts_every_request_in_flight_and_records_it(stub):
    s = stub([(200, {}, 0.3)] * 12)
    engine = _engine(s.url)
    t0 = time.monotonic()
    results = engine.generate([GenRequest(id=str(i), messages=Q) for i in range(12)])
    assert time.monotonic() - t0 < 1.0  # one round of 0.3 s, not three
    assert all(r.error is None for r in results) and s.peak == 12
    assert engine.last_stats == {
        "mode": "adaptive", "start": 12, "peak_in_flight": 12, "lowest": 12, "end": 12, "backoffs": 0
    }  # fmt: skip


def test_max_num_seqs_and_max_concurrency_bound_the_start(stub):
    s = stub([(200, {}, 0.05)] * 20)
    engine = _engine(s.url, max_num_seqs=5)
    engine.generate([GenRequest(id=str(i), messages=Q) for i in range(20)])
    assert s.peak <= 5 and engine.last_stats["start"] == 5
    engine = _engine(s.url, max_concurrency=3)
    engine.generate([GenRequest(id=str(i), messages=Q) for i in range(9)])
    assert engine.last_stats["start"] == 3


def test_overload_halves_the_window_then_it_grows_back(stub):
    """503s on the first round: the window halves once for that round (not once per failed request), the
    work still completes, and later successes grow it back."""
    s = stub([(503, {}, 0.05)] * 16 + [(200, {}, 0.05)] * 200)
    engine = _engine(s.url, backoff_base=0.01)
    results = engine.generate([GenRequest(id=str(i), messages=Q) for i in range(16)])
    assert all(r.error is None for r in results)
    stats = engine.last_stats
    assert stats["mode"] == "adaptive" and stats["start"] == 16
    assert stats["backoffs"] >= 1 and stats["lowest"] <= 8
    assert stats["backoffs"] < 16  # requests sent before a cut do not cut again
    assert stats["end"] >= stats["lowest"]


def test_pinned_concurrency_never_adapts(stub):
    s = stub([(429, {}, 0)] * 4 + [(200, {}, 0.05)] * 12)
    engine = _engine(s.url, concurrency=4, backoff_base=0.01)
    assert all(
        r.error is None for r in engine.generate([GenRequest(id=str(i), messages=Q) for i in range(12)])
    )
    assert s.peak <= 4
    assert engine.last_stats["mode"] == "pinned" and engine.last_stats["backoffs"] == 0


def test_no_seed_sends_no_seed_field(stub):
    s = stub([])
    _engine(s.url).generate([GenRequest(id="a", messages=Q, temperature=0.8, seed=None)])
    assert "seed" not in s.calls[0]["body"]


def test_a_server_refusing_seeds_stops_with_one_line_naming_the_option(stub):
    from pipeline.errors import UserError

    s = stub([(400, {}, 0)] * 3, error="Unrecognized request argument supplied: seed")
    with pytest.raises(UserError, match=r"seed: null.*--no-seed") as err:
        _engine(s.url).generate([GenRequest(id=str(i), messages=Q, seed=i) for i in range(3)])
    assert "\n" not in str(err.value)


def test_a_server_dying_under_seeded_requests_gets_a_hint(stub, capsys):
    s = stub([(500, {}, 0)] * 2, error="EngineCore encountered an issue")
    results = _engine(s.url, max_retries=0).generate(
        [GenRequest(id=str(i), messages=Q, seed=i) for i in range(2)]
    )
    assert all(r.transient for r in results)
    hint = capsys.readouterr().err.strip().splitlines()
    assert len(hint) == 1 and "--no-seed" in hint[0]


def test_progress_counts_server_tokens_before_answers_then_exact(stub):
    """While the answers take 1.5 s, the server's /metrics counter moves the token count; at the end the
    count is the answers' exact total (2 tokens each), whatever the counter said."""
    s = stub([(200, {}, 1.5)] * 4, metrics=True)
    s.generated = 1000.0  # the counter before this client started
    calls = []

    def progress(samples, tokens):
        calls.append((time.monotonic(), samples, tokens))

    def tick():
        time.sleep(0.3)
        s.generated += 5  # tokens the server made for this client (and maybe others)

    threading.Thread(target=tick, daemon=True).start()
    results = _engine(s.url).generate(
        [GenRequest(id=str(i), messages=Q) for i in range(4)], progress=progress
    )
    assert all(r.error is None for r in results)
    first_tokens = next(t for t, samples, tokens in calls if tokens > 0)
    first_sample = next(t for t, samples, tokens in calls if samples > 0)
    assert first_tokens < first_sample
    assert sum(c[1] for c in calls) == 4 and sum(c[2] for c in calls) == 8


def test_progress_without_metrics_counts_answers(stub):
    s = stub([(200, {}, 0)] * 3)
    calls = []
    _engine(s.url).generate(
        [GenRequest(id=str(i), messages=Q) for i in range(3)], progress=lambda a, b: calls.append((a, b))
    )
    assert calls == [(1, 2)] * 3
