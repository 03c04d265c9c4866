"""``uld`` mode: offline logit KD across tokenizers, from the teacher's stored top-k logprobs (``kd/`` export).

The teacher (Qwen2.5-Coder, 151,936 tokens) and the student (SmolLM2, 49,152 tokens) cut the same answer into
different tokens, so their distributions cannot be compared id by id (``kd`` refuses that). TRL's ULD loss, from
its GOLD trainer (``trl.experimental.gold``), compares them without a shared vocabulary:

- both tokenizations of the answer are cut into groups that end on the same byte (both are ByteLevel BPE;
  ``use_extended_uld``), and the probabilities inside a group are merged by the chain rule
  (``uld_token_merge_strategy``);
- per group, the two sorted probability vectors are compared with an L1 distance (Universal Logit
  Distillation, Boizard et al. 2024), optionally plus cross-entropy on the answer (``uld_crossentropy_weight``).

TRL's GOLD trainer runs the teacher live on every batch. Here the teacher ran once, in the generate stage, and
stored its top-k per answer token; this module rebuilds the teacher's side of the loss from those rows and
hands both sides to TRL's ``ULDLoss``. Every config field is a field of ``GOLDConfig``; the on-policy ones
(``lmbda``, ``use_vllm``, the teacher model) do not apply and are refused by the config loader.

The teacher's distribution at each answer token is its top-k with the rest of its mass spread evenly over the
other tokens of its vocabulary (the top-k is all the generate stage keeps). Rows whose top-k does not line up
with the teacher tokenizer's tokens of the answer are dropped and counted.

    distill train uld scripts/configs/uld.yaml
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl import SFTTrainer

from pipeline.errors import UserError
from pipeline.rows import messages_of
from pipeline.train.kd import keep_aligned


def _completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion)  # conversational: [{"role": "assistant", ...}]


def _encode(tokenizer, text: str, extended: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` and their UTF-8 byte spans (zeros when alignment is positional)."""
    if extended:
        from trl.experimental.utils import encode_with_byte_offsets

        try:
            [(ids, offsets)] = encode_with_byte_offsets(tokenizer.backend_tokenizer, [text])
        except NotImplementedError:
            raise UserError(
                f"uld: the tokenizer {tokenizer.name_or_path} is not ByteLevel BPE, so byte alignment is "
                "impossible; set `use_extended_uld: false` (positional ULD)"
            ) from None
        return list(ids), [tuple(o) for o in offsets]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids, [(0, 0)] * len(ids)


