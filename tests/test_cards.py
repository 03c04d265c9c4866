"""Data cards and publishing: a real run folder (real prompts, verify and export stages over literal teacher
answers) -> a card that round-trips through DatasetCard, and a publish folder that datasets loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import cards, publish, store, templates
from pipeline.errors import UserError
from pipeline.recipe import RunContext
from pipeline.stages import export, generate, input_ref, prompts, verify
from pipeline.tasks import SourceConfig

REPO = Path(__file__).resolve().parent.parent
TEACHER = "smollm2-135m-instruct"
WEIGHTS = "5f0c" * 16


def _answers(reference: str) -> list[tuple[str, str]]:
    """Four teacher samples per prompt: right, right (reworded), wrong, and one with no number at all."""
    wrong = str(int(reference) + 1)
    return [
        (f"The answer is {reference}.", "stop"),
        (f"Let me compute step by step. So the result is {reference}", "stop"),
        (f"I think it is {wrong}.", "stop"),
        ("Sorry, I am not sure how to solve this problem without more", "length"),
    ]


def build_run(root: Path, n: int = 12) -> Path:
    """runs/<run>/00-prompts .. 03-export, as the real stages write them.

    Only the generate stage is written by hand (it needs a model): through StageStore/run_sharded, with the
    manifest fields the real stage records (models with a weights hash, sampling, templates, tokens).
    """
    run = root / "demo"
    source = SourceConfig(task="arithmetic", n=n, seed=0)
    prompts.run(prompts.Config(), None, run / "00-prompts", context=RunContext(source=source))

    rows = store.load_table(run / "00-prompts" / "data")
    config = generate.Config(n=4, temperature=0.8, max_tokens=16, seed=0, logprobs=2)
    parts = {
        "stage": "generate",
        "version": generate.VERSION,
        "config": {"n": 4, "temperature": 0.8, "top_p": 0.95, "max_tokens": 16, "seed": 0, "logprobs": 2},
        "templates": {"system/arithmetic.jinja": templates.template_hash("system/arithmetic.jinja")},
        "inputs": [input_ref(run / "00-prompts")],
        "models": {TEACHER: {"engine": "vllm", "identity": {"path": "/cache/smollm2", "sha256": WEIGHTS}}},
        "sampling": {
            k: getattr(config, k) for k in ("n", "temperature", "top_p", "max_tokens", "seed", "logprobs")
        },
    }
    st = store.StageStore(run / "01-generate", "generate", generate.VERSION, parts)

    def work(shard: pa.Table, index: int) -> store.ShardOutput:
        out = []
        for r in shard.to_pylist():
            for i, (text, finish) in enumerate(_answers(r["reference"])):
                tokens = len(text.split()) + 2
                out.append(
                    {
                        **r,
                        "sample_index": i,
                        "completion": text,
                        "finish_reason": finish,
                        "prompt_tokens": 30,
                        "completion_tokens": tokens,
                        "teacher": TEACHER,
                        "seed": 1000 + i,
                        "system": "Solve the problem. End with the number.",
                        "topk_ids": [[11 + t, 12 + t] for t in range(tokens)],
                        "topk_logprobs": [[-0.1, -2.5]] * tokens,
                    }
                )
        completion = sum(o["completion_tokens"] for o in out)
        return store.ShardOutput(
            data=pa.Table.from_pylist(out),
            stats={"tokens": {"prompt": 30 * len(out), "completion": completion}},
        )

    store.run_sharded(st, rows, work, num_shards=2)
    vconfig = verify.VerifyConfig(verifiers=["math"])
    evalset = root / "eval.jsonl"
    first = rows.to_pylist()[0]
    evalset.write_text(json.dumps({"prompt": first["prompt"]}) + "\n")
    vconfig.decontaminate.against = [str(evalset)]
    vconfig.decontaminate.min_words = 3
    verify.run(vconfig, run / "01-generate", run / "02-verify", context=RunContext(source=source))
    export.run(export.Config(formats=["sft", "dpo", "kd"]), run / "02-verify", run / "03-export")
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("runs"))


def test_card_round_trips_and_validates(run_dir):
    from huggingface_hub import DatasetCard

    path = cards.write_card(run_dir, repo_id="my-org/demo")
    assert path == run_dir / "card" / "README.md"
    card = DatasetCard.load(path)
    meta = card.data.to_dict()
    cards.check_metadata(meta)  # the offline version of the Hub's validation
    # The text written is what DatasetCard writes back: a stable round trip.
    assert DatasetCard(path.read_text()).content == card.content
    assert meta["license"] == "apache-2.0"  # the embedded teacher + the generated arithmetic task
    assert meta["language"] == ["en"]
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert {"synthetic", "distillation", "arithmetic", "sft", "dpo", "kd"} <= set(meta["tags"])
    assert [(c["config_name"], c["data_files"]) for c in meta["configs"]] == [
        (f, [{"split": "train", "path": f"{f}/train-*.parquet"}]) for f in ("sft", "dpo", "kd")
    ]
    assert [c.get("default") for c in meta["configs"]] == [True, None, None]

    text = card.text
    manifests = {p.name: store.read_manifest(p) for p in sorted(run_dir.iterdir()) if p.name[:2].isdigit()}
    gen, ver, exp = manifests["01-generate"], manifests["02-verify"], manifests["03-export"]
    assert WEIGHTS in text and f"`{TEACHER}`" in text  # the teacher, pinned by its weights hash
    assert "temperature: 0.8" in text and "max_tokens: 16" in text  # sampling
    for name, digest in gen["fingerprint_parts"]["templates"].items():  # template text and hash
        assert f"`{name}`" in text and digest in text
        assert templates.template_text(name).strip().splitlines()[0] in text
    for folder, m in manifests.items():  # counts and lineage of every stage
        assert f"| `{folder}` | {m['rows_in']} | {m['rows_out']} |" in text
        assert m["fingerprint"] in text
        for inp in m["inputs"]:
            assert inp["fingerprint"][:16] in text
    for reason, count in ver["rejected_by_reason"].items():
        assert f"{reason}: {count}" in text
    assert ver["rejected_by_reason"]["contaminated"] == 4  # the 4 samples of the decontaminated prompt
    assert "Decontaminated against eval.jsonl" in text and ": 4 rows removed" in text
    v = ver["stats"]["verdicts"]
    assert f"**{v['passed'] / (v['passed'] + v['failed']):.1%}**" in text  # pass rate over decided samples
    assert f"Teacher completion tokens: {gen['tokens']['completion']}" in text
    assert f"| `sft` | {exp['rows_by_format']['sft']} |" in text
    assert "## Known limitations" in text and "No decontamination ran" not in text


def test_dry_run_folder_loads_one_config_per_export(run_dir):
    from datasets import load_dataset, load_from_disk

    folder = publish.publish(run_dir, "my-org/demo", dry_run=True)
    assert folder == run_dir / "publish"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "dpo/train-00000-of-00001.parquet",
        "kd/train-00000-of-00001.parquet",
        "sft/train-00000-of-00001.parquet",
    ]
    exported = run_dir / "03-export" / "data"
    for fmt in ("sft", "dpo", "kd"):
        ds = load_dataset(
            "parquet", data_files={"train": str(folder / fmt / "train-*.parquet")}, split="train"
        )
        original = load_from_disk(str(exported / fmt))
        assert len(ds) == len(original) > 0
        assert ds.column_names == original.column_names
        assert ds[0] == original[0]
    # The card's own configs resolve against the folder, as the Hub would read them.
    kd = load_dataset(str(folder), "kd", split="train")
    assert {"prompt", "completion", "topk_ids", "topk_logprobs"} <= set(kd.column_names)
    assert "rejected_verify" not in (folder / "README.md").read_text()


def test_rejected_rows_only_when_asked(run_dir, tmp_path):
    from datasets import load_dataset

    folder = publish.build_folder(run_dir, tmp_path / "pub", repo_id="my-org/demo", include_rejected=True)
    rejected = load_dataset(str(folder), "rejected_verify", split="train")
    counts = store.read_manifest(run_dir / "02-verify")["rejected_by_reason"]
    assert len(rejected) == sum(counts.values())
    assert set(rejected["reject_reason"]) == set(counts)


def test_secrets_never_published(run_dir, tmp_path, monkeypatch):
    token, key = "hf_SeCrEtToKeN0123456789abcdef", "sk-test-SeCrEtKeY-987654321"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    folder = publish.build_folder(run_dir, tmp_path / "pub", repo_id="my-org/demo", include_rejected=True)
    import pyarrow.parquet as pq

    for f in folder.rglob("*"):
        if f.is_file():
            text = f.read_bytes() + (
                json.dumps(pq.read_table(f).to_pylist()).encode() if f.suffix == ".parquet" else b""
            )
            assert token.encode() not in text and key.encode() not in text, f
    # A secret that made its way into the rows stops the publish before anything is written.
    leaky = tmp_path / "leaky"
    import shutil

    shutil.copytree(run_dir, leaky)
    sft = store.load_table(leaky / "03-export" / "data" / "sft").to_pylist()
    sft[0]["messages"][-1]["content"] = f"my key is {key}"
    store.save_table(pa.Table.from_pylist(sft), leaky / "03-export" / "data" / "sft")
    with pytest.raises(UserError, match=r"value of \$OPENAI_API_KEY"):
        publish.publish(leaky, "my-org/demo", dry_run=True)
    assert not (leaky / "publish").exists()


def _publish_in_subprocess(run_dir: Path, env: dict, home: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys\nfrom pipeline import publish\nfrom pipeline.errors import UserError\n"
        "try:\n    publish.publish(sys.argv[1], 'my-org/demo', private=True)\n"
        "except UserError as e:\n    print(e, file=sys.stderr); sys.exit(2)\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run(
        [sys.executable, "-c", code, str(run_dir)],
        env={**clean, "HF_HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_publish_without_token_or_offline_is_a_one_line_error(run_dir, tmp_path):
    r = _publish_in_subprocess(run_dir, {}, tmp_path / "hf")
    assert r.returncode == 2, r.stderr
    assert (
        r.stderr.strip().count("\n") == 0
        and "no Hugging Face token" in r.stderr
        and "hf auth login" in r.stderr
    )
    r = _publish_in_subprocess(run_dir, {"HF_TOKEN": "hf_x" * 8, "HF_HUB_OFFLINE": "1"}, tmp_path / "hf")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "HF_HUB_OFFLINE" in r.stderr


class _Hub(BaseHTTPRequestHandler):
    """A Hub stand-in on 127.0.0.1 that records requests and refuses the token (HTTP 401)."""

    seen: list = []

    def do_POST(self):  # noqa: N802 - the http.server interface
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Hub.seen.append((self.path, self.headers.get("Authorization"), json.loads(body or b"{}")))
        payload = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_publish_creates_a_private_dataset_repo_and_reports_refusal(run_dir, tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"HF_TOKEN": "hf_" + "t" * 30, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
        r = _publish_in_subprocess(run_dir, env, tmp_path / "hf")
    finally:
        server.shutdown()
    assert r.returncode == 2, r.stderr
    assert (
        r.stderr.strip().count("\n") == 0 and "refused the token" in r.stderr and "hf auth login" in r.stderr
    )
    path, auth, body = _Hub.seen[0]
    assert path == "/api/repos/create"
    assert auth == "Bearer " + "hf_" + "t" * 30
    assert body["type"] == "dataset" and body["visibility"] == "private"
    assert body["organization"] == "my-org" and body["name"] == "demo"


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="is not a run folder"):
        cards.write_card(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="run `distill run` first"):
        cards.write_card(tmp_path / "empty")
    with pytest.raises(UserError, match="ORG/NAME"):
        publish.publish(tmp_path, "no-slash", dry_run=True)
    with pytest.raises(UserError, match="license"):
        cards.check_metadata(
            {
                "license": "free-ish",
                "language": ["en"],
                "size_categories": ["n<1K"],
                "task_categories": ["x"],
                "tags": ["x"],
            }
        )


def test_card_shows_reward_hack_counts(run_dir, tmp_path):
    """The verify stage counts `reward_hack: <kind>` apart from `failed`; the card must show those counts."""
    import shutil

    run = tmp_path / "demo"
    shutil.copytree(run_dir, run)
    manifest = store.read_manifest(run / "02-verify")
    manifest["rejected_by_reason"] = {
        **manifest["rejected_by_reason"],
        "reward_hack: non_plain_return": 3,
        "reward_hack: exit_before_tests": 1,
    }
    store.write_json_atomic(run / "02-verify" / "manifest.json", manifest)
    text = cards.write_card(run, repo_id="my-org/demo").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `02-verify` |"))
    assert "reward_hack: non_plain_return: 3" in row
    assert "reward_hack: exit_before_tests: 1" in row
    assert f"failed: {manifest['rejected_by_reason']['failed']}" in row
