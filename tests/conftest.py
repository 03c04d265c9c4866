"""Shared fixtures. One vLLM engine per test session: starting one costs ~30 s on 2 CPU cores."""

from __future__ import annotations

import os
import subprocess
import sys
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
