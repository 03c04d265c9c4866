"""Distillation across tokenizers on the real embedded pair: Qwen2.5-Coder-0.5B (teacher, 151,936 tokens) and
SmolLM2-135M (student, 49,152 tokens), a handful of rows, one or two steps.

- ``uld``: a step of offline logit KD from the teacher's top-k moves the LoRA weights and lowers the loss;
- ``gold``: an on-policy step samples from the student (its text is not the dataset's answer) and trains;
- ``kd``/``gkd`` refuse the mixed vocabularies in one line that names the mode to use (exit 2).
"""

import json

import pytest
import torch
import yaml
from datasets import Dataset
from safetensors.torch import load_file

from pipeline.errors import UserError
from pipeline.train import load_job, train

pytestmark = pytest.mark.slow

TEACHER, STUDENT = "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"
PROBLEMS = [(2, 1), (3, 4), (5, 2), (6, 3)]


def _answer(a: int, b: int) -> str:
    # Not how the student would phrase it: its own samples cannot reproduce this by chance.
    return f"{a} + {b} = {a + b}. Checked on the abacus."


@pytest.fixture(scope="module")
def paths():
    from pipeline.models import resolve

    return {"student": resolve(STUDENT).path, "teacher": resolve(TEACHER).path}


@pytest.fixture(scope="module")
def export_dir(paths, tmp_path_factory):
    """sft/ and kd/ as the export stage writes them, the kd/ top-k scored by the real Qwen teacher."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import vocab_fingerprint

    tok = AutoTokenizer.from_pretrained(paths["teacher"])
    model = AutoModelForCausalLM.from_pretrained(paths["teacher"], dtype=torch.float32)
    sft, kd = [], []
    for i, (a, b) in enumerate(PROBLEMS):
        prompt = [{"role": "user", "content": f"What is {a} + {b}?"}]
        answer = [{"role": "assistant", "content": _answer(a, b)}]
        sft.append({"id": f"p{i}", "sample_index": 0, "messages": prompt + answer})
        text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        p_ids = tok(text, add_special_tokens=False)["input_ids"]
        c_ids = tok(_answer(a, b), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logprobs = model(torch.tensor([p_ids + c_ids])).logits[0].log_softmax(-1)
        top = logprobs[len(p_ids) - 1 : len(p_ids) + len(c_ids) - 1].topk(5, dim=-1)
        kd.append(
            {
                "id": f"p{i}",
                "sample_index": 0,
                "prompt": prompt,
                "completion": answer,
                "topk_ids": top.indices.tolist(),
                "topk_logprobs": top.values.tolist(),
                "topk_tokenizer": vocab_fingerprint(tok),
                "teacher": TEACHER,  # uld finds the teacher's tokenizer from here
            }
        )
    del model
    root = tmp_path_factory.mktemp("export")
    Dataset.from_list(sft).save_to_disk(str(root / "data" / "sft"))
    Dataset.from_list(kd).save_to_disk(str(root / "data" / "kd"))
    (root / "manifest.json").write_text(json.dumps({"stage": "export", "fingerprint": "xtok"}))
    return root


def _config(tmp_path, name, export_dir, **fields):
    cfg = {
        "model": STUDENT,
        "dataset": str(export_dir),
        "peft": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "output_dir": str(tmp_path / name),
        "per_device_train_batch_size": len(PROBLEMS),
        "logging_steps": 1,
        "save_strategy": "no",
        "max_length": 96,
        "seed": 0,
        **fields,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _lora_moved_base_kept(trainer, out_dir, student_dir):
    adapter = load_file(str(out_dir / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero and must have moved"
    base = load_file(f"{student_dir}/model.safetensors")
    trained = trainer.model.unload().state_dict()
    for name in list(base)[:20]:
        assert torch.equal(trained[name], base[name]), name


def test_dense_teacher_distribution_keeps_the_topk_and_the_rest_mass():
    from pipeline.train.uld import dense_logprobs

    ids = torch.tensor([[[3, 7, 0], [1, 2, 0], [0, 0, 0]]])
    lps = torch.tensor([[[-0.2, -2.0, float("-inf")], [-1.0, -1.5, -2.5], [float("-inf")] * 3]])
    dense = dense_logprobs(ids, lps, vocab_size=10)
    assert torch.allclose(dense.exp().sum(-1), torch.ones(1, 3), atol=1e-5)
    assert dense[0, 0, 3] == pytest.approx(-0.2) and dense[0, 0, 7] == pytest.approx(-2.0)
    rest = 1 - sum(torch.tensor([-0.2, -2.0]).exp()).item()
    assert dense[0, 0, 5].exp().item() == pytest.approx(rest / 8, rel=1e-4)  # spread over the 8 others
    assert torch.allclose(dense[0, 2].exp(), torch.full((10,), 0.1))  # nothing stored: uniform


def test_uld_rows_line_up_byte_by_byte(paths, export_dir):
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl.experimental.gold.gold_trainer import ULDLoss

    from pipeline.train.uld import prepare_dataset

    student, teacher = (
        AutoTokenizer.from_pretrained(paths["student"]),
        AutoTokenizer.from_pretrained(paths["teacher"]),
    )
    rows, dropped = prepare_dataset(load_from_disk(str(export_dir / "data" / "kd")), student, teacher, 96)
    assert dropped == 0 and len(rows) == len(PROBLEMS)
    for r in rows:
        s_offsets = r["byte_offsets"][r["prompt_length"] :]
        assert len(r["teacher_ids"]) == len(r["topk_ids"]) == len(r["teacher_offsets"])
        assert s_offsets[-1][1] == r["teacher_offsets"][-1][1]  # both cover the same answer bytes
        s_groups, t_groups = ULDLoss._align_by_byte_offsets(s_offsets, r["teacher_offsets"])
        assert s_groups and all(s and t for s, t in zip(s_groups, t_groups, strict=True))


def test_uld_step_moves_lora_and_lowers_the_loss(paths, export_dir, tmp_path):
    # Teacher tokenizer comes from the rows' `teacher`; the whole dataset is one batch, seen twice.
    cfg = _config(tmp_path, "uld", export_dir, max_steps=2, learning_rate=5e-3, uld_crossentropy_weight=0.0)
    manifest, trainer = train(load_job("uld", cfg))

    assert manifest["uld"]["rows_used"] == len(PROBLEMS) and manifest["uld"]["rows_dropped_misaligned"] == 0
    assert manifest["uld"]["teacher_vocab_size"] > 150_000 and manifest["steps"] == 2
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(0 < x < float("inf") for x in losses)
    assert losses[1] < losses[0], f"the loss on the same batch did not fall after a step: {losses}"
    _lora_moved_base_kept(trainer, tmp_path / "uld", paths["student"])


def test_gold_step_samples_from_the_student(paths, export_dir, tmp_path):
    cfg = _config(
        tmp_path,
        "gold",
        export_dir,
        teacher_model_name_or_path=TEACHER,
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        lmbda=1.0,
        max_completion_length=8,
    )
    manifest, trainer = train(load_job("gold", cfg))

    assert manifest["use_uld_loss"] is True  # switched on because the tokenizers differ
    assert manifest["teacher_scoring"]["tokens"] > 0 and manifest["teacher_scoring"]["tokens_per_s"] > 0
    sampled = list(trainer._textual_logs["completion"])
    assert len(sampled) == 2
    answers = {_answer(a, b) for a, b in PROBLEMS}
    for text in sampled:
        text = text.replace("<|im_end|>", "").strip()
        assert text and text not in answers, f"not the student's own sample: {text!r}"
    _lora_moved_base_kept(trainer, tmp_path / "gold", paths["student"])


@pytest.mark.parametrize(
    ("mode", "fields", "names"),
    [
        ("kd", {}, "distill train uld"),
        ("gkd", {"teacher_model_name_or_path": TEACHER}, "distill train gold"),
    ],
)
def test_mixed_vocabularies_are_refused_in_one_line(mode, fields, names, export_dir, tmp_path):
    from conftest import run_cli

    proc = run_cli("train", mode, str(_config(tmp_path, mode, export_dir, **fields)))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], lines


def test_gold_and_uld_config_mistakes_name_the_fix(export_dir, tmp_path):
    gold = _config(tmp_path, "gold", export_dir, teacher_model_name_or_path=TEACHER, use_uld_loss=False)
    with pytest.raises(UserError, match="different tokenizer.*use_uld_loss: true"):
        load_job("gold", gold)
    with pytest.raises(UserError, match="`lmbda` has no effect.*distill train gold"):
        load_job("uld", _config(tmp_path, "uld", export_dir, lmbda=0.5))
    with pytest.raises(UserError, match="another tokenizer than.*teacher_tokenizer_name_or_path"):
        load_job("uld", _config(tmp_path, "uld", export_dir, teacher_tokenizer_name_or_path=STUDENT))


def _pad_right(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, sequences))
    ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    return ids, mask


def test_vllm_teacher_scores_as_an_hf_forward_would(vllm_engine, model_path):
    """`teacher_scoring: vllm`: the session's vLLM engine (SmolLM2) scores two token sequences, one of them
    right-padded. At every real position its top-5 next-token ids and log-probabilities are those of an HF
    forward of the same model; a padded position gets a uniform distribution."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.train.teacher_scoring import VLLMScoredTeacher

    tok = AutoTokenizer.from_pretrained(model_path)
    sequences = [
        tok(t, add_special_tokens=False)["input_ids"]
        for t in ("What is 2 + 3? 2 + 3 = 5, so the answer is 5.", "Paris is the capital of")
    ]
    input_ids, mask = _pad_right(sequences, tok.pad_token_id or 0)
    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    teacher = VLLMScoredTeacher(vllm_engine, hf.config.vocab_size, top_k=5)
    scored = teacher(input_ids=input_ids, attention_mask=mask).logits
    assert scored.shape == (2, input_ids.shape[1], hf.config.vocab_size)
    for b, seq in enumerate(sequences):
        with torch.no_grad():
            reference = hf(torch.tensor([seq])).logits[0].log_softmax(-1)
        for i in range(len(seq)):
            top = reference[i].topk(5)
            assert int(scored[b, i].argmax()) == int(top.indices[0]), (b, i)
            assert torch.allclose(scored[b, i, top.indices], top.values, atol=0.02), (b, i)
    padded = scored[1, len(sequences[1]) :]
    assert padded.numel() and float(padded.max() - padded.min()) < 1e-5


