"""Model specs: the embedded model loads with transformers and knows Paris; bad specs fail in one line."""

from __future__ import annotations

import os

import pytest

from pipeline.errors import UserError
from pipeline.models import resolve, weights_hash


def test_embedded_model_answers_paris(embedded):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded.path)
    model = AutoModelForCausalLM.from_pretrained(embedded.path, dtype=torch.float32)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_embedded_identity_is_a_weights_hash(embedded):
    assert len(embedded.identity["sha256"]) == 64
    assert embedded.identity["sha256"] == weights_hash(embedded.path)  # cached, and stable
    assert resolve("smollm2-135m-instruct").identity == embedded.identity


def test_local_folder_spec(embedded, tmp_path):
    assert resolve(embedded.path).identity["sha256"] == embedded.identity["sha256"]
    with pytest.raises(UserError, match="no config.json"):
        resolve(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        resolve(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="GGUF file"):
        resolve(str(tmp_path / "m.gguf"))


def test_unreachable_hub_id_says_use_a_local_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        resolve("some-org/not-a-model-xyz@main")
    msg = str(err.value)
    assert "\n" not in msg and "local folder" in msg and "some-org/not-a-model-xyz" in msg
    assert os.environ["HF_HUB_OFFLINE"] == "1"