def tokenize_row(row: dict, tokenizer, teacher_tokenizer, max_length: int | None, extended: bool) -> dict:
    """The student's prompt + answer ids, the teacher's answer ids, both with byte spans, and the stored top-k.

    ``aligned`` is False when the stored top-k does not have one entry per teacher token of the answer.
    """
    prompt_text = tokenizer.apply_chat_template(messages_of(row), add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    text = _completion_text(row["completion"])
    ids, offsets = _encode(tokenizer, text, extended)
    teacher_ids, teacher_offsets = _encode(teacher_tokenizer, text, extended)
    topk_ids, topk_logprobs = row["topk_ids"] or [], row["topk_logprobs"] or []
    if len(topk_ids) == len(teacher_ids) + 1:
        # The engine reported the end-of-turn token too: both sides end their answer with their own.
        end = len(text.encode("utf-8")) if extended else 0
        ids, offsets = ids + [tokenizer.eos_token_id], offsets + [(end, end)]
        teacher_ids = teacher_ids + [teacher_tokenizer.eos_token_id]
        teacher_offsets = teacher_offsets + [(end, end)]
    aligned = len(topk_ids) == len(teacher_ids) and len(teacher_ids) > 0
    if max_length is not None and len(prompt_ids) + len(ids) > max_length:
        keep = max(0, max_length - len(prompt_ids))
        ids, offsets = ids[:keep], offsets[:keep]
        if extended:  # the teacher keeps the same bytes of the answer
            cut = offsets[-1][1] if offsets else 0
            t_keep = sum(1 for _, e in teacher_offsets if e <= cut)
        else:
            t_keep = min(keep, len(teacher_ids))
        teacher_ids, teacher_offsets = teacher_ids[:t_keep], teacher_offsets[:t_keep]
        topk_ids, topk_logprobs = topk_ids[:t_keep], topk_logprobs[:t_keep]
    return {
        "input_ids": prompt_ids + ids,
        "prompt_length": len(prompt_ids),
        "byte_offsets": [(0, 0)] * len(prompt_ids) + offsets,
        "teacher_ids": teacher_ids,
        "teacher_offsets": teacher_offsets,
        "topk_ids": topk_ids if aligned else [],
        "topk_logprobs": topk_logprobs if aligned else [],
        "aligned": aligned and len(ids) > 0 and len(teacher_ids) > 0,
    }


@dataclass
class ULDCollator:
    """Right-pads the student's rows, and lays the teacher's answer out as a causal model would score it.

    The teacher's sequence is one placeholder prompt token followed by its answer tokens; position ``p`` holds
    the stored top-k that predicts the token at ``p + 1``, as the logits of a live teacher forward would.
    """

    pad_token_id: int
    teacher_pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch, length = len(rows), max(len(r["input_ids"]) for r in rows)
        t_length = 1 + max(len(r["teacher_ids"]) for r in rows)
        k = max(len(step) for r in rows for step in r["topk_ids"])
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), -100, dtype=torch.long)
        byte_offsets = torch.zeros((batch, length, 2), dtype=torch.long)
        teacher_input_ids = torch.full((batch, t_length), self.teacher_pad_token_id, dtype=torch.long)
        teacher_labels = torch.full((batch, t_length), -100, dtype=torch.long)
        teacher_byte_offsets = torch.zeros((batch, t_length, 2), dtype=torch.long)
        topk_ids = torch.zeros((batch, t_length, k), dtype=torch.long)
        topk_logprobs = torch.full((batch, t_length, k), float("-inf"))
        for i, r in enumerate(rows):
            n, start = len(r["input_ids"]), r["prompt_length"]
            input_ids[i, :n] = torch.tensor(r["input_ids"])
            attention_mask[i, :n] = 1
            labels[i, start:n] = input_ids[i, start:n]
            byte_offsets[i, :n] = torch.tensor(r["byte_offsets"], dtype=torch.long).reshape(-1, 2)
            m = len(r["teacher_ids"])
            teacher_input_ids[i, 1 : 1 + m] = torch.tensor(r["teacher_ids"])
            teacher_labels[i, 1 : 1 + m] = teacher_input_ids[i, 1 : 1 + m]
            teacher_byte_offsets[i, 1 : 1 + m] = torch.tensor(r["teacher_offsets"], dtype=torch.long).reshape(
                -1, 2
            )
            for j, (ids, lps) in enumerate(zip(r["topk_ids"], r["topk_logprobs"], strict=True)):
                topk_ids[i, j, : len(ids)] = torch.tensor(ids)
                topk_logprobs[i, j, : len(lps)] = torch.tensor(lps)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "byte_offsets": byte_offsets,
            "teacher_input_ids": teacher_input_ids,
            "teacher_labels": teacher_labels,
            "teacher_byte_offsets": teacher_byte_offsets,
            "topk_ids": topk_ids,
            "topk_logprobs": topk_logprobs,
        }


