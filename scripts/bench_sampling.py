"""Benchmark: what nucleus sampling (top_p < 1) costs the teacher's generation on a CPU.

vLLM's sampler sorts the whole vocabulary of every sequence at every step when top_p < 1. On a GPU that is
noise; on a CPU, with Qwen's 151,936-token vocabulary, it is a large part of each step. This runs the generate
stage on one vLLM engine (start-up excluded) with the same prompts, seeds and settings except top_p, in
alternating order, and reports tokens/s per setting, the ratio against the reference (top_p 0.95, what the
recipes used), and the yield: answers the math verifier accepts, and distinct accepted answers per prompt
(the data a run keeps). `--setting hard` (the default) takes the harder setting's prompts (two operations,
two-digit operands) with its worked two-step examples, 4 samples of up to 160 tokens, the loop's teacher
workload there; `--setting quickstart` takes the quickstart's (one operation, single digits) with its worked
one-step examples, 1 sample of up to 96 tokens, as `scripts/recipes/quickstart.yaml` generates.

    .venv/bin/python scripts/bench_sampling.py                      # Qwen teacher, 60 prompts x 4 samples
    .venv/bin/python scripts/bench_sampling.py --top-p 0.95 1.0 --prompts 60 --repeats 3
    .venv/bin/python scripts/bench_sampling.py --setting quickstart --prompts 240 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# setting -> the task's source options, the teacher's examples, samples per prompt and answer tokens
SETTINGS = {
    "hard": ({"ops": 2, "digits": 2, "mul_digits": 1}, "shots/arithmetic_steps.jinja", 4, 160),
    "quickstart": ({}, "shots/arithmetic_worked.jinja", 1, 96),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--setting", choices=SETTINGS, default="hard", help="whose prompts and examples")
    p.add_argument("--prompts", type=int, default=60, help="training prompts of the setting")
    p.add_argument("--n", type=int, help="samples per prompt (default: the setting's, 4 or 1)")
    p.add_argument("--max-tokens", type=int, help="answer tokens (default: the setting's, 160 or 96)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, nargs="+", default=[0.95, 1.0], help="the first is the reference")
    p.add_argument("--repeats", type=int, default=2, help="rounds; the order alternates between rounds")
    args = p.parse_args()
    source, shots, n, max_tokens = SETTINGS[args.setting]
    args.n = n if args.n is None else args.n
    args.max_tokens = max_tokens if args.max_tokens is None else args.max_tokens

    from pipeline import store
    from pipeline.engines.vllm import VLLMEngine
    from pipeline.models import resolve
    from pipeline.recipe import ModelConfig, RunContext
    from pipeline.stages import generate
    from pipeline.tasks import load_task
    from pipeline.verifiers.math import MathVerifier

    work = Path(tempfile.mkdtemp(prefix="bench-sampling-"))
    rows = load_task("arithmetic", split="train", n=args.prompts, **source)
    inp = work / "prompts.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reference = {r["id"]: r["reference"] for r in rows}
    teacher = ModelConfig(model=args.model, engine="vllm")
    t0 = time.perf_counter()
    engine = VLLMEngine(resolve(args.model))
    print(f"engine start: {time.perf_counter() - t0:.0f} s", flush=True)
    verifier = MathVerifier()
    results: dict[float, list[dict]] = {top_p: [] for top_p in args.top_p}
    for round_ in range(args.repeats):
        order = args.top_p if round_ % 2 == 0 else list(reversed(args.top_p))
        for top_p in order:
            cfg = generate.Config(
                n=args.n,
                temperature=args.temperature,
                top_p=top_p,
                max_tokens=args.max_tokens,
                seed=round_,
                system_template="system/arithmetic_worked.jinja",
                shots_template=shots,
            )
            out = work / f"r{round_}-p{top_p}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            manifest = generate.run(
                cfg, inp, out, context=RunContext(teachers=[teacher]), engines={teacher.label: engine}
            )
            wall = time.perf_counter() - t0
            samples = store.load_table(out / "data").to_pylist()
            verdicts = [
                verifier.check_one(s["completion"], reference[s["id"]], s["finish_reason"]) for s in samples
            ]
            accepted = {
                (s["id"], s["completion"].strip())
                for s, v in zip(samples, verdicts, strict=True)
                if v.passed is True
            }
            figures = {
                "tok_s": manifest["tokens"]["completion"] / wall,
                "tokens": manifest["tokens"]["completion"],
                "passed": sum(v.passed is True for v in verdicts),
                "distinct_passed": len(accepted),
                "samples": len(samples),
            }
            results[top_p].append(figures)
            print(
                f"round {round_} top_p {top_p}: {figures['tok_s']:.1f} tok/s, {figures['tokens']} tokens, "
                f"{figures['passed']} of {figures['samples']} verified ({figures['distinct_passed']} distinct)",
                flush=True,
            )
    engine.close()
    base = statistics.median(r["tok_s"] for r in results[args.top_p[0]])
    print(
        f"\n| top_p | tok/s (median of {args.repeats}) | ratio to top_p {args.top_p[0]} | verified | distinct verified |"
    )
    print("|---|---|---|---|---|")
    for top_p, rs in results.items():
        med = statistics.median(r["tok_s"] for r in rs)
        passed = statistics.mean(r["passed"] for r in rs)
        distinct = statistics.mean(r["distinct_passed"] for r in rs)
        print(
            f"| {top_p} | {med:.1f} | {med / base:.2f}x | {passed:.0f} of {rs[0]['samples']} | {distinct:.0f} |"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
