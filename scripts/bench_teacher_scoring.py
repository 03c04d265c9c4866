"""Benchmark: on-policy teacher scoring (``distill train gold``), vLLM prompt logprobs against an HF forward.

Each GOLD step hands the teacher a batch of token sequences (prompt + the student's sampled answer) and needs
its next-token distribution at every position, as ``[batch, seq, vocab]`` logits. Two ways, same batches,
interleaved rounds:
- ``hf`` (the reference, TRL's own): a float32 forward of the teacher in the trainer's process;
- ``vllm`` (``teacher_scoring: vllm``): ``VLLMScoredTeacher``, one prefill per sequence in a vLLM engine,
  top-k prompt logprobs, turned into the same dense tensor.
tokens/s counts the sequences' real tokens over the wall time of the call, dense tensor included. Prints the
median per way, the ratio vllm / hf, each engine's start-up time, and how far vLLM's top-1 log-probability is
from the HF forward's (the scores must agree, or the speed means nothing).

    python scripts/bench_teacher_scoring.py                          # Qwen teacher, the quickstart's answers
    python scripts/bench_teacher_scoring.py --rows 64 --batch-size 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def sequences(tokenizer, dataset: str | None, rows: int) -> list[list[int]]:
    """Prompt + answer token ids in the teacher's chat template: the quickstart's verified answers when
    ``dataset`` is an export folder, else arithmetic questions with a worked answer."""
    if dataset:
        from datasets import load_from_disk

        conversations = load_from_disk(str(Path(dataset) / "data" / "sft"))["messages"][:rows]
    else:
        from pipeline.tasks import load_task

        conversations = [
            r["messages"]
            + [{"role": "assistant", "content": f"{r['prompt']} {r['reference']}.\nAnswer: {r['reference']}"}]
            for r in load_task("arithmetic", "train", n=rows)
        ]
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def batches(seqs: list[list[int]], size: int, pad: int):
    import torch

    for start in range(0, len(seqs), size):
        part = seqs[start : start + size]
        length = max(map(len, part))
        ids = torch.full((len(part), length), pad, dtype=torch.long)
        mask = torch.zeros((len(part), length), dtype=torch.long)
        for i, s in enumerate(part):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        yield ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument(
        "--dataset", default="runs/quickstart/04-export", help="an export folder ('' : synthetic)"
    )
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.engines.vllm import VLLMEngine
    from pipeline.models import resolve
    from pipeline.train.teacher_scoring import VLLMScoredTeacher

    path = resolve(args.teacher).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = args.dataset if args.dataset and Path(args.dataset).exists() else None
    seqs = sequences(tokenizer, dataset, args.rows)
    tokens = sum(map(len, seqs))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    t0 = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    start_hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = VLLMEngine(resolve(args.teacher))
    start_vllm = time.perf_counter() - t0
    scorer = VLLMScoredTeacher(engine, hf.config.vocab_size)

    def run_hf():
        with torch.no_grad():
            return [hf(input_ids=i, attention_mask=m).logits for i, m in batches(seqs, args.batch_size, pad)]

    def run_vllm():
        return [scorer(input_ids=i, attention_mask=m).logits for i, m in batches(seqs, args.batch_size, pad)]

    seconds = {"hf": [], "vllm": []}
    gap = []
    for r in range(args.repeats):
        outs = {}
        for name, fn in (("hf", run_hf), ("vllm", run_vllm)):
            t0 = time.perf_counter()
            outs[name] = fn()
            seconds[name].append(time.perf_counter() - t0)
        if r == 0:  # top-1 agreement at every real position of the first batch
            (_, mask), h, v = next(batches(seqs, args.batch_size, pad)), outs["hf"][0], outs["vllm"][0]
            real = mask.bool()
            h_top = h.log_softmax(-1).max(-1)
            v_top = v.max(-1)
            agree = (h_top.indices == v_top.indices)[real].float().mean().item()
            gap = [agree, (h_top.values - v_top.values)[real].abs().max().item()]
    engine.close()
    median = {k: statistics.median(v) for k, v in seconds.items()}
    report = {
        "teacher": args.teacher,
        "sequences": len(seqs),
        "tokens": tokens,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "tokens_per_s": {k: round(tokens / v, 1) for k, v in median.items()},
        "ratio_vllm_over_hf": round(median["hf"] / median["vllm"], 3),
        "seconds_per_round": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
        "start_s": {"hf": round(start_hf, 1), "vllm": round(start_vllm, 1)},
        "top1_agreement": round(gap[0], 4),
        "top1_logprob_max_abs_diff": round(gap[1], 4),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
