"""Shared fixtures. One vLLM engine per test session: starting one costs ~30 s on 2 CPU cores."""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download; the hub-failure test unsets it itself

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct, resolved (built once by scripts/setup.sh)."""
    from pipeline.models import EMBEDDED, resolve

    return resolve(EMBEDDED)


@pytest.fixture(scope="session")
def model_path(embedded) -> str:
    return embedded.path


@pytest.fixture(scope="session")
def vllm_engine(embedded):
    """The session's single vLLM engine on the embedded model; it applies LoRA adapters per request."""
    from pipeline.engines.vllm import VLLMEngine

    # LoRA per request (the GPU path) here: a merge-mode engine would restart for each adapter in a test.
    engine = VLLMEngine(embedded, max_model_len=1024, enable_lora=True, max_lora_rank=16, lora_mode="vllm")
    yield engine
    engine.close()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run `distill ARGS` in a subprocess; returns CompletedProcess with text output."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_at_first_done(
    proc: subprocess.Popen, stage_dir: Path, timeout: float, died: str, log: Path | None = None
):
    """SIGKILL `proc`'s whole process group (as a scheduler killing a job does: the engine-core child too) as
    soon as the first shard of `stage_dir` is marked done. `died` (and the end of `log`) is the failure
    message if the process ends before."""
    import signal
    import time

    try:
        deadline = time.time() + timeout
        while not (stage_dir / "shards" / "00000" / ".done").exists():
            assert proc.poll() is None, died + (": " + log.read_text()[-3000:] if log else "")
            assert time.time() < deadline, f"no shard of {stage_dir.name} finished in {timeout:.0f} s"
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# --------------------------------------------------------------------------- small servers on 127.0.0.1


def free_port() -> int:
    """A port nothing listens on (bound and released): a dead server's address, or one to start on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """A threaded server for `handler` (a socketserver handler class, e.g. an http.server one) on a free
    port of 127.0.0.1, serving in the background; `url` is its OpenAI-style base URL."""

    def __init__(self, handler, base: type = socketserver.ThreadingTCPServer):
        class Server(base):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256  # the default backlog of 5 delays a burst of connections by seconds

        self.server = Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def local_servers():
    """`local_servers(Kind, *args)` starts a server (a LocalServer subclass) for this test; all are
    stopped when it ends."""
    made = []

    def start(kind, *args, **kw):
        made.append(kind(*args, **kw))
        return made[-1]

    yield start
    for server in made:
        server.close()
