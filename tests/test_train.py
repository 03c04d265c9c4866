"""Every training mode trains for real: a layer-truncated copy of the embedded model, a few steps on the CPU.

For each mode: the loss is finite, the LoRA weights changed, the base weights did not, and the saved
adapter reloads and generates. Config mistakes are one-line UserErrors that name the fix.
"""

import json
import math
import shutil

import pytest
import torch
import yaml
from conftest import REPO
from datasets import Dataset
from safetensors.torch import load_file

from pipeline.errors import UserError
from pipeline.evaluate import evaluate
from pipeline.train import load_job, run_training, train

pytestmark = pytest.mark.slow

QUESTIONS = [(a, b) for a in range(2, 6) for b in range(1, 3)]  # 8 problems


def _truncate(src: str, layers: int, dest):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    return str(dest)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 2-layer student and a 4-layer teacher, cut from the embedded model (same tokenizer)."""
    from pipeline.models import resolve

    src = resolve("smollm2-135m-instruct").path
    root = tmp_path_factory.mktemp("models")
    return {"student": _truncate(src, 2, root / "student"), "teacher": _truncate(src, 4, root / "teacher")}


def _teacher_topk(teacher_dir: str, prompt: list[dict], completion: str, k: int = 5):
    """The teacher's top-k logprobs on its own completion, as the generate stage stores them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    p_ids = tok(text, add_special_tokens=False)["input_ids"]
    c_ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logprobs = model(torch.tensor([p_ids + c_ids])).logits[0].log_softmax(-1)
    top = logprobs[len(p_ids) - 1 : len(p_ids) + len(c_ids) - 1].topk(k, dim=-1)
    return top.indices.tolist(), top.values.tolist()


@pytest.fixture(scope="module")
def export_dir(models, tmp_path_factory):
    """A literal export folder with sft/, dpo/ and kd/ (the layout the export stage writes)."""
    root = tmp_path_factory.mktemp("export")
    sft, dpo, kd = [], [], []
    for i, (a, b) in enumerate(QUESTIONS):
        prompt = [{"role": "user", "content": f"What is {a} + {b}?"}]
        right, wrong = f"{a} + {b} = {a + b}.", f"{a} + {b} = {a + b + 1}."
        sft.append(
            {"id": f"p{i}", "sample_index": 0, "messages": prompt + [{"role": "assistant", "content": right}]}
        )
        dpo.append(
            {
                "id": f"p{i}",
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": right}],
                "rejected": [{"role": "assistant", "content": wrong}],
            }
        )
        ids, lps = _teacher_topk(models["teacher"], prompt, right)
        kd.append(
            {
                "id": f"p{i}",
                "sample_index": 0,
                "prompt": prompt,
                "completion": [{"role": "assistant", "content": right}],
                "topk_ids": ids,
                "topk_logprobs": lps,
            }
        )
    for name, rows in (("sft", sft), ("dpo", dpo), ("kd", kd)):
        Dataset.from_list(rows).save_to_disk(str(root / "data" / name))
    (root / "manifest.json").write_text(json.dumps({"stage": "export", "fingerprint": "abc123"}))
    return root


def _config(tmp_path, mode, models, export_dir, **extra):
    cfg = {
        "model": models["student"],
        "dataset": str(export_dir),
        "peft": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "output_dir": str(tmp_path / mode),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_strategy": "no",
        "max_length": 64,
        **extra,
    }
    if mode == "gkd":
        cfg.update(teacher_model_name_or_path=models["teacher"], max_new_tokens=6, lmbda=1.0)
    path = tmp_path / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("mode", ["sft", "dpo", "gkd", "kd"])