def test_gold_step_with_vllm_scoring_trains_on_the_engines_scores(vllm_engine, export_dir, tmp_path):
    """A gold step whose teacher (SmolLM2, the same tokenizer: GKD's JSD path) scores the student's own
    samples through vLLM instead of an HF forward: the manifest counts the tokens vLLM scored, and the
    LoRA weights move."""
    from datasets import load_from_disk

    from pipeline.train import load_model_and_tokenizer
    from pipeline.train.gold import build_trainer

    cfg = _config(
        tmp_path,
        "gold-vllm",
        export_dir,
        teacher_model_name_or_path=STUDENT,
        teacher_scoring="vllm",
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        lmbda=1.0,
        max_completion_length=8,
    )
    job = load_job("gold", cfg)
    assert job.teacher_scoring == "vllm" and job.args.use_uld_loss is False
    _, model, tokenizer = load_model_and_tokenizer(job.model, use_cpu=True)
    trainer = build_trainer(
        job, model, tokenizer, load_from_disk(str(job.dataset_dir)), teacher_engine=vllm_engine
    )
    trainer.train()
    scoring = trainer.extra_manifest["teacher_scoring"]
    assert scoring["engine"] == "vllm" and scoring["tokens"] > 0 and scoring["tokens_per_s"] > 0
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero and must have moved"


def test_teacher_scoring_is_refused_outside_gold(export_dir, tmp_path):
    with pytest.raises(UserError, match="only with `distill train gold`"):
        load_job("sft", _config(tmp_path, "sft-vllm", export_dir, teacher_scoring="vllm"))
