"""The `verify` stage's configuration: verifiers, dedup, decontamination, selection and their options.

The stage itself is ``pipeline/stages/verify.py``, which re-exports these names (``verify.VerifyConfig``,
``verify.Config``, the recipe loader's name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.errors import UserError

VERIFIERS = ("math", "code", "regex", "json_schema", "label", "critic")


@dataclass
class DedupConfig:
    exact: bool = field(default=True, metadata={"help": "drop exact duplicates (normalized text)"})
    minhash_threshold: float | None = field(
        default=0.85, metadata={"help": "Jaccard threshold for near-duplicates (MinHash LSH); null disables"}
    )
    over: Literal["completion", "prompt", "both"] = field(
        default="completion",
        metadata={
            "help": "completion: among the samples of one prompt; prompt: near-duplicate prompts across the "
            "dataset (all their samples go); both: the two"
        },
    )
    num_perm: int = field(default=128, metadata={"help": "MinHash permutations"})
    shingle: int = field(default=3, metadata={"help": "words per shingle"})

    def validate(self, path: str) -> None:
        if self.minhash_threshold is not None and not 0 < self.minhash_threshold <= 1:
            raise UserError(f"{path}.minhash_threshold must be in (0, 1], or null to disable")


@dataclass
class DecontaminateConfig:
    against: list[str] = field(
        default_factory=list,
        metadata={
            "help": "evaluation sets: humaneval, validation or test (the run's source, that split), "
            "or a .jsonl/.parquet file or dataset folder with a prompt column"
        },
    )
    ngram: int = field(default=13, metadata={"help": "words per n-gram"})
    min_words: int = field(
        default=8, metadata={"help": "evaluation texts shorter than ngram count whole from this many words"}
    )
    over: Literal["prompt", "completion", "both"] = field(
        default="both", metadata={"help": "which text of a row is checked"}
    )


@dataclass
class MathOptions:
    check_steps: bool = field(
        default=True,
        metadata={
            "help": "also fail a right answer whose working writes a wrong equation (44 + 86 = 120); "
            "false checks the final answer only"
        },
    )


@dataclass
class CriticOptions:
    threshold: float = field(
        default=7.0, metadata={"help": "pass when the judge's 1-10 score is at least this"}
    )
    max_tokens: int = field(default=256, metadata={"help": "most tokens of a judgement"})
    use_reference: bool = field(default=True, metadata={"help": "show the judge the reference answer"})


@dataclass
class CodeOptions:
    timeout_s: float = field(default=10.0, metadata={"help": "wall-clock seconds per program"})
    memory_mb: int = field(default=1024, metadata={"help": "address-space limit per program"})
    workers: int | None = field(default=None, metadata={"help": "programs in parallel (default: cores)"})
    backend: Literal["bwrap", "namespaces"] | None = field(
        default=None,
        metadata={
            "help": "sandbox: bwrap (rootless) or namespaces (root only); default: the first that works"
        },
    )


@dataclass
class VerifyConfig:
    verifiers: list[str] = field(
        default_factory=lambda: ["math"],
        metadata={"help": "verifiers in order: math, code, regex, json_schema, label, critic"},
    )
    dedup: DedupConfig = field(default_factory=DedupConfig, metadata={"help": "duplicate removal"})
    decontaminate: DecontaminateConfig = field(
        default_factory=DecontaminateConfig, metadata={"help": "n-gram decontamination"}
    )
    select: Literal["all", "best_of_n", "first_pass"] = field(
        default="all",
        metadata={
            "help": "keep all passing samples, the best-scored one per prompt, or the first that passes"
        },
    )
    math: MathOptions = field(default_factory=MathOptions, metadata={"help": "math verifier options"})
    critic: CriticOptions = field(
        default_factory=CriticOptions, metadata={"help": "critic (LLM judge) options"}
    )
    code: CodeOptions = field(default_factory=CodeOptions, metadata={"help": "code sandbox options"})
    regex: dict[str, Any] = field(default_factory=dict, metadata={"help": "regex options: pattern, mode"})
    json_schema: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "json_schema options: schema"}
    )
    label: dict[str, Any] = field(default_factory=dict, metadata={"help": "label options: labels"})
    shard_size: int = field(default=500, metadata={"help": "prompts per shard (the unit of resume)"})

    def validate(self, path: str) -> None:
        for name in self.verifiers:
            if name not in VERIFIERS:
                raise UserError(
                    f"{path}.verifiers: unknown verifier '{name}'; use some of {', '.join(VERIFIERS)}"
                )
        if not self.verifiers and self.select != "all":
            raise UserError(f"{path}.select: {self.select} needs at least one verifier in {path}.verifiers")
        if self.shard_size < 1:
            raise UserError(f"{path}.shard_size must be at least 1")