def test_mode_trains_lora_and_adapter_generates(mode, models, export_dir, tmp_path):
    base = load_file(f"{models['student']}/model.safetensors")
    extra = {"merge": True} if mode == "sft" else {}
    manifest, trainer = train(load_job(mode, _config(tmp_path, mode, models, export_dir, **extra)))

    assert math.isfinite(manifest["final_loss"])
    assert manifest["steps"] == 2 and manifest["train_tokens"] > 0 and manifest["tokens_per_s"] > 0
    assert manifest["dataset"]["fingerprint"].startswith("abc123")
    assert json.loads((tmp_path / mode / "manifest.json").read_text())["mode"] == mode

    # LoRA B matrices start at zero: after training they are not.
    adapter = load_file(str(tmp_path / mode / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    # Base weights are untouched in memory (unload drops the adapter without merging it).
    trained_base = trainer.model.unload().state_dict()
    for name, tensor in base.items():
        assert torch.equal(trained_base[name], tensor), name

    result = evaluate(
        models["student"],
        adapter=str(tmp_path / mode / "adapter"),
        rows=[{"id": "q", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "reference": "4"}],
        max_tokens=4,
    )
    assert result["completion_tokens"] > 0 and result["errors"] == 0
    if mode == "sft":
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(manifest["outputs"]["merged"])
        assert merged.config.num_hidden_layers == 2


def test_kd_drops_rows_whose_topk_does_not_line_up(models, export_dir, tmp_path):
    from datasets import load_from_disk

    from pipeline.train.kd import prepare_dataset

    rows = load_from_disk(str(export_dir / "data" / "kd"))
    broken = rows.map(
        lambda r, i: {"topk_ids": r["topk_ids"][:-3] if i % 2 else r["topk_ids"]}, with_indices=True
    )
    from transformers import AutoTokenizer

    kept, dropped = prepare_dataset(broken, AutoTokenizer.from_pretrained(models["student"]), 64)
    assert dropped == len(rows) // 2 and len(kept) == len(rows) - dropped


def test_config_errors_name_the_fix(models, export_dir, tmp_path):
    path = _config(tmp_path, "sft", models, export_dir, learning_rat=1e-3)
    with pytest.raises(UserError, match="unknown key `learning_rat`.*learning_rate"):
        load_job("sft", path)
    with pytest.raises(UserError, match="`max_steps`.*must be int"):
        load_job("sft", _config(tmp_path, "sft", models, export_dir), {"max_steps": "many"})
    with pytest.raises(UserError, match="unknown key `rank`"):
        load_job("sft", _config(tmp_path, "sft", models, export_dir), {"peft": {"rank": 4}})
    with pytest.raises(UserError, match="does not exist; run the export stage"):
        load_job("sft", _config(tmp_path, "sft", models, export_dir), {"dataset": str(tmp_path / "nope")})
    only_sft = tmp_path / "only-sft"
    shutil.copytree(export_dir / "data" / "sft", only_sft / "data" / "sft")
    with pytest.raises(UserError, match="no `dpo` dataset"):
        load_job("dpo", _config(tmp_path, "dpo", models, export_dir), {"dataset": str(only_sft)})
    with pytest.raises(UserError, match="needs prompt\\+chosen\\+rejected"):
        load_job(
            "dpo", _config(tmp_path, "dpo", models, export_dir), {"dataset": str(only_sft / "data" / "sft")}
        )
    with pytest.raises(UserError, match="unknown training mode"):
        run_training("ppo", str(path))


def test_gkd_with_another_tokenizer_suggests_sft(models, export_dir, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other-teacher"
    shutil.copytree(models["teacher"], other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<other_vocab_token>"])
    tok.save_pretrained(other)
    path = _config(tmp_path, "gkd", models, export_dir)
    with pytest.raises(UserError, match="different tokenizer.*distill train sft"):
        run_training("gkd", str(path), {"teacher_model_name_or_path": str(other)})


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    from conftest import run_cli

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: smollm2-135m-instruct\ndataset: runs/nowhere\nlearning_rat: 1\n")
    proc = run_cli("train", "sft", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown key `learning_rat` in SFTConfig; did you mean `learning_rate`?"
    ]


def test_every_shipped_training_config_loads(export_dir):
    """`scripts/configs/<mode>[_variant].yaml`: each one the README points users at parses as its mode."""
    configs = sorted((REPO / "scripts" / "configs").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"sft", "sft_full", "dpo", "kd", "gkd", "gold", "uld"}
    for path in configs:
        job = load_job(path.stem.split("_")[0], path, {"dataset": str(export_dir)})
        assert job.args.learning_rate > 0 and (job.peft is None) == (path.stem == "sft_full"), path.name
