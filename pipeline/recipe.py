"""Recipe YAML -> typed, validated dataclasses. Unknown keys and wrong types are errors with the key's path.

A recipe (scripts/recipes/*.yaml) names the teacher(s), the prompt source, the stages with their settings and
the student:

    run: demo
    teacher: {model: smollm2-135m-instruct, engine: vllm}
    student: {model: smollm2-135m-instruct, prune_layers: 6}   # pruned once: pipeline/student.py
    source: {task: arithmetic, n: 200, seed: 0}
    stages:
      - generate: {n: 4, temperature: 0.8, max_tokens: 256, seed: 0}
      - verify: {verifiers: [math], dedup: {minhash_threshold: 0.85}}
      - export: {formats: [sft, dpo, kd]}

Stage settings are each stage module's own `Config` dataclass (pipeline/stages/<stage>.py), so a stage's
options are declared once, next to the code that uses them, with their help text.

This module is plain config: it imports nothing above it. Knowing the stage modules is the runner's job, so
the full load, with every stage's settings checked against its `Config`, is `pipeline.runner.load_recipe`;
`read_recipe` here takes the stage lookup as an argument. Running a recipe (pruning the student into a
`RunContext`, opening stages) lives in pipeline/runner.py too. The `loop:` section's settings are
`LoopConfig` (pipeline/loop_config.py, importable from here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config import from_dict, load_yaml
from pipeline.errors import UserError
from pipeline.loop_config import LoopConfig
from pipeline.tasks import SourceConfig

# Stage name in recipes and on the command line -> module in pipeline/stages/ (the runner imports it).
STAGE_MODULES = {
    "prompts": "prompts",
    "generate": "generate",
    "verify": "verify",
    "mine": "mine",
    "regenerate": "regenerate",
    "rephrase": "rephrase",
    "self-distill": "self_distill",
    "export": "export",
}


@dataclass
class ModelConfig:
    """A model and the engine that runs it (teacher, critic)."""

    model: str = field(
        metadata={"help": "model spec: smollm2-135m-instruct, a local folder, a .gguf file or a hub id"}
    )
    engine: Literal["vllm", "openai", "hf"] = field(default="vllm", metadata={"help": "inference backend"})
    name: str | None = field(
        default=None, metadata={"help": "label recorded in the `teacher` column (default: model)"}
    )
    revision: str | None = field(default=None, metadata={"help": "hub revision (hub ids only)"})
    adapter: str | None = field(
        default=None,
        metadata={"help": "a LoRA adapter folder on top of model (vllm: applied per request; hf: PEFT)"},
    )
    # vllm / hf
    dtype: str | None = field(
        default=None, metadata={"help": "float32 on CPU (default), bfloat16/auto on GPU"}
    )
    max_model_len: int | None = field(default=None, metadata={"help": "context length (prompt + completion)"})
    tensor_parallel_size: int = field(
        default=1, metadata={"help": "vllm: GPUs one model is split over, layer by layer (tensor parallel)"}
    )
    pipeline_parallel_size: int = field(
        default=1,
        metadata={"help": "vllm: stages one model is cut into (pipeline parallel; GPUs = tp x pp per copy)"},
    )
    gpu_memory_utilization: float | None = field(
        default=None, metadata={"help": "vllm: fraction of GPU memory"}
    )
    enable_prefix_caching: bool | None = field(
        default=None, metadata={"help": "vllm: share KV cache of prefixes"}
    )
    batch_size: int | None = field(default=None, metadata={"help": "hf: prompts per generate() batch"})
    # openai
    base_url: str | list[str] | None = field(
        default=None,
        metadata={
            "help": "openai: server URL, e.g. http://127.0.0.1:8000/v1, or a list of them (requests are "
            "spread over the servers)"
        },
    )
    served_model_name: str | None = field(
        default=None, metadata={"help": "openai: model name the server expects"}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "openai: environment variable with the key"}
    )
    concurrency: int | None = field(
        default=None,
        metadata={
            "help": "openai: requests in flight per server, pinned (default: adapt: start with every request, "
            "or max_num_seqs, halve on 429/503/timeouts)"
        },
    )
    max_num_seqs: int | None = field(
        default=None,
        metadata={
            "help": "openai: the server's --max-num-seqs, when known: where adaptive concurrency starts"
        },
    )
    timeout: float = field(
        default=600.0,
        metadata={
            "help": "openai: seconds per request, queueing at the server included (with many requests in "
            "flight on a slow server a short timeout retries work the server is still doing)"
        },
    )
    max_retries: int = field(
        default=6, metadata={"help": "openai: retries of a request that failed with a 5xx, 429 or timeout"}
    )
    backoff_base: float = field(
        default=0.5, metadata={"help": "openai: first retry waits up to this many seconds (doubling)"}
    )
    backoff_max: float = field(default=30.0, metadata={"help": "openai: longest wait between retries"})

    def validate(self, path: str) -> None:
        if self.engine == "openai" and not self.base_url:
            raise UserError(
                f"{path}.base_url is required with engine: openai (e.g. http://127.0.0.1:8000/v1)"
            )
        if self.adapter and self.engine == "openai":
            raise UserError(
                f"{path}.adapter: serve the adapter with `--lora-modules NAME=PATH` and set served_model_name "
                "to NAME instead"
            )
        if self.adapter and not (Path(self.adapter) / "adapter_config.json").is_file():
            raise UserError(
                f"{path}.adapter: {self.adapter} has no adapter_config.json; pass a LoRA adapter folder"
            )
        if self.concurrency is not None and self.concurrency < 1:
            raise UserError(f"{path}.concurrency must be at least 1 (requests in flight per server)")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise UserError(f"{path}.max_num_seqs must be at least 1 (the server's batch size)")
        if self.max_retries < 0:
            raise UserError(f"{path}.max_retries must be 0 or more")
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1:
            raise UserError(f"{path}.tensor_parallel_size and pipeline_parallel_size must be at least 1")

    @property
    def label(self) -> str:
        return self.name or self.model

    def engine_options(self) -> dict:
        """Options passed to the engine constructor (only those set)."""
        keys = {
            "vllm": (
                "dtype",
                "max_model_len",
                "tensor_parallel_size",
                "pipeline_parallel_size",
                "gpu_memory_utilization",
                "enable_prefix_caching",
            ),
            "hf": ("dtype", "batch_size", "max_model_len"),
            "openai": (
                "base_url",
                "served_model_name",
                "api_key_env",
                "concurrency",
                "max_num_seqs",
                "timeout",
                "max_retries",
                "backoff_base",
                "backoff_max",
            ),
        }[self.engine]
        options = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.adapter and self.engine == "vllm":
            from pipeline.adapters import adapter_rank

            options.update(enable_lora=True, max_lora_rank=adapter_rank(self.adapter))
        elif self.adapter and self.engine == "hf":
            options["adapter"] = self.adapter
        if options.get("pipeline_parallel_size") == 1:
            del options["pipeline_parallel_size"]  # the default: keeps fingerprints of older runs
        return options

    @property
    def gpus(self) -> int:
        """GPUs one copy of this model needs (tensor x pipeline parallel); 0 for a remote server."""
        if self.engine == "openai":
            return 0
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclass
class StudentConfig:
    model: str = field(metadata={"help": "model spec of the student's starting point"})
    prune_layers: int = field(
        default=0, metadata={"help": "drop this many decoder layers (depth pruning) first"}
    )
    prune_start: int | None = field(
        default=None, metadata={"help": "first layer to drop (default: chosen by `prune_by`)"}
    )
    prune_by: str = field(
        default="kl",
        metadata={
            "help": "how the block is chosen: `kl` (least change of the model's own answers to calibration "
            "prompts) or `angular` (least angular distance of the hidden states across the block)"
        },
    )

    def validate(self, path: str) -> None:
        if self.prune_layers < 0:
            raise UserError(f"{path}.prune_layers must be 0 (no pruning) or more, not {self.prune_layers}")
        if self.prune_start is not None and not self.prune_layers:
            raise UserError(f"{path}.prune_start needs prune_layers (how many layers to drop from there)")
        from pipeline.prune import METHODS

        if self.prune_by not in METHODS:
            raise UserError(f"{path}.prune_by must be one of {', '.join(METHODS)}, not '{self.prune_by}'")


@dataclass
class ExecutorConfig:
    """How a stage's shards are run; the same options on the command line and in a recipe's `executor:`."""

    kind: Literal["local", "ray", "slurm"] = field(
        default="local",
        metadata={"help": "local (this process), ray (a Ray cluster) or slurm (an array job)"},
    )
    address: str | None = field(
        default=None, metadata={"help": "ray: cluster to join (e.g. ray://head:10001); default: start one"}
    )
    workers: int | None = field(
        default=None,
        metadata={
            "help": "ray: engine-holding actors (default: as many as the cluster's GPUs or CPUs allow)"
        },
    )
    cpus_per_worker: float = field(default=1.0, metadata={"help": "ray/slurm: CPUs per worker"})
    max_retries: int = field(
        default=3, metadata={"help": "ray: times a shard whose worker died is run again on a fresh one"}
    )
    partition: str | None = field(default=None, metadata={"help": "slurm: partition"})
    account: str | None = field(default=None, metadata={"help": "slurm: account charged"})
    time_min: int = field(default=240, metadata={"help": "slurm: time limit per array task, minutes"})
    gpus_per_task: int | None = field(
        default=None, metadata={"help": "slurm: GPUs per array task (default: what one model copy needs)"}
    )
    mem_gb: float | None = field(default=None, metadata={"help": "slurm: memory per array task"})
    array_parallelism: int = field(default=256, metadata={"help": "slurm: most array tasks at once"})
    wait: bool = field(
        default=True, metadata={"help": "slurm: wait for the array, then merge (false: print the job id)"}
    )
    cluster: Literal["slurm", "local"] = field(
        default="slurm",
        metadata={"help": "slurm: submitit backend; `local` runs the array as local processes"},
    )

    def validate(self, path: str) -> None:
        if self.max_retries < 0:
            raise UserError(f"{path}.max_retries must be 0 or more")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"{path}.workers must be at least 1")
        if self.time_min < 1:
            raise UserError(f"{path}.time_min must be at least 1 minute")


@dataclass
class RunContext:
    """What stages may need besides their own config: the models of the run, and where it lives."""

    teachers: list[ModelConfig] = field(default_factory=list)
    student: StudentConfig | None = None
    critic: ModelConfig | None = None
    source: SourceConfig | None = None
    run_dir: Path | None = None
    original_student: str | None = field(
        default=None, metadata={"help": "the unpruned student model when `student` is a pruned copy of it"}
    )


@dataclass
class StageEntry:
    name: str
    config: object  # the stage module's Config dataclass (a plain mapping when read without stage_config)


@dataclass
class Recipe:
    run: str
    source: SourceConfig
    teachers: list[ModelConfig]
    stages: list[StageEntry]
    student: StudentConfig | None = None
    critic: ModelConfig | None = None
    loop: LoopConfig | None = None
    executor: ExecutorConfig | None = None  # where shards run (pipeline/executors.py)
    path: Path | None = None


TOP_KEYS = ("run", "teacher", "student", "critic", "source", "stages", "loop", "executor")


def read_recipe(path: str | Path, stage_config: Callable[[str], type] | None = None) -> Recipe:
    """Read and validate a recipe. `stage_config(name)` gives a stage's `Config` dataclass, which checks that
    stage's settings (`pipeline.runner.load_recipe` passes it). Without it, stage names are still checked but
    each stage's settings stay a plain mapping: enough for what needs only the run, source and student
    (training, pruning)."""
    data = load_yaml(path)
    where = "recipe"
    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"{where}: '{key}' is not a known key; expected one of: {', '.join(TOP_KEYS)}")
    for key in ("run", "teacher", "source", "stages"):
        if key not in data:
            raise UserError(f"{where} needs the key '{key}' (see scripts/recipes/quickstart.yaml)")
    run = data["run"]
    if not isinstance(run, str) or not run.strip() or "/" in run:
        raise UserError(f"{where}.run must be a non-empty name without '/', not {run!r}")
    teacher = data["teacher"]
    teacher_list = teacher if isinstance(teacher, list) else [teacher]
    if not teacher_list:
        raise UserError(f"{where}.teacher must name at least one model")
    teachers = [
        from_dict(ModelConfig, t, f"{where}.teacher" + (f"[{i}]" if isinstance(teacher, list) else ""))
        for i, t in enumerate(teacher_list)
    ]
    labels = [t.label for t in teachers]
    if len(set(labels)) != len(labels):
        raise UserError(f"{where}.teacher lists the same model twice; give each a distinct `name:`")
    source = from_dict(SourceConfig, data["source"], f"{where}.source")
    student = from_dict(StudentConfig, data["student"], f"{where}.student") if data.get("student") else None
    critic = from_dict(ModelConfig, data["critic"], f"{where}.critic") if data.get("critic") else None
    loop = from_dict(LoopConfig, data["loop"], f"{where}.loop") if data.get("loop") else None
    executor = None
    if data.get("executor"):
        executor = from_dict(ExecutorConfig, data["executor"], f"{where}.executor")
    stages_raw = data["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise UserError(f"{where}.stages must be a non-empty list like [{{generate: {{n: 4}}}}]")
    stages = []
    for i, entry in enumerate(stages_raw):
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise UserError(f"{where}.stages[{i}] must be one mapping like {{generate: {{...}}}}")
        ((name, settings),) = entry.items()
        if name not in STAGE_MODULES:
            raise UserError(f"unknown stage '{name}'; expected one of: {', '.join(STAGE_MODULES)}")
        at = f"{where}.stages[{i}].{name}"
        if stage_config is not None:
            stages.append(StageEntry(name, from_dict(stage_config(name), settings, at)))
        elif settings is None or isinstance(settings, dict):
            stages.append(StageEntry(name, dict(settings or {})))
        else:
            raise UserError(f"{at} must be a mapping of settings, not {type(settings).__name__}")
    return Recipe(
        loop=loop,
        executor=executor,
        run=run,
        source=source,
        teachers=teachers,
        stages=stages,
        student=student,
        critic=critic,
        path=Path(path),
    )
