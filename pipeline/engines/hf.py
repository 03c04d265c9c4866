"""Batched transformers ``generate``: the fallback engine and the student evaluator.

    from pipeline.engines.hf import HFEngine
    engine = HFEngine(resolve("smollm2-135m-instruct"), batch_size=16)          # teacher or base student
    engine = HFEngine(resolve("smollm2-135m-instruct"), adapter="runs/x/lora")  # a LoRA student (PEFT)
    results = engine.generate(requests)

Prompts are left-padded so every row of a batch ends where generation starts. Requests are batched in
order, with consecutive requests that share sampling settings in one batch. Sampling is seeded per batch
from the seeds of its requests, so the same requests with the same seeds give the same completions.
Top-k logprobs come from the raw logits (before temperature and top-p), the same definition vLLM uses.
"""

from __future__ import annotations

import hashlib

from pipeline.engines import GenRequest, GenResult, Progress, Sample
from pipeline.models import ResolvedModel


class HFEngine:
    """``generate(requests) -> results`` with ``AutoModelForCausalLM.generate``."""

    name = "hf"

    def __init__(
        self,
        model: ResolvedModel,
        *,
        dtype: str | None = None,
        batch_size: int = 16,
        adapter: str | None = None,
        max_model_len: int | None = None,
        device: str | None = None,
        **extra,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gpu = torch.cuda.is_available()
        self.device = device or ("cuda" if gpu else "cpu")
        # float32 on CPU: no native bf16 here, and bf16 generate measured 3.5x slower (ENVIRONMENT.md).
        dtype = dtype or ("bfloat16" if gpu else "float32")
        self.tokenizer = AutoTokenizer.from_pretrained(model.path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model.path, dtype=getattr(torch, dtype), **extra)
        if adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, adapter)
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_model_len = (
            max_model_len or getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        )
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.options = {
            "dtype": dtype,
            "batch_size": batch_size,
            "adapter": adapter,
            "max_model_len": max_model_len,
        }

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def generate(self, requests: list[GenRequest], progress: Progress | None = None) -> list[GenResult]:
        """Answer every request; results come back in request order. Never raises for one bad prompt."""
        results: dict[int, GenResult] = {}
        batch: list[tuple[int, list[int]]] = []

        def flush() -> None:
            if not batch:
                return
            counter = _TokenCounter(progress, self.eos_ids) if progress is not None else None
            for i, res in zip(
                [i for i, _ in batch], self._generate_batch(requests, batch, counter), strict=True
            ):
                results[i] = res
                if counter is not None:
                    counter.finished(res)
            if counter is not None:
                counter.close()
            batch.clear()

        for i, req in enumerate(requests):
            try:
                ids = self.prompt_ids(req.messages)
            except Exception as e:  # noqa: BLE001 - a template that cannot render this conversation
                results[i] = GenResult(id=req.id, error=f"chat_template_error: {str(e)[:200]}")
                continue
            if len(ids) >= self.max_model_len:
                results[i] = GenResult(
                    id=req.id,
                    prompt_tokens=len(ids),
                    error=f"prompt_too_long: {len(ids)} tokens >= max_model_len {self.max_model_len}",
                )
                continue
            if batch and (len(batch) >= self.batch_size or _key(requests[batch[0][0]]) != _key(req)):
                flush()
            batch.append((i, ids))
        flush()
        return [results[i] for i in range(len(requests))]

    def _generate_batch(
        self, requests: list[GenRequest], batch: list[tuple[int, list[int]]], streamer=None
    ) -> list[GenResult]:
        import torch

        first = requests[batch[0][0]]
        width = max(len(ids) for _, ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids in batch], device=self.device)
        attention = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for _, ids in batch], device=self.device
        )
        sampling = first.temperature > 0
        kwargs: dict = {
            "max_new_tokens": min(first.max_tokens, self.max_model_len - width),
            "do_sample": sampling,
            # Greedy decoding gives the same answer n times: decode once and copy (generate refuses n > 1).
            "num_return_sequences": first.n if sampling else 1,
            "pad_token_id": pad,
            "return_dict_in_generate": True,
            "output_logits": bool(first.logprobs),
        }
        if streamer is not None:
            kwargs["streamer"] = streamer
        if sampling:
            kwargs.update(temperature=first.temperature, top_p=first.top_p, top_k=0)
        else:  # the model's generation_config may carry sampling defaults that greedy decoding warns about
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if first.stop:
            kwargs.update(stop_strings=first.stop, tokenizer=self.tokenizer)
        # One generator state per batch, derived from every request's seed: same requests, same samples.
        # Requests without a seed (`seed: null`) sample from torch's running state instead.
        if any(requests[i].seed is not None for i, _ in batch):
            seeds = ",".join(f"{requests[i].id}:{requests[i].seed}" for i, _ in batch)
            torch.manual_seed(int.from_bytes(hashlib.sha256(seeds.encode()).digest()[:8], "little") >> 1)
        try:
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory on one batch: those rows fail, the run goes on
            return [GenResult(id=requests[i].id, error=f"generate_error: {str(e)[:200]}") for i, _ in batch]

        new = out.sequences[:, width:].tolist()
        logprobs = None
        if first.logprobs:
            # logits: one [rows, vocab] tensor per step; reduce step by step to [rows, steps, k] so that
            # no second [rows, steps, vocab] copy is made.
            tops = [
                torch.topk(torch.log_softmax(step.float(), dim=-1), k=first.logprobs, dim=-1)
                for step in out.logits
            ]
            logprobs = (
                torch.stack([t.indices for t in tops], dim=1).tolist(),
                torch.stack([t.values for t in tops], dim=1).tolist(),
            )
        results = []
        for b, (i, ids) in enumerate(batch):
            samples = []
            per_prompt = first.n if sampling else 1
            for j in range(first.n):
                row = b * per_prompt + (j if sampling else 0)
                tokens = new[row]
                length, reason = len(tokens), "length"
                for t, tok in enumerate(tokens):
                    if tok in self.eos_ids:
                        length, reason = t + 1, "stop"
                        break
                if reason == "length" and pad not in self.eos_ids:
                    while (
                        length and tokens[length - 1] == pad
                    ):  # padding after a row stopped on a stop string
                        length -= 1
                text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
                for s in first.stop or []:
                    # generate stops *after* a stop string; OpenAI/vLLM semantics drop it from the text
                    if s in text:
                        text, reason = text[: text.index(s)], "stop"
                if reason == "length" and length < kwargs["max_new_tokens"]:
                    reason = "stop"  # ended early on a stop string that the tokenizer split differently
                sample = Sample(text=text, finish_reason=reason, completion_tokens=length)
                if logprobs is not None:
                    sample.topk_ids = logprobs[0][row][:length]
                    sample.topk_logprobs = logprobs[1][row][:length]
                samples.append(sample)
            results.append(GenResult(id=requests[i].id, prompt_tokens=len(ids), samples=samples))
        return results

    def close(self) -> None:
        self.model = None


