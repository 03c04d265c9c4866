"""Benchmark the generate stage against raw ``vllm.LLM.chat`` on the same prompts and sampling settings.

    .venv/bin/python scripts/bench_generate.py                       # vllm: raw LLM.chat vs our stage
    .venv/bin/python scripts/bench_generate.py --repeats 3 --engine vllm openai hf

For ``vllm``, one ``LLM`` is built once and used for both measurements, so start-up is not counted: raw
``LLM.chat`` on the prompts, and ``pipeline.stages.generate.run`` on the same prompts (reading the
input, sharding, writing Arrow shards, joining them and writing the manifest), after one short warm-up; the order alternates between repeats. It prints
``ratio = ours_tokens_per_s / raw_tokens_per_s`` per repeat and the median; the goal is >= 0.97.
With per-prompt seeds both sides produce the same completions, which the script checks.

``openai`` starts one ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 (float32, eager,
``--max-num-batched-tokens 16384``) and, per round, runs on the same prompts and sampling settings, in an
order that rotates from round to round:
- ours: the whole ``distill generate --engine openai`` command at its defaults (adaptive concurrency, seeds
  on), timed from process start to exit, so imports and writing the Arrow output count;
- datatrove: datatrove's ``InferenceRunner`` in endpoint mode at its defaults (500 in flight, no seeds),
  also a whole process. Datatrove is never a dependency of this project: it runs in the interpreter given by
  ``--datatrove-python`` (or ``$DATATROVE_PYTHON``; e.g. a venv with ``pip install datatrove orjson aiofiles
  httpx``), or in this one if it imports here; without it this arm is skipped with a one-line note;
- plain: a bare asyncio client (httpx, a semaphore, ``gather``) with every request in flight (or
  ``--concurrency``), in this process.
It prints each round and the medians with ``ours / datatrove`` and ``ours / plain`` (goal >= 1.0 against
datatrove). ``--no-seed`` adds two arms: ours without seeds, and plain without seeds, so the server's own
cost of per-request seeds (plain vs plain --no-seed) reads apart from the client's.

    .venv/bin/python scripts/bench_generate.py --engine openai --prompts 128 --repeats 3 \
        --datatrove-python /work/dt-venv/bin/python

``--client-cpu`` measures the openai engine's own CPU per request, no model involved: a stub server in a
child process holds every request for ``--stub-delay`` seconds and answers with a vLLM-shaped body, while
``OpenAIEngine`` sends ``--prompts`` requests, all in flight, over httpx and over the lean client that plain
``http://`` URLs use (pipeline/engines/http1.py). On a small machine that CPU is taken from a local server.

    .venv/bin/python scripts/bench_generate.py --client-cpu --prompts 512 --repeats 3

``hf`` runs the stage through transformers ``generate``. All report tokens/s on the same prompts
(server/model start-up excluded).
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
    p.add_argument(
        "--concurrency",
        type=int,
        help="openai: pin ours and plain to this many in flight (default: ours adapts)",
    )
    p.add_argument(
        "--datatrove-python", help="openai: a Python with datatrove installed (default: $DATATROVE_PYTHON)"
    )
    p.add_argument("--no-seed", action="store_true", help="openai: also run ours and plain without seeds")
    p.add_argument(
        "--client-cpu", action="store_true", help="CPU ms per request of the openai engine, httpx vs lean"
    )
    p.add_argument("--stub-delay", type=float, default=1.0, help="--client-cpu: seconds the stub holds each")
    p.add_argument("--stub-child", help=argparse.SUPPRESS)  # internal: the stub server, its delay
    p.add_argument("--datatrove-child", help=argparse.SUPPRESS)  # internal: one datatrove run, JSON spec
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.client_cpu:
        figures = bench_client_cpu(args)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        return
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
        figures["openai"] = bench_openai(args, model.path, inp, work, conversations, seeds)

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


def bench_openai(args, model_dir: str, inp: Path, work: Path, conversations: list, seeds: list) -> dict:
    """Interleaved rounds of ours / datatrove / plain against one vLLM server; returns the figures."""
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens}
    dt_python = datatrove_python(args.datatrove_python)
    if dt_python is None:
        print(
            "[openai] datatrove: skipped (not importable here; pass --datatrove-python PATH to a Python that "
            "has datatrove, orjson, aiofiles and httpx)",
            flush=True,
        )
    server, url = start_server(model_dir, args.max_model_len)
    try:
        bodies = [
            {"model": "bench", "messages": conv, "n": args.n, **sampling, "seed": seed}
            for conv, seed in zip(conversations, seeds, strict=True)
        ]
        in_flight = args.concurrency or len(bodies)
        plain_client(url, bodies[:16], in_flight)  # warm-up, not measured

        def ours(no_seed: bool = False) -> float:
            out = work / "openai-ours"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [
                sys.executable, "-m", "pipeline.cli", "generate", "--input", str(inp), "--output", str(out),
                "--teacher", "bench", "--engine", "openai", "--base-url", url, "--n", str(args.n),
                "--max-tokens", str(args.max_tokens), "--temperature", str(args.temperature),
                "--top-p", str(args.top_p), "--seed" if not no_seed else "--no-seed",
            ]  # fmt: skip
            cmd += [str(args.seed)] if not no_seed else []
            cmd += ["--concurrency", str(args.concurrency)] if args.concurrency else []
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            manifest = json.loads((out / "manifest.json").read_text())
            return manifest["tokens"]["completion"] / wall

        def datatrove() -> float:
            spec = {
                "endpoint": url.removesuffix("/v1"),
                "model": "bench",
                "conversations": conversations,
                "n": args.n,
                "sampling": sampling,
                "output": str(work / "openai-datatrove"),
            }
            shutil.rmtree(spec["output"], ignore_errors=True)
            spec_file = work / "datatrove.json"
            spec_file.write_text(json.dumps(spec))
            t0 = time.perf_counter()
            proc = subprocess.run(
                [dt_python, __file__, "--datatrove-child", str(spec_file)],
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"datatrove run failed: {proc.stderr[-2000:]}")
            return json.loads(proc.stdout.strip().splitlines()[-1])["completion_tokens"] / wall

        arms = {"ours": ours, "plain": lambda: plain_client(url, bodies, in_flight)}
        if dt_python is not None:
            arms["datatrove"] = datatrove
        if args.no_seed:
            arms["ours --no-seed"] = lambda: ours(no_seed=True)
            unseeded = [{k: v for k, v in b.items() if k != "seed"} for b in bodies]
            arms["plain --no-seed"] = lambda: plain_client(url, unseeded, in_flight)
        names = list(arms)
        tps: dict[str, list[float]] = {name: [] for name in names}
        loads: dict[str, list[float]] = {name: [] for name in names}  # 1-min load average as each arm began
        for rep in range(args.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: load drift cancels out
            for name in order:
                loads[name].append(os.getloadavg()[0])
                tps[name].append(arms[name]())
            line = " | ".join(f"{name} {tps[name][-1]:.1f} (load {loads[name][-1]:.1f})" for name in names)
            print(f"[openai] round {rep} ({' -> '.join(order)}): {line} tok/s", flush=True)
        median = {name: statistics.median(v) for name, v in tps.items()}
        print(
            "[openai] median tok/s: " + ", ".join(f"{name} {v:.1f}" for name, v in median.items()), flush=True
        )
        ratios = {f"ours / {other}": median["ours"] / median[other] for other in names if other != "ours"}
        for label, ratio in ratios.items():
            print(f"[openai] ratio {label} = {ratio:.3f} (medians of {args.repeats} rounds)", flush=True)
        return {
            "tokens_per_s": tps,
            "load": loads,
            "median": median,
            "ratio": ratios,
            "plain_in_flight": in_flight,
        }
    finally:
        stop_server(server)


# A vLLM answer to one arithmetic prompt at 64 tokens, as the stub sends it (~900 bytes).
STUB_ANSWER = {
    "id": "chatcmpl-0123456789abcdef0123456789abcdef", "object": "chat.completion", "created": 1760000000,
    "model": "bench", "choices": [{
        "index": 0, "message": {"role": "assistant", "content": "37 + 48: 7 + 8 = 15, carry 1; 3 + 4 + 1 = 8. "
        "So the answer is 85, and here the words run on to fill sixty-four tokens of output. #### 85",
        "refusal": None, "annotations": None, "audio": None, "function_call": None, "tool_calls": [],
        "reasoning_content": None}, "logprobs": None, "finish_reason": "length", "stop_reason": None}],
    "service_tier": None, "system_fingerprint": None, "prompt_logprobs": None, "kv_transfer_params": None,
    "usage": {"prompt_tokens": 80, "total_tokens": 144, "completion_tokens": 64, "prompt_tokens_details": None},
}  # fmt: skip


def stub_child(delay: float) -> None:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 that answers every POST with STUB_ANSWER after ``delay``
    seconds; prints its port. Runs in its own process, so its CPU is not the client's."""
    import asyncio

    body = json.dumps(STUB_ANSWER).encode()
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )

    async def handle(reader, writer) -> None:
        try:
            while await reader.readline():
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                await asyncio.sleep(delay)
                writer.write(answer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=2048)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(serve())


