"""The loop's engines: the student engine (every round's adapter) and the teacher, each started once.

A vLLM start costs about 30 s on a CPU, so pipeline/loop.py keeps one student engine and one teacher engine
for all its rounds, stops a merge-mode student engine before training (memory), and shares one engine when
the teacher is the student's own base model.
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

    def __init__(self, recipe: Recipe, student_model: str, loop: LoopConfig, lora_rank: int, log=None):
        self.recipe, self.student_model, self.loop, self.lora_rank = recipe, student_model, loop, lora_rank
        self._student = self._teacher = None
        self.start_s = 0.0  # seconds spent starting engines so far (a round's step table reports its share)
        self.log = log or (lambda msg: None)

    def _started(self, which: str, model: str, t0: float) -> None:
        seconds = time.perf_counter() - t0
        self.start_s += seconds
        self.log(f"[distill] loop: started the {which} engine ({model}) in {seconds:.1f}s")

    def student(self, adapter: str | None = None):
        """The engine for the student's evaluation and mining (None: each stage loads its own hf model).
        `adapter`: the one it will serve first (a merge-mode engine then starts on that merged copy)."""
        if self.loop.engine != "vllm":
            return None
        if self._student is None:
            from pipeline.engines.vllm import VLLMEngine
            from pipeline.models import resolve

            mode = None if self.loop.lora_mode == "auto" else self.loop.lora_mode
            t0 = time.perf_counter()
            self._student = VLLMEngine(
                resolve(self.student_model),
                enable_lora=True,
                max_lora_rank=self.lora_rank,
                lora_mode=mode,
                adapter=adapter,
            )
            self._started("student", self.student_model, t0)
        return self._student

    def before_training(self) -> None:
        """Free the memory training needs. A merge-mode engine restarts for the next adapter anyway, so it
        is stopped now (here a kept engine plus training needed ~9 GB, and two loops side by side ran out of
        memory); a per-request LoRA engine is kept (no restart) and holds its memory."""
        if self._student is not None and self._student.lora_mode == "merge":
            self._student.close()
            self._student = None  # (a teacher that shares it is the same engine: stopped too)

    def shares_teacher(self) -> bool:
        tc = self.recipe.teachers[0]
        return (
            self.loop.engine == "vllm"
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


def lora_rank(train_config: str) -> int:
    """The LoRA rank the loop's training config asks for (vLLM's max_lora_rank must hold it)."""
    import yaml

    from pipeline.adapters import vllm_lora_rank

    rank = int(((yaml.safe_load(Path(train_config).read_text()) or {}).get("peft") or {}).get("r") or 16)
    return vllm_lora_rank(rank)
