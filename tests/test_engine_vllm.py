"""The vllm engine on the real embedded model (one engine per session: the `vllm_engine` fixture).

.venv/bin/pytest tests/test_engine_vllm.py -q
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.engines import GenRequest

Q = [{"role": "user", "content": "What is 3 + 5?"}]


def _req(id_: str, **kw) -> GenRequest:
    kw.setdefault("messages", Q)
    kw.setdefault("max_tokens", 16)
    return GenRequest(id=id_, **kw)


def test_greedy_matches_raw_llm_chat(vllm_engine):
    from vllm import SamplingParams

    [ours] = vllm_engine.generate([_req("a")])
    [raw] = vllm_engine.llm.chat([Q], SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
    assert ours.error is None
    assert ours.prompt_tokens == len(raw.prompt_token_ids)
    assert ours.samples[0].text == raw.outputs[0].text
    assert ours.samples[0].completion_tokens == len(raw.outputs[0].token_ids)
    assert ours.samples[0].finish_reason in ("stop", "length")


def test_seeded_samples_repeat_and_differ_by_seed(vllm_engine):
    reqs = [_req(str(i), n=3, temperature=1.0, seed=i) for i in range(4)]
    first = vllm_engine.generate(reqs)
    again = vllm_engine.generate(reqs)
    texts = [[s.text for s in r.samples] for r in first]
    assert texts == [[s.text for s in r.samples] for r in again]
    assert all(len(t) == 3 for t in texts)
    # At temperature 1 the samples of one prompt are not all the same, nor are two seeds' samples.
    assert len({t for ts in texts for t in ts}) > 3


def test_topk_logprobs_shape_and_order(vllm_engine):
    [res] = vllm_engine.generate([_req("lp", n=2, temperature=0.8, seed=3, logprobs=5)])
    for s in res.samples:
        assert len(s.topk_ids) == len(s.topk_logprobs) == s.completion_tokens > 0
        for ids, lps in zip(s.topk_ids, s.topk_logprobs, strict=True):
            assert len(ids) == len(set(ids)) == 5
            assert lps == sorted(lps, reverse=True)
            assert all(lp <= 0 and math.isfinite(lp) for lp in lps)
            assert math.fsum(math.exp(lp) for lp in lps) <= 1.0 + 1e-4


def test_unservable_prompts_become_errors_not_crashes(vllm_engine):
    long = [{"role": "user", "content": "count " * 3000}]
    results = vllm_engine.generate(
        [_req("ok"), _req("long", messages=long), _req("k", logprobs=99), _req("ok2", max_tokens=4)]
    )
    assert [r.id for r in results] == ["ok", "long", "k", "ok2"]
    assert results[0].error is None and results[0].samples
    assert results[1].error.startswith("prompt_too_long") and not results[1].samples
    assert results[2].error.startswith("logprobs_too_many")
    assert results[3].samples[0].completion_tokens <= 4


def test_max_tokens_shrinks_to_fit_the_context(vllm_engine):
    # ~1000 prompt tokens + 256 new tokens exceed max_model_len=1024: generation is cut at the context end.
    near = [{"role": "user", "content": "go " * 985}]
    [res] = vllm_engine.generate([_req("near", messages=near, max_tokens=256)])
    assert res.error is None
    assert res.prompt_tokens + res.samples[0].completion_tokens <= vllm_engine.max_model_len


def test_stop_strings_and_progress_callback(vllm_engine):
    seen = []
    reqs = [_req(str(i), stop=["5"], max_tokens=32) for i in range(3)]
    results = vllm_engine.generate(reqs, progress=lambda rows, tokens: seen.append((rows, tokens)))
    assert sum(r for r, _ in seen) == 3
    assert sum(t for _, t in seen) == sum(s.completion_tokens for r in results for s in r.samples)
    for r in results:
        assert "5" not in r.samples[0].text


def _random_adapter(model_path: str, folder, seed: int) -> str:
    """A LoRA adapter with small random weights (no training needed to change the model's answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.5)
    peft_model.save_pretrained(folder)
    return str(folder)


def test_lora_adapters_per_request_match_peft(vllm_engine, model_path, tmp_path):
    """One engine serves the base model and several adapters in one batch (no merged copy, no restart), and
    each adapter's greedy answers are the ones PEFT gives on the same weights."""
    from pipeline.engines.hf import HFEngine
    from pipeline.models import resolve

    adapters = [_random_adapter(model_path, tmp_path / f"lora{i}", seed=i) for i in range(2)]
    questions = ["What is 3 + 5?", "Name a colour.", "What is the capital of France?"]
    reqs = [
        _req(f"{i}-{j}", messages=[{"role": "user", "content": q}], max_tokens=12, adapter=adapter)
        for i, adapter in enumerate([None, *adapters])
        for j, q in enumerate(questions)
    ]
    answers = [r.samples[0].text for r in vllm_engine.generate(reqs)]
    base, first, second = answers[:3], answers[3:6], answers[6:]
    assert first != base and second != first  # the adapters are applied, each its own
    peft = HFEngine(resolve(model_path), adapter=adapters[0], batch_size=4)
    try:
        expected = [r.samples[0].text for r in peft.generate(reqs[3:6])]
    finally:
        peft.close()
    assert sum(a == b for a, b in zip(first, expected, strict=True)) >= 2, (first, expected)


def test_merge_mode_serves_each_adapter_from_a_merged_copy(vllm_engine, embedded, model_path, tmp_path):
    """On a CPU the default: the engine starts on a merged copy of the adapter, restarts on the base model for
    the batch's other group, answers in request order, and removes its merged copies when closed."""
    from pipeline.engines.hf import HFEngine
    from pipeline.engines.vllm import CPU_BLOCK_SIZE, VLLMEngine, _on_gpu

    adapter = _random_adapter(model_path, tmp_path / "lora", seed=0)
    questions = ["What is 3 + 5?", "Name a colour.", "What is the capital of France?"]
    reqs = [
        _req(f"{tag}-{j}", messages=[{"role": "user", "content": q}], max_tokens=12, adapter=a)
        for j, q in enumerate(questions)
        for tag, a in (("base", None), ("lora", adapter))
    ]
    engine = VLLMEngine(embedded, max_model_len=1024, enable_lora=True, lora_mode="merge", adapter=adapter)
    try:
        merged = engine._merged_dir
        assert merged and engine._serving is not None
        results = engine.generate(reqs)
        assert engine._serving is None and not Path(merged).exists()  # the base group ran second
        # On a CPU the engine asks for 32-token KV blocks (vLLM's default there: 128), so these short prompts
        # now share cached blocks; answers computed on cached blocks are the cold ones.
        if not _on_gpu():
            assert engine.llm.llm_engine.vllm_config.cache_config.block_size == CPU_BLOCK_SIZE
        warm = [r.samples[0].text for r in engine.generate(reqs[0::2])]
    finally:
        engine.close()
    assert [r.id for r in results] == [r.id for r in reqs]
    lora = [r.samples[0].text for r in results[1::2]]
    base = [r.samples[0].text for r in results[0::2]]
    assert warm == base
    assert base == [r.samples[0].text for r in vllm_engine.generate(reqs[0::2])]
    peft = HFEngine(embedded, adapter=adapter, batch_size=4)
    try:
        expected = [r.samples[0].text for r in peft.generate(reqs[1::2])]
    finally:
        peft.close()
    assert lora != base
    assert sum(a == b for a, b in zip(lora, expected, strict=True)) >= 2, (lora, expected)