class _TokenCounter:
    """A ``generate`` streamer that reports tokens step by step (one per row that has not yet ended), then
    samples per finished prompt, with the count corrected to the exact one when the batch ends."""

    def __init__(self, progress: Progress, eos_ids: set) -> None:
        self.progress = progress
        self.eos_ids = eos_ids
        self.alive: list[bool] | None = None  # per generated row; None until the prompt has been put
        self.live = self.exact = 0

    def put(self, value) -> None:
        if self.alive is None:  # generate first puts the prompt ids
            self.alive = []
            return
        tokens = value.view(-1).tolist()
        if len(self.alive) != len(tokens):
            self.alive = [True] * len(tokens)
        made = 0
        for row, tok in enumerate(tokens):
            if self.alive[row]:
                made += 1
                self.alive[row] = tok not in self.eos_ids
        if made:
            self.live += made
            self.progress(0, made)

    def end(self) -> None:
        pass

    def finished(self, result: GenResult) -> None:
        self.exact += sum(s.completion_tokens for s in result.samples)
        self.progress(len(result.samples), 0)

    def close(self) -> None:
        if self.exact != self.live:  # stop strings end rows the streamer cannot see
            self.progress(0, self.exact - self.live)


def _key(req: GenRequest) -> tuple:
    """Requests that can share one generate call."""
    return (req.n, req.temperature, req.top_p, req.max_tokens, tuple(req.stop or ()), req.logprobs)