def dense_logprobs(topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[..., k]`` stored top-k -> ``[..., vocab_size]`` log-probabilities: the top-k as stored, the rest of
    the mass spread evenly over the other ids (uniform where nothing is stored). ``-inf`` marks empty slots."""
    valid = torch.isfinite(topk_logprobs)
    covered = torch.logsumexp(topk_logprobs, dim=-1, keepdim=True).clamp(max=-1e-6)  # log mass of the top-k
    others = (vocab_size - valid.sum(-1, keepdim=True)).clamp_min(1).float()
    rest = torch.log(-torch.expm1(covered)) - others.log()  # log((1 - covered) / others)
    dense = rest.expand(*topk_ids.shape[:-1], vocab_size).clone()
    # Empty slots rewrite the first slot's id with its own value (or the rest value when the row is empty).
    first_ok = valid[..., :1]
    fill = torch.where(first_ok, topk_logprobs[..., :1], rest)
    values = torch.where(valid, topk_logprobs, fill)
    ids = torch.where(valid, topk_ids, topk_ids[..., :1])
    return dense.scatter_(-1, ids, values)


class ULDTrainer(SFTTrainer):
    """SFTTrainer whose loss is TRL's ULD loss between the student and the teacher's stored top-k."""

    _tag_names = ["trl", "distill", "uld"]
    _name = "ULD"

    def __init__(
        self, model, args, train_dataset, processing_class, teacher_tokenizer, peft_config=None, **kw
    ):
        from trl.experimental.gold.gold_trainer import ULDLoss

        args.remove_unused_columns = False
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        teacher_pad = teacher_tokenizer.pad_token_id
        super().__init__(
            model=model,
            args=args,
            data_collator=ULDCollator(
                processing_class.pad_token_id, 0 if teacher_pad is None else teacher_pad
            ),
            train_dataset=train_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kw,
        )
        self.teacher_vocab_size = len(teacher_tokenizer)
        self.uld_loss_fn = ULDLoss(
            config=args,
            student_tokenizer=processing_class,
            teacher_tokenizer=teacher_tokenizer,
            device=self.accelerator.device,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        )
        # TRL's ULDLoss takes teacher logits; log-probabilities are logits whose softmax is the distribution.
        teacher = dense_logprobs(inputs["topk_ids"], inputs["topk_logprobs"], self.teacher_vocab_size)
        loss = self.uld_loss_fn(
            student_logits=outputs.logits,
            teacher_logits=teacher.to(outputs.logits.dtype),
            student_labels=inputs["labels"],
            teacher_labels=inputs["teacher_labels"],
            student_input_ids=inputs["input_ids"],
            teacher_input_ids=inputs["teacher_input_ids"],
            student_byte_offsets=inputs["byte_offsets"],
            teacher_byte_offsets=inputs["teacher_byte_offsets"],
        )
        return (loss, outputs) if return_outputs else loss


def prepare_dataset(dataset, tokenizer, teacher_tokenizer, max_length: int | None, extended: bool = True):
    """Tokenize both sides of every row; drop (and count) rows whose top-k does not line up with the teacher."""
    tokenized = dataset.map(
        tokenize_row,
        fn_kwargs={
            "tokenizer": tokenizer,
            "teacher_tokenizer": teacher_tokenizer,
            "max_length": max_length,
            "extended": extended,
        },
        remove_columns=dataset.column_names,
        desc="uld: tokenize",
    )
    fix = "set `teacher_tokenizer_name_or_path` to the teacher that generated them"
    none_aligned = (
        f"no kd/ row's top-k logprobs line up with the teacher tokenizer's tokens of the answer; {fix}"
    )
    return keep_aligned(tokenized, len(teacher_tokenizer), none_aligned, fix)


def build_trainer(job, model, tokenizer, dataset):
    from transformers import AutoTokenizer

    args = job.args
    teacher_tokenizer = AutoTokenizer.from_pretrained(args.teacher_tokenizer_name_or_path)
    if teacher_tokenizer.pad_token is None:
        teacher_tokenizer.pad_token = teacher_tokenizer.eos_token
    train_dataset, dropped = prepare_dataset(
        dataset, tokenizer, teacher_tokenizer, args.max_length, extended=args.use_extended_uld
    )
    trainer = ULDTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        teacher_tokenizer=teacher_tokenizer,
        peft_config=job.peft,
    )
    trainer.extra_manifest = {
        "uld": {
            "teacher_tokenizer": args.teacher_tokenizer_name_or_path,
            "rows_used": len(train_dataset),
            "rows_dropped_misaligned": dropped,
            "teacher_vocab_size": len(teacher_tokenizer),
        }
    }
    return trainer
