"""Benchmark: what vLLM's KV-cache block size costs the teacher's prompts on a CPU.

Every teacher request of a stage starts with the same system prompt and worked examples, and vLLM's prefix
cache reuses that shared start, but only in whole KV blocks: on a CPU vLLM's block is 128 tokens unless set.
The rephrase stage's requests share their first 291 Qwen tokens (system prompt and five example rewrites),
so with 128-token blocks 256 are reused and 35 are computed again for every request; with 32-token blocks 288
are reused. This runs the quickstart's teacher workload (the `rephrase` stage: the recipe's two rewrites per
question, or `--stage generate`: one worked answer per question) on two vLLM engines, one per block size (the
first is the reference), with the prefix cache emptied before every run, in alternating order, and reports
tokens/s (start-up excluded), the ratio against the reference and the yield (rewrites kept, or answers the
math verifier accepts).

    .venv/bin/python scripts/bench_kv_block.py                          # 80 questions, blocks 128 and 32
    .venv/bin/python scripts/bench_kv_block.py --stage generate --questions 120 --repeats 3
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--stage", choices=("rephrase", "generate"), default="rephrase", help="whose requests")
    p.add_argument("--questions", type=int, default=80, help="training questions of the quickstart's task")
    p.add_argument("--block-size", type=int, nargs="+", default=[128, 32], help="the first is the reference")
    p.add_argument("--repeats", type=int, default=2, help="rounds; the order alternates between rounds")
    args = p.parse_args()
    if args.questions < 1 or args.repeats < 1 or any(b < 1 or b % 16 for b in args.block_size):
        p.error("--questions and --repeats must be at least 1; a --block-size a positive multiple of 16")

    from pipeline import store
    from pipeline.engines.vllm import VLLMEngine
    from pipeline.models import resolve
    from pipeline.recipe import ModelConfig, RunContext
    from pipeline.stages import generate, rephrase
    from pipeline.tasks import load_task
    from pipeline.verifiers.math import MathVerifier

    work = Path(tempfile.mkdtemp(prefix="bench-kv-block-"))
    rows = load_task("arithmetic", split="train", n=args.questions)
    inp = work / "prompts.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reference = {r["id"]: r["reference"] for r in rows}
    teacher = ModelConfig(model=args.model, engine="vllm")
    context = RunContext(teachers=[teacher])
    engines = {}
    for block in args.block_size:
        t0 = time.perf_counter()
        engines[block] = VLLMEngine(resolve(args.model), block_size=block)
        print(f"engine with {block}-token blocks: started in {time.perf_counter() - t0:.0f} s", flush=True)
    verifier = MathVerifier()
    results: dict[int, list[dict]] = {block: [] for block in args.block_size}
    for round_ in range(args.repeats):
        order = args.block_size if round_ % 2 == 0 else list(reversed(args.block_size))
        for block in order:
            engine = engines[block]
            engine.llm.reset_prefix_cache()  # every run starts cold, as a stage does
            out = work / f"r{round_}-b{block}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            if args.stage == "rephrase":
                cfg = rephrase.Config(seed=round_, top_p=1.0)
                manifest = rephrase.run(cfg, inp, out, context=context, engine=engine)
                kept = manifest["stats"]["rewrites"]
            else:
                cfg = generate.Config(
                    n=1,
                    temperature=0.8,
                    top_p=1.0,
                    max_tokens=96,
                    seed=round_,
                    system_template="system/arithmetic_worked.jinja",
                    shots_template="shots/arithmetic_worked.jinja",
                )
                manifest = generate.run(cfg, inp, out, context=context, engines={teacher.label: engine})
                samples = store.load_table(out / "data").to_pylist()
                kept = sum(
                    verifier.check_one(s["completion"], reference[s["id"]], s["finish_reason"]).passed is True
                    for s in samples
                )
            wall = time.perf_counter() - t0
            figures = {
                "tok_s": manifest["tokens"]["completion"] / wall,
                "wall_s": wall,
                "tokens": manifest["tokens"]["completion"],
                "kept": kept,
            }
            results[block].append(figures)
            print(
                f"round {round_} block {block}: {wall:.0f} s, {figures['tok_s']:.1f} tok/s, "
                f"{figures['tokens']} tokens, kept {kept}",
                flush=True,
            )
    for engine in engines.values():
        engine.close()
    base = statistics.median(r["tok_s"] for r in results[args.block_size[0]])
    what = "rewrites kept" if args.stage == "rephrase" else "answers verified"
    print(f"\n{args.stage}, {args.questions} questions, median of {args.repeats}:")
    print(f"| block | s | tok/s | ratio to {args.block_size[0]} | {what} |")
    print("|---|---|---|---|---|")
    for block, rs in results.items():
        med = statistics.median(r["tok_s"] for r in rs)
        wall = statistics.median(r["wall_s"] for r in rs)
        kept = statistics.mean(r["kept"] for r in rs)
        print(f"| {block} | {wall:.0f} | {med:.1f} | {med / base:.2f}x | {kept:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
