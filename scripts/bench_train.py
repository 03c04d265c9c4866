"""Benchmark: SFT tokens/s with padding-free batches and packing against padded batches, same data, one run.

Three variants each train one epoch of LoRA SFT over the same rows, several times, interleaved:
- ``padded``: batches of ``--batch-size`` rows, right-padded to the longest row (TRL's default);
- ``padding_free``: the same batches flattened into one sequence, no pad tokens (``padding_free: true``);
- ``packed``: BFD packing into ``--batch-size`` x mean-row-length token sequences (padding-free too), so a step
  holds about as many real tokens as a padded step.
tokens/s counts real (non-padding) tokens, identical for every variant, over the trainer's wall time.
Prints the median per variant and the ratios to ``padded``.

    python scripts/bench_train.py                               # embedded model, synthetic arithmetic data
    python scripts/bench_train.py --dataset runs/quickstart/04-export --rows 64 --repeats 3
    python scripts/bench_train.py --layers 8                    # a layer-truncated copy, for a quick look
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Arithmetic answers of varied length (1 to ~12 steps), as real verified teacher answers vary."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        terms = [rng.randint(1, 99) for _ in range(rng.randint(2, 12))]
        steps, total = [], terms[0]
        for t in terms[1:]:
            steps.append(f"{total} + {t} = {total + t}")
            total += t
        question = "What is " + " + ".join(map(str, terms)) + "?"
        answer = "Step by step: " + "; ".join(steps) + f". The answer is {total}."
        rows.append(
            {
                "id": f"b{i}",
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            }
        )
    return rows


def make_dataset_dir(args, root: Path) -> Path:
    from datasets import Dataset, load_from_disk

    if args.dataset:
        from pipeline.train.config import resolve_dataset

        ds = load_from_disk(str(resolve_dataset(args.dataset, "sft")))
        ds = ds.select(range(min(args.rows, len(ds))))
    else:
        ds = Dataset.from_list(synthetic_rows(args.rows))
    out = root / "data" / "sft"
    ds.save_to_disk(str(out))
    return root


def truncated_model(spec: str, layers: int, root: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import resolve

    path = resolve(spec).path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(root / "model")
    AutoTokenizer.from_pretrained(path).save_pretrained(root / "model")
    return str(root / "model")


def one_run(
    model: str, dataset: Path, out: Path, variant: str, args, packed_length: int
) -> tuple[float, int]:
    """Train one epoch; return (train seconds, real tokens in the epoch)."""
    from pipeline.train import load_job, train

    overrides = {
        "model": model,
        "dataset": str(dataset),
        "peft": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
        "output_dir": str(out),
        "num_train_epochs": 1,
        "learning_rate": 1e-4,
        "logging_steps": 1000,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "per_device_train_batch_size": args.batch_size,
        "max_length": None,
    }
    if variant == "padding_free":
        overrides["padding_free"] = True
    elif variant == "packed":
        overrides.update(packing=True, max_length=packed_length, per_device_train_batch_size=1)
    manifest, trainer = train(load_job("sft", None, overrides))
    data = trainer.train_dataset
    if "seq_lengths" in data.column_names:
        tokens = sum(sum(lengths) for lengths in data["seq_lengths"])
    else:
        tokens = sum(len(ids) for ids in data["input_ids"])
    return manifest["train_s"], tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model spec")
    p.add_argument("--layers", type=int, help="keep only the first N decoder layers (faster, same shapes)")
    p.add_argument(
        "--dataset", help="an export folder (uses its data/sft); default: synthetic arithmetic rows"
    )
    p.add_argument("--rows", type=int, default=48, help="rows in the epoch")
    p.add_argument("--batch-size", type=int, default=8, help="rows per padded batch")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is reported")
    args = p.parse_args()

    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        dataset = make_dataset_dir(args, root / "export")
        model = truncated_model(args.model, args.layers, root) if args.layers else args.model
        from datasets import load_from_disk
        from transformers import AutoTokenizer

        from pipeline.models import resolve

        tok = AutoTokenizer.from_pretrained(resolve(model).path)
        rows = load_from_disk(str(dataset / "data" / "sft"))["messages"]
        mean_tokens = sum(
            len(tok(tok.apply_chat_template(m, tokenize=False))["input_ids"]) for m in rows
        ) / len(rows)
        packed_length = int(mean_tokens * args.batch_size)
        variants = ("padded", "padding_free", "packed")
        results: dict[str, list[float]] = {v: [] for v in variants}
        tokens_seen: dict[str, int] = {}
        for r in range(args.repeats):
            for name in variants:  # interleaved, so machine load drifts hit every variant alike
                secs, tokens = one_run(model, dataset, root / f"{name}-{r}", name, args, packed_length)
                tokens_seen[name] = tokens
                results[name].append(tokens / secs)
                print(
                    f"run {r} {name}: {tokens} tokens in {secs:.2f} s = {tokens / secs:.1f} tok/s", flush=True
                )
    if len(set(tokens_seen.values())) != 1:
        print(f"warning: token counts differ {tokens_seen}", file=sys.stderr)
    median = {k: statistics.median(v) for k, v in results.items()}
    report = {
        "model": args.model + (f" (first {args.layers} layers)" if args.layers else ""),
        "rows": args.rows,
        "batch_size": args.batch_size,
        "packed_length": packed_length,
        "tokens_per_epoch": tokens_seen["padded"],
        "repeats": args.repeats,
        **{
            f"{v}_tok_s": {"median": round(median[v], 1), "runs": [round(x, 1) for x in results[v]]}
            for v in variants
        },
        "ratio_padding_free_over_padded": round(median["padding_free"] / median["padded"], 3),
        "ratio_packed_over_padded": round(median["packed"] / median["padded"], 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
