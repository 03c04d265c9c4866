"""The loop's engines: the student engine (every round's adapter) and the teacher, each started once.

A vLLM start costs about 30 s on a CPU, so pipeline/loop.py keeps one student engine and one teacher engine
for all its rounds, stops a merge-mode student engine before training (memory), and shares one engine when
the teacher is the student's own base model. A student that trains every weight is a new model each round:
its engine restarts on the round's model folder (and is stopped before training, like a merge-mode one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.recipe import LoopConfig, Recipe


class LoopEngines:
    """The loop's engines, each started once and kept across rounds (a vLLM start costs ~30 s on a CPU).

    On vllm the student engine serves every student adapter (per request with vLLM's LoRA, or as a merged
    copy on a CPU: `lora_mode`), and, when the teacher is the student's own base model on vllm, the teacher
    too."""

    def __init__(self, recipe: Recipe, student_model: str, loop: LoopConfig, log=None):
        self.recipe, self.student_model, self.loop = recipe, student_model, loop
        # the rank the student engine's LoRA must hold; None when no student has an adapter (no LoRA)
        self.lora_rank = lora_rank(loop)
        self.full_weights = _peft(loop.train_config) is None  # each round's student is a new model folder
        self._student = self._teacher = None
        self._student_on = None  # the model folder the student engine serves
        self.start_s = 0.0  # seconds spent starting engines so far (a round's step table reports its share)
        self.log = log or (lambda msg: None)

    def _started(self, which: str, model: str, t0: float) -> None:
        seconds = time.perf_counter() - t0
        self.start_s += seconds
        self.log(f"[distill] loop: started the {which} engine ({model}) in {seconds:.1f}s")

    def student(self, model: str | None = None, adapter: str | None = None):
        """The engine for the student's evaluation and mining (None: each stage loads its own hf model).
        `model`: the student's weights (default: the base student; a fully trained round's folder restarts
        the engine on it); `adapter`: the one it will serve first (a merge-mode engine then starts on that
        merged copy)."""
        if self.loop.engine != "vllm":
            return None
        model = model or self.student_model
        if self._student is not None and self._student_on != model:
            self._student.close()
            self._student = None
        if self._student is None:
            from pipeline.engines.vllm import VLLMEngine
            from pipeline.models import resolve

            mode = None if self.loop.lora_mode == "auto" else self.loop.lora_mode
            t0 = time.perf_counter()
            self._student = VLLMEngine(  # without LoRA (no config trains an adapter) the rest is unused
                resolve(model),
                enable_lora=self.lora_rank is not None,
                max_lora_rank=self.lora_rank,
                lora_mode=mode,
                adapter=adapter,
            )
            self._student_on = model
            self._started("student", model, t0)
        return self._student

    def before_training(self) -> None:
        """Free the memory training needs. A merge-mode engine restarts for the next adapter anyway, so it
        is stopped now (here a kept engine plus training needed ~9 GB, and two loops side by side ran out of
        memory), and so is a full-weight student's (the next round is a new model); a per-request LoRA
        engine is kept (no restart) and holds its memory."""
        if self._student is not None and (self._student.lora_mode == "merge" or self.full_weights):
            self._student.close()
            self._student = None  # (a teacher that shares it is the same engine: stopped too)

    def shares_teacher(self) -> bool:
        tc = self.recipe.teachers[0]
        return (
            not self.full_weights
            and self.loop.engine == "vllm"
            and tc.engine == "vllm"
            and not tc.adapter
            and tc.model == self.student_model
            and not tc.engine_options()
        )

    def teacher(self):
        if self.shares_teacher():
            return self.student()
        if self._teacher is None:
            from pipeline.engines import load_teacher

            t0 = time.perf_counter()
            self._teacher = load_teacher(self.recipe.teachers[0])
            self._started("teacher", self.recipe.teachers[0].model, t0)
        return self._teacher

    def teacher_accuracy(self, val_dir: Path, out: Path, max_tokens: int, templates: dict) -> float:
        """The teacher's greedy validation accuracy, prompted as it generates the data (`templates`: the
        generate stage's system_template and shots_template), measured once (kept in `out`): the bar the
        student must clear to generate (`generator: best`). A teacher asked the bare question would set the
        bar far too low (Qwen on arithmetic: 63% bare, 99% after worked examples). It runs on the engine
        that later generates (started once, kept for the rounds)."""
        if out.exists():
            kept = json.loads(out.read_text())
            if kept.get("templates", {}) == templates:
                return kept["pass@1"]
        from pipeline.evaluate import evaluate
        from pipeline.stages import input_table
        from pipeline.store import write_json_atomic

        rows, teacher = input_table(val_dir).to_pylist(), self.recipe.teachers[0]
        result = evaluate(
            teacher.model,
            adapter=teacher.adapter,
            task=rows[0]["task"],
            engine=teacher.engine,
            limit=None,
            max_tokens=max_tokens,
            rows=rows,
            engine_obj=self.teacher(),
            **templates,
        )
        result.pop("rows")
        write_json_atomic(out, {**result, "templates": templates})
        return result["pass@1"]

    def close(self) -> None:
        for engine in (self._student, self._teacher):
            if engine is not None:
                engine.close()
        self._student = self._teacher = None


def lora_rank(loop: LoopConfig) -> int | None:
    """The LoRA rank the student engine must hold (vLLM's max_lora_rank): the larger of the loop's training
    config and, with hard negatives, its DPO config; None when neither trains an adapter."""
    from pipeline.adapters import vllm_lora_rank

    configs = [loop.train_config] + ([loop.dpo_config] if loop.hard_negatives else [])
    ranks = [int(peft.get("r") or 16) for path in configs if (peft := _peft(path)) is not None]
    return vllm_lora_rank(max(ranks)) if ranks else None


def _peft(train_config: str) -> dict | None:
    """The `peft:` section of a TRL config file (None: the training updates every weight)."""
    import yaml

    return (yaml.safe_load(Path(train_config).read_text()) or {}).get("peft")
