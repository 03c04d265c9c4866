"""``kd`` mode: offline top-k logit KD from the teacher's stored logprobs (``kd/`` export).

Each row holds a prompt, the teacher's completion, and for every completion token the teacher's top-k ids
and log-probabilities. The student is trained on

    loss = (1 - ce_weight) * divergence(student || teacher on the top-k + rest, temperature) + ce_weight * CE

with the divergence from ``pipeline.train.kd_loss`` (forward KL, reverse KL, or generalized JSD), computed
only on completion tokens. ``KDTrainer`` is TRL's ``SFTTrainer`` (model loading, PEFT, logging) with its own
tokenization, collator and ``compute_loss``.

The completion is re-tokenized with the student's tokenizer; rows whose token count does not match the
stored top-k (a different tokenizer, or a non-canonical tokenization) are dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from trl import SFTConfig, SFTTrainer

from pipeline.errors import UserError
from pipeline.rows import messages_of
from pipeline.train.kd_loss import DIVERGENCES, topk_kd_loss


@dataclass
class KDConfig(SFTConfig):
    """``SFTConfig`` plus the offline top-k KD loss settings."""

    divergence: str = field(
        default="forward_kl",
        metadata={
            "help": "Divergence between the teacher's and the student's top-k distributions: `forward_kl` "
            "(KL(teacher||student), mode-covering), `reverse_kl` (KL(student||teacher), mode-seeking, as in MiniLLM) "
            "or `jsd` (generalized Jensen-Shannon with `beta`, as in GKD).",
            "choices": list(DIVERGENCES),
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Softmax temperature applied to both distributions before the divergence; > 1 flattens them. "
            "The divergence is multiplied by temperature**2 to keep gradient scales comparable."
        },
    )
    beta: float = field(
        default=0.5,
        metadata={
            "help": "Generalized JSD interpolation in [0, 1] (only for `divergence: jsd`): 0 is forward KL, "
            "1 is reverse KL."
        },
    )
    ce_weight: float = field(
        default=0.1,
        metadata={
            "help": "Weight of the cross-entropy on the teacher's completion tokens, in [0, 1]; the divergence gets "
            "1 - ce_weight."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if not 0.0 <= self.ce_weight <= 1.0:
            raise ValueError(f"ce_weight must be in [0, 1], got {self.ce_weight}")


def _completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion)  # conversational: [{"role": "assistant", ...}]


def tokenize_row(row: dict, tokenizer, max_length: int | None) -> dict:
    """Prompt (chat template) + completion ids, aligned with the stored top-k; ``aligned=False`` if impossible."""
    prompt_text = tokenizer.apply_chat_template(messages_of(row), add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(_completion_text(row["completion"]), add_special_tokens=False)["input_ids"]
    topk_ids, topk_logprobs = row["topk_ids"] or [], row["topk_logprobs"] or []
    # The engine usually reports the end-of-turn token too; the completion text does not contain it.
    if len(topk_ids) == len(completion_ids) + 1 and tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    aligned = len(topk_ids) == len(completion_ids) and len(topk_ids) > 0
    if max_length is not None:
        keep = max(0, max_length - len(prompt_ids))
        completion_ids, topk_ids, topk_logprobs = completion_ids[:keep], topk_ids[:keep], topk_logprobs[:keep]
    return {
        "input_ids": prompt_ids + completion_ids,
        "prompt_length": len(prompt_ids),
        "topk_ids": topk_ids if aligned else [],
        "topk_logprobs": topk_logprobs if aligned else [],
        "aligned": aligned and len(completion_ids) > 0,
    }


@dataclass
class KDCollator:
    """Right-pads a batch; teacher top-k tensors are placed at the positions of the tokens they predict."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(r["input_ids"]) for r in rows)
        k = max(len(step) for r in rows for step in r["topk_ids"])
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), -100, dtype=torch.long)
        topk_ids = torch.zeros((batch, length, k), dtype=torch.long)
        topk_logprobs = torch.full((batch, length, k), float("-inf"))
        kd_mask = torch.zeros((batch, length), dtype=torch.bool)
        for i, r in enumerate(rows):
            n, start = len(r["input_ids"]), r["prompt_length"]
            input_ids[i, :n] = torch.tensor(r["input_ids"])
            attention_mask[i, :n] = 1
            labels[i, start:n] = input_ids[i, start:n]
            for j, (ids, lps) in enumerate(zip(r["topk_ids"], r["topk_logprobs"], strict=True)):
                topk_ids[i, start + j, : len(ids)] = torch.tensor(ids)
                topk_logprobs[i, start + j, : len(lps)] = torch.tensor(lps)
            kd_mask[i, start : start + len(r["topk_ids"])] = True
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "topk_ids": topk_ids,
            "topk_logprobs": topk_logprobs,
            "kd_mask": kd_mask,
        }


