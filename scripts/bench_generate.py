"""Benchmark the generate stage against raw ``vllm.LLM.chat`` on the same prompts and sampling settings.

    .venv/bin/python scripts/bench_generate.py                       # vllm: raw LLM.chat vs our stage
    .venv/bin/python scripts/bench_generate.py --repeats 3 --engine vllm openai hf

For ``vllm``, one ``LLM`` is built once and used for both measurements, so start-up is not counted: raw
``LLM.chat`` on the prompts, and ``pipeline.stages.generate.run`` on the same prompts (reading the
input, sharding, writing Arrow shards, joining them and writing the manifest), after one short warm-up; the order alternates between repeats. It prints
``ratio = ours_tokens_per_s / raw_tokens_per_s`` per repeat and the median; the goal is >= 0.97.
With per-prompt seeds both sides produce the same completions, which the script checks.

``openai`` starts ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 with the same engine settings
and, per repeat, sends the same requests with a plain asyncio client (httpx, a semaphore, ``gather``) and runs
our stage through the openai engine at the same concurrency, in alternating order; it prints
``ratio = ours / plain`` per repeat and the median (goal >= 0.97). ``hf`` runs the stage through
transformers ``generate``. All report tokens/s of the whole stage on the same prompts (server/model start-up
excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", nargs="+", default=["vllm"], choices=["vllm", "openai", "hf"])
    p.add_argument("--prompts", type=int, default=256, help="arithmetic prompts (train split)")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logprobs", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--shard-size", type=int, default=256, help="prompts per shard of our stage")
    p.add_argument("--repeats", type=int, default=1, help="raw/ours pairs (vllm), or stage runs (others)")
    p.add_argument("--hf-batch-size", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=64, help="openai: requests in flight")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from pipeline import templates
    from pipeline.models import resolve
    from pipeline.recipe import ModelConfig, RunContext
    from pipeline.stages import generate
    from pipeline.tasks import load_task

    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    rows = load_task("arithmetic", split="train", n=args.prompts)
    inp = work / "prompts.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = generate.Config(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
        logprobs=args.logprobs,
        shard_size=args.shard_size,
    )
    # Exactly the conversations and seeds our stage sends, for the raw side.
    system = templates.render(generate.system_template_name(cfg, "arithmetic"))
    conversations = [generate.chat_messages(r, system) for r in rows]
    seeds = [generate.prompt_seed(cfg.seed, r["id"]) for r in rows]
    model = resolve("smollm2-135m-instruct")
    figures: dict = {"prompts": len(rows), "n": args.n, "max_tokens": args.max_tokens}

    def run_stage(teacher: ModelConfig, engine, tag: str) -> tuple[float, dict]:
        out = work / tag
        shutil.rmtree(out, ignore_errors=True)
        ctx = RunContext(teachers=[teacher])
        t0 = time.perf_counter()
        manifest = generate.run(cfg, inp, out, context=ctx, engines={teacher.label: engine}, progress=False)
        wall = time.perf_counter() - t0
        return manifest["tokens"]["completion"] / wall, manifest

    if "vllm" in args.engine:
        from vllm import SamplingParams

        from pipeline.engines.vllm import VLLMEngine

        engine = VLLMEngine(model, max_model_len=args.max_model_len)
        teacher = ModelConfig(model=model.spec, engine="vllm", max_model_len=args.max_model_len)
        params = [
            SamplingParams(
                n=args.n,
                temperature=args.temperature,
                top_p=args.top_p,
                max_tokens=args.max_tokens,
                seed=s,
                logprobs=args.logprobs or None,
            )
            for s in seeds
        ]
        engine.llm.chat(conversations[:16], params[:16], use_tqdm=False)  # warm-up, not measured
        ratios, raws, ours = [], [], []
        for rep in range(args.repeats):
            # Alternate which side goes first, so drift in a shared machine's load cancels out.
            if rep % 2:
                our_tps, manifest = run_stage(teacher, engine, f"vllm-{rep}")
            t0 = time.perf_counter()
            outs = engine.llm.chat(conversations, params, use_tqdm=False)
            raw_wall = time.perf_counter() - t0
            raw_tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
            raw_tps = raw_tokens / raw_wall
            if rep % 2 == 0:
                our_tps, manifest = run_stage(teacher, engine, f"vllm-{rep}")
            from datasets import load_from_disk

            ours_text = load_from_disk(str(work / f"vllm-{rep}" / "data"))["completion"]
            same = ours_text == [c.text for o in outs for c in sorted(o.outputs, key=lambda c: c.index)]
            ratio = our_tps / raw_tps
            ratios.append(ratio)
            raws.append(raw_tps)
            ours.append(our_tps)
            print(
                f"[vllm] repeat {rep}: raw {raw_tokens} tok in {raw_wall:.1f}s = {raw_tps:.1f} tok/s | "
                f"ours {manifest['tokens']['completion']} tok = {our_tps:.1f} tok/s | ratio = {ratio:.3f} | "
                f"identical completions: {same}",
                flush=True,
            )
        print(
            f"[vllm] median: raw {statistics.median(raws):.1f} tok/s, ours {statistics.median(ours):.1f} tok/s"
        )
        print(
            f"ratio = ours_tokens_per_s / raw_tokens_per_s = {statistics.median(ratios):.3f} (median)",
            flush=True,
        )
        figures["vllm"] = {"raw_tokens_per_s": raws, "ours_tokens_per_s": ours, "ratio": ratios}
        engine.close()

    if "openai" in args.engine:
        from pipeline.engines.openai import OpenAIEngine

        server, url = start_server(model.path, args.max_model_len)
        try:
            # The same transport for both sides: concurrency and a timeout that queueing cannot hit.
            engine = OpenAIEngine(url, "bench", concurrency=args.concurrency, timeout=600)
            teacher = ModelConfig(
                model=model.spec,
                engine="openai",
                base_url=url,
                served_model_name="bench",
                concurrency=args.concurrency,
            )
            bodies = [
                {
                    "model": "bench",
                    "messages": conv,
                    "n": args.n,
                    "temperature": args.temperature,
                    "top_p": args.top_p,
                    "max_tokens": args.max_tokens,
                    "seed": seed,
                }
                for conv, seed in zip(conversations, seeds, strict=True)
            ]
            plain_client(url, bodies[:16], args.concurrency)  # warm-up, not measured
            ratios, plains, ours = [], [], []
            for rep in range(args.repeats):
                if rep % 2:
                    our_tps, _ = run_stage(teacher, engine, f"openai-{rep}")
                plain_tps = plain_client(url, bodies, args.concurrency)
                if rep % 2 == 0:
                    our_tps, _ = run_stage(teacher, engine, f"openai-{rep}")
                ratios.append(our_tps / plain_tps)
                plains.append(plain_tps)
                ours.append(our_tps)
                print(
                    f"[openai] repeat {rep}: plain asyncio client {plain_tps:.1f} tok/s | ours {our_tps:.1f} tok/s "
                    f"| ratio = {our_tps / plain_tps:.3f} (concurrency {args.concurrency})",
                    flush=True,
                )
            print(
                f"[openai] median: plain {statistics.median(plains):.1f} tok/s, ours {statistics.median(ours):.1f} "
                f"tok/s; ratio = ours / plain = {statistics.median(ratios):.3f} (median)",
                flush=True,
            )
            figures["openai"] = {"plain_tokens_per_s": plains, "ours_tokens_per_s": ours, "ratio": ratios}
        finally:
            stop_server(server)

    if "hf" in args.engine:
        from pipeline.engines.hf import HFEngine

        engine = HFEngine(model, batch_size=args.hf_batch_size, max_model_len=args.max_model_len)
        teacher = ModelConfig(model=model.spec, engine="hf", max_model_len=args.max_model_len)
        tps = []
        for rep in range(args.repeats):
            t, _ = run_stage(teacher, engine, f"hf-{rep}")
            tps.append(t)
            print(f"[hf] repeat {rep}: {t:.1f} tok/s (batch {args.hf_batch_size})", flush=True)
        print(f"[hf] median: {statistics.median(tps):.1f} tok/s", flush=True)
        figures["hf"] = {"tokens_per_s": tps}
        engine.close()

    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def plain_client(url: str, bodies: list[dict], concurrency: int) -> float:
    """The baseline: the same requests from a bare asyncio + httpx loop; returns completion tokens/s."""
    import asyncio

    import httpx

    async def go() -> int:
        semaphore = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

            async def one(body: dict) -> int:
                async with semaphore:
                    resp = await client.post("/chat/completions", json=body)
                return resp.json()["usage"]["completion_tokens"]

            return sum(await asyncio.gather(*(one(b) for b in bodies)))

    t0 = time.perf_counter()
    tokens = asyncio.run(go())
    return tokens / (time.perf_counter() - t0)


def start_server(model_dir: str, max_model_len: int) -> tuple[subprocess.Popen, str]:
    """vLLM's OpenAI server with the settings VLLMEngine uses on CPU; returns (process, base_url)."""
    import httpx

    from pipeline.engines.vllm import CPU_MAX_NUM_BATCHED_TOKENS

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
        "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", str(max_model_len),
        "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(CPU_MAX_NUM_BATCHED_TOKENS, max_model_len)),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"vLLM server exited with code {proc.returncode}; run the command by hand: {' '.join(cmd)}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, f"{url}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(proc)
    raise SystemExit("vLLM server did not answer /health within 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is required
    main()
