"""A recipe's `loop:` section: the settings of the performance-guided loop (`distill loop`, pipeline/loop.py).

Every lever is an option, so an experiment can switch each one off and compare at the same teacher budget.
Plain config, like pipeline/recipe.py (which reads it into `Recipe.loop`): it imports nothing above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.errors import UserError


@dataclass
class LoopConfig:
    """The performance-guided loop (`distill loop`). Every lever is an option, so experiments can switch
    each one off and compare at the same teacher budget."""

    iterations: int = field(
        default=3, metadata={"help": "most train/evaluate rounds (iteration 0 = plain SFT)"}
    )
    patience: int = field(default=2, metadata={"help": "stop after this many rounds without improvement"})
    min_delta: float = field(default=0.0, metadata={"help": "smallest validation gain that counts"})
    validation_n: int = field(
        default=150,
        metadata={"help": "validation prompts (the source's validation split); they only decide stopping"},
    )
    mine_n: int = field(
        default=200,
        metadata={"help": "training-split prompts the student is mined on (kept apart from validation)"},
    )
    validation_path: str | None = field(
        default=None,
        metadata={
            "help": "user data (required there): a file of validation prompts in the source's columns; "
            "the student is then mined on the source rows themselves"
        },
    )
    regenerate_temperature: float = field(
        default=0.7, metadata={"help": "method teacher: sampling temperature of the teacher writing problems"}
    )
    train_config: str = field(
        default="scripts/configs/sft.yaml", metadata={"help": "TRL SFT config of each round"}
    )
    epochs: float | None = field(
        default=2.0, metadata={"help": "epochs per round over all data so far (constant across rounds)"}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "training steps per round (overrides epochs)"}
    )
    method: Literal["targeted", "task", "random", "teacher", "rephrase"] = field(
        default="targeted",
        metadata={
            "help": "regeneration: targeted, task (same structure), random (control arm), teacher (writes "
            "problems and answers), rephrase (the teacher rewrites each failed prompt in new words, numbers "
            "kept, with the recipe's rephrase settings)"
        },
    )
    mine_rephrased: bool = field(
        default=False,
        metadata={
            "help": "the teacher rewrites each round's mining pool first (one rewrite per prompt, numbers kept), "
            "so the student is mined on wordings it was not trained on; its tokens count against the budget"
        },
    )
    per_prompt: int = field(default=3, metadata={"help": "new prompts per hard prompt"})
    warm_start: bool = field(
        default=True,
        metadata={
            "help": "later rounds keep training the best student on the new rows plus a replay sample "
            "(false: a fresh adapter on all data so far every round)"
        },
    )
    replay: float = field(
        default=1.0, metadata={"help": "warm start: old rows replayed per new row (0 = new rows only)"}
    )
    warm_epochs: float = field(
        default=1.0, metadata={"help": "warm start: epochs over a later round's new and replayed rows"}
    )
    max_per_prompt: int | None = field(
        default=2, metadata={"help": "verified answers kept per new prompt (null: all of them)"}
    )
    new_weight: int = field(
        default=1, metadata={"help": "times each verified row of a later round is repeated in training"}
    )
    hard_samples: int = field(
        default=8,
        metadata={"help": "adaptive effort: most samples for a new prompt (first the generate stage's n)"},
    )
    stop_at: int = field(
        default=2, metadata={"help": "adaptive effort: stop sampling a prompt once it has this many verified"}
    )
    generator: Literal["teacher", "best"] = field(
        default="best",
        metadata={"help": "best: once the best student beats the teacher on validation, it generates"},
    )
    teacher_budget_tokens: int | None = field(
        default=None, metadata={"help": "stop once generation used this many tokens (base data included)"}
    )
    engine: Literal["hf", "vllm"] = field(
        default="vllm",
        metadata={"help": "engine the student is evaluated on (vllm: one engine for the whole loop)"},
    )
    lora_mode: Literal["auto", "vllm", "merge"] = field(
        default="auto",
        metadata={
            "help": "vllm: how student adapters are served: vllm (LoRA per request, no restart), merge (a "
            "merged copy, one engine restart per adapter switch), auto (vllm on a GPU, merge on a CPU, where "
            "vLLM's LoRA kernels are 5-30x slower)"
        },
    )
    max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "most new tokens per answer when the loop scores the student and the teacher (default: "
            "the generate stage's max_tokens, the length the training answers were cut at; score at the "
            "budget your evaluation uses, or validation picks students by answers the test cuts off)"
        },
    )
    hard_negatives: bool = field(
        default=True,
        metadata={
            "help": "the mined prompts are answered too, and after SFT a DPO pass prefers their verified "
            "answer (chosen) over the student's own failing answer (rejected)"
        },
    )
    dpo_config: str = field(
        default="scripts/configs/dpo.yaml", metadata={"help": "TRL DPO config of the hard-negative pass"}
    )

    def validate(self, path: str) -> None:
        for name in (
            "iterations", "patience", "validation_n", "mine_n", "per_prompt", "new_weight", "hard_samples",
            "stop_at", "max_per_prompt", "max_steps", "max_tokens",
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{path}.{name} must be at least 1, not {value}")