class KDTrainer(SFTTrainer):
    """SFTTrainer whose loss is top-k KD against stored teacher logprobs, mixed with cross-entropy."""

    _tag_names = ["trl", "distill", "kd"]
    _name = "KD"

    def __init__(self, model, args: KDConfig, train_dataset, processing_class, peft_config=None, **kwargs):
        args.remove_unused_columns = False
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        super().__init__(
            model=model,
            args=args,
            data_collator=KDCollator(processing_class.pad_token_id),
            train_dataset=train_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        self._kd_logs: dict[str, list[float]] = {"kd_loss": [], "ce_loss": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = outputs.logits[:, :-1, :]  # position t predicts token t + 1
        kd = topk_kd_loss(
            logits,
            inputs["topk_ids"][:, 1:],
            inputs["topk_logprobs"][:, 1:],
            inputs["kd_mask"][:, 1:],
            divergence=self.args.divergence,
            temperature=self.args.temperature,
            beta=self.args.beta,
        )
        ce = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            inputs["labels"][:, 1:].reshape(-1),
            ignore_index=-100,
        )
        w = self.args.ce_weight
        loss = (1.0 - w) * kd + w * ce
        self._kd_logs["kd_loss"].append(kd.item())
        self._kd_logs["ce_loss"].append(ce.item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for key, values in self._kd_logs.items():
            if values and "loss" in logs:
                logs[key] = round(sum(values) / len(values), 6)
                values.clear()
        super().log(logs, *args, **kwargs)


def prepare_dataset(dataset, tokenizer, max_length: int | None):
    """Tokenize and align every row; drop (and count) rows whose top-k does not line up with the tokens."""
    vocab = len(tokenizer)
    if "topk_tokenizer" in dataset.column_names:
        from pipeline.models import vocab_fingerprint

        theirs = {t for t in dataset["topk_tokenizer"] if t}
        mine = vocab_fingerprint(tokenizer)
        if theirs - {mine}:
            raise UserError(
                f"kd: the teacher's top-k ids index another vocabulary (tokenizer {sorted(theirs)[0][:12]}, the "
                f"student's is {mine[:12]}); same-tokenizer logit KD cannot mix them: use `distill train uld` "
                "(logit KD aligned across tokenizers), or `distill train sft`"
            )
    tokenized = dataset.map(
        tokenize_row,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
        remove_columns=dataset.column_names,
        desc="kd: tokenize",
    )
    return keep_aligned(
        tokenized,
        vocab,
        none_aligned="no kd/ row's top-k logprobs line up with the student's tokenization of the completion: the "
        "teacher probably uses a different tokenizer; use `distill train uld` (logit KD aligned across "
        "tokenizers) instead",
        fix="different tokenizers; use `distill train uld` (logit KD aligned across tokenizers) instead",
    )


def keep_aligned(tokenized, vocab: int, none_aligned: str, fix: str):
    """The tokenized kd/ rows whose stored top-k lines up with their tokens, and how many were dropped;
    refuses (one line each) when none does, or when a top-k id lies outside the ``vocab`` ids it indexes."""
    kept = tokenized.filter(lambda r: r["aligned"]).remove_columns("aligned")
    if len(kept) == 0:
        raise UserError(none_aligned)
    max_id = max(max(max(step) for step in r) for r in kept["topk_ids"] if r)
    if max_id >= vocab:
        raise UserError(
            f"top-k ids go up to {max_id} but the vocabulary they index has {vocab} tokens: {fix}"
        )
    return kept, len(tokenized) - len(kept)


def build_trainer(job, model, tokenizer, dataset):
    train_dataset, dropped = prepare_dataset(dataset, tokenizer, job.args.max_length)
    trainer = KDTrainer(
        model=model,
        args=job.args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=job.peft,
    )
    trainer.extra_manifest = {"kd": {"rows_used": len(train_dataset), "rows_dropped_misaligned": dropped}}
    return trainer