def bench_client_cpu(args) -> dict:
    """CPU ms per request of OpenAIEngine over httpx and over the lean client, against the stub."""
    import resource

    from pipeline.engines import GenRequest
    from pipeline.engines.openai import OpenAIEngine

    stub = subprocess.Popen(
        [sys.executable, __file__, "--stub-child", str(args.stub_delay)], stdout=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{int(stub.stdout.readline())}/v1"
        messages = [{"role": "user", "content": "What is 37 + 48? End with #### and the answer."}]
        requests = [
            GenRequest(id=str(i), messages=messages, temperature=0.8, max_tokens=64, seed=i)
            for i in range(args.prompts)
        ]
        figures: dict = {"prompts": args.prompts, "stub_delay_s": args.stub_delay, "cpu_ms_per_request": {}}
        for rep in range(args.repeats):
            line = []
            for client in ("httpx", "auto") if rep % 2 == 0 else ("auto", "httpx"):
                engine = OpenAIEngine(url, "bench", server_metrics=False, http_client=client)
                engine.generate(requests[:16])  # warm-up: imports and first connections
                before = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
                results = engine.generate(requests)
                wall = time.perf_counter() - t0
                after = resource.getrusage(resource.RUSAGE_SELF)
                assert all(r.error is None for r in results), results[0].error
                cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                name = "lean" if client == "auto" else "httpx"
                figures["cpu_ms_per_request"].setdefault(name, []).append(1000 * cpu / len(requests))
                line.append(f"{name} {1000 * cpu / len(requests):.2f} ms CPU/request ({wall:.1f} s wall)")
            print(f"[client-cpu] round {rep} (load {os.getloadavg()[0]:.1f}): {' | '.join(line)}", flush=True)
        median = {k: statistics.median(v) for k, v in figures["cpu_ms_per_request"].items()}
        print(
            f"[client-cpu] median over {args.repeats} rounds, {args.prompts} requests in flight: "
            f"httpx {median['httpx']:.2f} ms, lean {median['lean']:.2f} ms CPU per request "
            f"({median['httpx'] / max(median['lean'], 1e-9):.0f}x)",
            flush=True,
        )
        figures["median"] = median
        return figures
    finally:
        stub.kill()
        stub.wait()


def datatrove_python(given: str | None) -> str | None:
    """The interpreter that runs the datatrove arm, or None when there is none."""
    candidate = given or os.environ.get("DATATROVE_PYTHON")
    if candidate:
        return candidate
    try:
        import datatrove  # noqa: F401 - only probing
    except ImportError:
        return None
    return sys.executable


def datatrove_child(spec_file: str) -> None:
    """One datatrove InferenceRunner run (endpoint mode, its defaults); prints the completion tokens as JSON.
    Runs under the datatrove interpreter: nothing from this project is imported here."""
    from datatrove.data import Document
    from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
    from datatrove.pipeline.writers import JsonlWriter

    spec = json.loads(Path(spec_file).read_text())
    tokens = []

    async def rollout(doc, generate):
        result = await generate({"messages": doc.metadata["messages"]})
        tokens.append(int(result.usage.get("completion_tokens", 0)))
        return result.text

    docs = [
        Document(text=conv[-1]["content"], id=str(i), metadata={"messages": conv})
        for i, conv in enumerate(spec["conversations"])
    ]
    config = InferenceConfig(
        server_type="endpoint",
        model_name_or_path=spec["model"],
        endpoint_url=spec["endpoint"],
        default_generation_params=spec["sampling"],
        rollouts_per_document=spec["n"],
    )
    InferenceRunner(rollout, config, JsonlWriter(spec["output"])).run(docs)
    print(json.dumps({"completion_tokens": sum(tokens), "documents": len(docs)}))


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

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
        "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", str(max_model_len),
        "--max-num-batched-tokens", str(max(16384, max_model_len)),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # a loaded 2-core machine has taken more than 300 s
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
    raise SystemExit("vLLM server did not answer /health within 600 s")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is required
    if "--datatrove-child" in sys.argv:
        datatrove_child(sys.argv[sys.argv.index("--datatrove-child") + 1])
    elif "--stub-child" in sys.argv:
        stub_child(float(sys.argv[sys.argv.index("--stub-child") + 1]))
    else:
        main()
