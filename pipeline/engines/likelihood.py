"""How likely a model finds given answers: the mean log-probability per answer token, in its own template.

Used to pick, among several verified answers to one prompt, the one a student finds most natural
("Not All Correct Answers Are Equal"): a small student learns an answer close to its own distribution
faster than a strong teacher's idiom. The answer is scored in the *scorer's* chat template and tokenizer,
so it works whatever model wrote the answer.

    from pipeline.engines.likelihood import answer_logprobs
    from pipeline.models import resolve
    scores = answer_logprobs(resolve("smollm2-135m-instruct"), [(messages, "3 + 5 = 8.")])
"""

from __future__ import annotations

from pipeline.models import ResolvedModel


def answer_logprobs(
    model: ResolvedModel, items: list[tuple[list[dict], str]], batch_size: int = 16
) -> list[float]:
    """Mean log-probability per token of each answer given its conversation (the turns before it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path)
    net = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for messages, answer in items:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": answer}], tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        # Score the answer's own tokens (the template's end-of-turn token included: stopping is learned too).
        start = (
            len(prompt_ids)
            if full_ids[: len(prompt_ids)] == prompt_ids
            else _common_prefix(prompt_ids, full_ids)
        )
        encoded.append((full_ids, start))
    out: list[float] = []
    with torch.no_grad():
        for b in range(0, len(encoded), batch_size):
            batch = encoded[b : b + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (row, _) in enumerate(batch):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            logprobs = torch.log_softmax(net(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for i, (row, start) in enumerate(batch):
                targets = torch.tensor(row[start:])
                picked = logprobs[i, start - 1 : len(row) - 1].gather(1, targets[:, None]).squeeze(1)
                out.append(float(picked.mean()) if len(targets) else float("-inf"))
    return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return max(n, 1)
