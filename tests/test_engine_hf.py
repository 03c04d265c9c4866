"""The hf engine (transformers generate, left padding) on the real embedded model.

.venv/bin/pytest tests/test_engine_hf.py -q
"""

from __future__ import annotations

import math

import pytest

from pipeline.engines import GenRequest
from pipeline.engines.hf import HFEngine

SHORT = [{"role": "user", "content": "What is 3 + 5?"}]
LONGER = [{"role": "user", "content": "Name the capital of France, and say one thing it is famous for."}]


@pytest.fixture(scope="module")
def hf_engine(embedded):
    engine = HFEngine(embedded, batch_size=4, max_model_len=256)
    yield engine
    engine.close()


def test_left_padded_batch_matches_unbatched_greedy(hf_engine):
    batched = hf_engine.generate(
        [
            GenRequest(id="s", messages=SHORT, max_tokens=10),
            GenRequest(id="l", messages=LONGER, max_tokens=10),
        ]
    )
    alone = [
        hf_engine.generate([GenRequest(id=i, messages=m, max_tokens=10)])[0]
        for i, m in (("s", SHORT), ("l", LONGER))
    ]
    assert [r.samples[0].text for r in batched] == [r.samples[0].text for r in alone]
    assert batched[0].prompt_tokens < batched[1].prompt_tokens
    for r in batched:
        assert r.samples[0].finish_reason in ("stop", "length") and 0 < r.samples[0].completion_tokens <= 10


def test_seeded_sampling_repeats(hf_engine):
    reqs = [
        GenRequest(id=str(i), messages=SHORT, n=2, temperature=1.0, max_tokens=8, seed=i) for i in range(3)
    ]
    a, b = hf_engine.generate(reqs), hf_engine.generate(reqs)
    assert [[s.text for s in r.samples] for r in a] == [[s.text for s in r.samples] for r in b]
    assert all(len(r.samples) == 2 for r in a)
    other = hf_engine.generate(
        [
            GenRequest(id=str(i), messages=SHORT, n=2, temperature=1.0, max_tokens=8, seed=i + 100)
            for i in range(3)
        ]
    )
    assert [[s.text for s in r.samples] for r in other] != [[s.text for s in r.samples] for r in a]


def test_topk_logprobs_and_unservable_prompt(hf_engine):
    long = [{"role": "user", "content": "word " * 400}]
    ok, bad = hf_engine.generate(
        [
            GenRequest(id="ok", messages=SHORT, max_tokens=6, logprobs=5),
            GenRequest(id="bad", messages=long, max_tokens=6),
        ]
    )
    s = ok.samples[0]
    assert len(s.topk_ids) == len(s.topk_logprobs) == s.completion_tokens
    for ids, lps in zip(s.topk_ids, s.topk_logprobs, strict=True):
        assert len(set(ids)) == 5 and lps == sorted(lps, reverse=True)
        assert math.fsum(math.exp(x) for x in lps) <= 1 + 1e-4
    # Greedy decoding picks the top-1 token at every step.
    ids = hf_engine.tokenizer.encode(s.text, add_special_tokens=False)
    assert [row[0] for row in s.topk_ids][: len(ids)] == ids[: s.completion_tokens]
    assert bad.error.startswith("prompt_too_long") and not bad.samples


def test_greedy_with_n_copies_the_one_answer(hf_engine):
    [r] = hf_engine.generate([GenRequest(id="g", messages=SHORT, n=2, max_tokens=6)])
    assert len(r.samples) == 2 and r.samples[0] == r.samples[1] and r.error is None


def test_stop_strings_are_cut(hf_engine):
    [r] = hf_engine.generate([GenRequest(id="a", messages=SHORT, max_tokens=30, stop=["3"])])
    assert "3" not in r.samples[0].text and r.samples[0].finish_reason == "stop"
