"""What every `exp_*.py` script shares: running `distill`, training from a config, scoring, paired tests, tables.

An experiment script says only what differs (its arms, its data); these helpers give every arm the same
subprocess environment, the same test scoring and the same statistics:

- ``distill(*args)``: one `distill` command in a subprocess (exit on failure, print its wall time);
- ``train(mode, config, folder, **fields)``: a training YAML from ``scripts/configs/`` with fields replaced,
  trained once (the manifest is the resume marker);
- ``score(model, adapter, out, task=...)``: greedy pass@1 on a test split, saved as JSON with per-problem rows;
- ``mean_sd``, ``paired``, ``mcnemar``: the noise figures every table reports.

Every step is a folder or a JSON file that is checked before it runs, so a killed experiment resumes.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
QWEN, SMOL = "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"


def distill(*args: str) -> float:
    """Run `distill ARGS` from the repo root; exit with its message on failure. Returns its wall seconds."""
    t0 = time.perf_counter()
    print(f"$ distill {' '.join(args)}", flush=True)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=ENV)
    if r.returncode != 0:
        sys.exit(f"distill {args[0]} failed (exit {r.returncode})")
    seconds = time.perf_counter() - t0
    print(f"  ({seconds:.0f} s)", flush=True)
    return seconds


def train(mode: str, config: str, folder: Path, **fields) -> dict:
    """Train once from ``scripts/configs/<config>.yaml`` with ``fields`` replaced; return the train manifest."""
    values = yaml.safe_load((REPO / "scripts" / "configs" / f"{config}.yaml").read_text())
    values.update(fields, output_dir=str(folder / "train"))
    manifest = folder / "train" / "manifest.json"
    if not manifest.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        distill("train", mode, str(path))
    return json.loads(manifest.read_text())


def score(
    model: str,
    adapter: Path | None,
    out: Path,
    task: str = "arithmetic",
    limit: int | None = 100,
    tokens: int = 96,
) -> dict:
    """Greedy pass@1 on the task's test split (vLLM), once; arithmetic's ``limit`` is per held-out family."""
    if not out.exists():
        args = [
            "eval",
            model,
            "--task",
            task,
            "--split",
            "test",
            "--max-tokens",
            str(tokens),
            "--engine",
            "vllm",
        ]
        args += ["--limit", str(limit)] if limit else []
        args += ["--adapter", str(adapter)] if adapter else []
        distill(*args, "--output", str(out))
    return json.loads(out.read_text())


def solved(result: dict) -> dict[str, bool]:
    """Problem id -> solved, from a `distill eval --output` JSON (one greedy sample per problem)."""
    return {r["id"]: bool(r["passed"]) for r in result["rows"]}


def mean_sd(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± sd' (sample sd; '± n/a' for one value), scaled (fractions to points by default)."""
    if not values:
        return "n/a"
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f} ± n/a"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def mcnemar(wins: int, losses: int) -> float:
    """Exact two-sided McNemar p-value: a binomial test on the discordant problems."""
    n, k = wins + losses, min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0


def paired(ours: list[dict], theirs: list[dict]) -> tuple[int, int, float]:
    """Problems only ``ours`` solves and only ``theirs`` solves, pooled over seeds (one eval JSON per seed,
    in seed order), and the exact McNemar p-value. It measures test-set noise, not the spread over seeds."""
    wins = losses = 0
    for a, b in zip(ours, theirs, strict=True):
        sa, sb = solved(a), solved(b)
        wins += sum(1 for k, ok in sa.items() if ok and not sb.get(k, False))
        losses += sum(1 for k, ok in sb.items() if ok and not sa.get(k, False))
    return wins, losses, mcnemar(wins, losses)


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
