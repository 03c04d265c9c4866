"""The performance-guided loop (PGKD): train -> validate -> mine -> regenerate -> generate -> verify -> export.

    distill loop scripts/recipes/pgkd.yaml

It first runs the recipe's stages (the base dataset), then iterates. Round k trains the student (a LoRA
adapter, or every weight when `train_config` has no `peft:`) on the verified data so far (rows of later rounds
repeated `new_weight` times; `warm_start` keeps training the best student on the new rows and a replay
sample) and scores it on the validation split, which only decides stopping (`patience`). The student is
mined on a separate pool of training-split prompts (`mine_n`), so the stopping signal is not fitted.
Unless validation stopped improving or the budget is spent, `regenerate` writes new problems aimed at the
failures (`method: targeted`: the failed fact in new wordings and its neighbours; `random` is the control
arm), the generator answers them with adaptive effort (the generate stage's `n` first, then up to
`hard_samples` for prompts with fewer than `stop_at` verified answers), and the verified answers join the
data. The generator is the teacher until the best student beats it on validation (`generator: best`), as in
self-imitation rounds; every generated token counts against `teacher_budget_tokens`.

Any task works with `method: teacher`: the teacher writes each new problem with its answer (the reference a
fresh sample must then agree with in verify; label answers must be in verify's `label.labels`). User data
(`source: {path: ...}`) has no built-in splits: `loop.validation_path` names the validation file, and the
student is mined on the source rows themselves.

A round is the named steps of `ROUND_STEPS`, one folder each under `runs/<run>/loop/iter_<k>/`: stages
(validate and mine are the mine stage, then regenerate, generate, verify, export), training runs (train,
train-dpo) and the tables the loop builds between them (train-data, to-answer, hard-prompts, hard-negatives:
pipeline/loop_tables.py). The mining pools and the teacher's rewrites come from pipeline/loop_prompts.py.
Every folder gets its manifest last, so a killed loop replays the finished steps from their manifests and
resumes inside the step it was in. `loop/` also holds `validation/`, `mine-pool[-k]/` (with `mine_rephrased`:
`mine-pool[-k]-rephrased[-answers|-verify|-checked]/`), `teacher-validation.json`, `iter_<k>/metrics.json`
and `summary.json`. The generate, verify and export steps run their shards where the recipe's `executor:` (or
--executor) says, as in `distill run`; the student's scoring and mining stay in this process, on the engine
the loop keeps.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline import store
from pipeline.config import from_dict
from pipeline.errors import UserError
from pipeline.loop_engines import LoopEngines
from pipeline.loop_prompts import draw_pool, finished, recipe_stage_config, teacher_rephrase
from pipeline.loop_reuse import copy_training, round0_training, saved_weights
from pipeline.loop_tables import (
    answer_set,
    hard_negative_pairs,
    short_prompts,
    solved_prompts,
    table_step,
    training_table,
    warm_table,
)
from pipeline.recipe import LoopConfig, ModelConfig, Recipe, RunContext, SourceConfig
from pipeline.runner import load_recipe, run_context, run_recipe, stage_dirs

# A round's steps, in order; each leaves iter_<k>/<step>/ with a manifest (the -more steps only when some
# prompts got fewer than `stop_at` verified answers, train-dpo only with hard negatives from the last round).
ROUND_STEPS = tuple(
    "train-data train train-dpo validate mine regenerate to-answer generate verify hard-prompts generate-more "
    "verify-more hard-negatives export export-more".split()
)

# The recipe's export settings that shape each answer's text; each round's export of new data keeps them.
ANSWER_SHAPE = ("place_value", "sign_first", "include_system", "drop_truncated")


def _answer_tokens(recipe: Recipe, loop: LoopConfig) -> int:
    """The answer budget the loop scores students at: its own, else the generate stage's."""
    return loop.max_tokens or recipe_stage_config(recipe, "generate").max_tokens


@dataclasses.dataclass
class Loop:
    """One loop run: its settings, and what one round hands the next (rebuilt from the step manifests when
    a killed loop is resumed)."""

    recipe: Recipe
    loop: LoopConfig
    context: RunContext
    loop_dir: Path
    pool_source: SourceConfig
    user_data: bool
    engines: LoopEngines
    log: Callable[[str], None]
    executor: object = None
    # the sft exports of each round's new data, the recipe's base data first
    rounds_sft: list[list[Path]] = dataclasses.field(default_factory=list)
    tokens_used: int = 0
    teacher_acc: float | None = None
    best: dict | None = None
    bad: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    round_start: tuple[float, float] = (0.0, 0.0)  # the round's time.time() and engines.start_s then

    @property
    def val_dir(self) -> Path:
        return self.loop_dir / "validation"

    @functools.cached_property
    def export_config(self):
        """How each round's new rows are exported: sft rows, at most `max_per_prompt` per prompt, each answer
        written the recipe export's way (place-value steps, the system prompt: `ANSWER_SHAPE`)."""
        from pipeline.stages import export

        shaped = recipe_stage_config(self.recipe, "export")
        return export.Config(
            formats=["sft"],
            max_per_prompt=self.loop.max_per_prompt,
            **{key: getattr(shaped, key) for key in ANSWER_SHAPE},
        )

    @property
    def ship(self) -> dict:
        """Where the dataset stages' shards run (`executor:`); local runs pass nothing."""
        return {"executor": self.executor} if getattr(self.executor, "name", "local") != "local" else {}

    def round(self, k: int) -> str | None:
        """Round k's steps in order; returns why the loop stops, or None to go on."""
        it, t_round = self.loop_dir / f"iter_{k}", time.perf_counter()
        self.round_start = (time.time(), self.engines.start_s)
        train_rows = self.train_data(it, k)
        if train_rows == 0:
            return "the last round added no new verified rows"
        student = self.train_dpo(it, k, self.train(it, k, train_rows))
        metrics = self.validate(it, k, student, train_rows)
        stop = self.stop_reason(k) or self.mine(it, k, student, metrics)
        if stop is not None:
            self.finish(it, metrics, t_round)
            return stop
        regen = self.regenerate(it, k, metrics)
        answer_dir = self.to_answer(it, k, regen)
        if answer_dir is None:
            self.rounds_sft.append([])
        else:
            verified = self.answer(it, k, answer_dir, metrics)
            self.hard_negatives(it, verified, metrics)
            self.export(it, verified)
        self.finish(it, metrics, t_round)
        return None

    def train_data(self, it: Path, k: int) -> int:
        """Step train-data: a fresh adapter trains on everything so far; a warm start keeps training the best
        student on the new rows plus a replay sample of the old ones."""
        loop, rounds = self.loop, self.rounds_sft
        # Round 0 has no rows of a later round, so neither its table nor its identity depends on the weight:
        # loops that differ only in `new_weight` share round 0 (and a weighted loop resumes an unweighted one).
        weight = loop.new_weight if len(rounds) > 1 else 1
        settings = {"new_weight": weight, "rounds": [len(folders) for folders in rounds]}
        if loop.warm_start and self.best is not None:
            older = [f for folders in rounds[:-1] for f in folders]
            settings |= {"warm_start": True, "replay": loop.replay, "seed": k}
            build = lambda: warm_table(older, rounds[-1], loop.new_weight, loop.replay, seed=k)  # noqa: E731
        else:
            later = [f for folders in rounds[1:] for f in folders]
            build = lambda: training_table(rounds[0], later, loop.new_weight)  # noqa: E731
        exports = [f.parent.parent for folders in rounds for f in folders]  # each sft/ is export/data/sft
        return table_step(it / "train-data", "train-data", exports, settings, build, table="sft")["rows_out"]

    def train(self, it: Path, k: int, train_rows: int) -> Student:
        """Step train: the round's SFT student (its manifest marks it done): a LoRA adapter on the student
        model, or every weight when the training config has no `peft:`. Round 0 copies a finished training of
        the same export and settings when the run has one (pipeline/loop_reuse.py)."""
        loop = self.loop
        base = self.context.student.model
        warm = loop.warm_start and self.best is not None
        if warm:  # keep training the best student: its weights, and its adapter if it has one
            base = self.best["model"]
        if not (it / "train" / "manifest.json").exists():
            overrides = {"dataset": str(it / "train-data"), "output_dir": str(it / "train"), "model": base}
            if warm and self.best["adapter"]:
                overrides["adapter"] = self.best["adapter"]
            if loop.max_steps is not None:
                overrides["max_steps"] = loop.max_steps
            elif warm:
                overrides["num_train_epochs"] = loop.warm_epochs
            elif loop.epochs is not None:
                overrides["num_train_epochs"] = loop.epochs
            reuse = (
                None
                if k
                else round0_training(self.rounds_sft[0], train_rows, self.loop_dir.parent, loop, overrides)
            )
            if reuse is not None:
                self.log(f"[distill] loop 0: reusing {reuse} (trained on the same export, same settings)")
                copy_training(reuse, it / "train")
            else:
                self.log(f"[distill] loop {k}: training on {train_rows} rows")
                self.engines.before_training()
                _training()("sft", loop.train_config, overrides)
        return trained(it / "train", base)

    def train_dpo(self, it: Path, k: int, student: Student) -> Student:
        """Step train-dpo: hard negatives of the last round prefer the verified answer over the student's own
        failing one."""
        negatives = self.loop_dir / f"iter_{k - 1}" / "hard-negatives"
        if not (
            k > 0 and self.loop.hard_negatives and (store.read_manifest(negatives) or {}).get("rows_out")
        ):
            return student
        if not (it / "train-dpo" / "manifest.json").exists():
            self.log(f"[distill] loop {k}: DPO on the hard negatives of round {k - 1}")
            self.engines.before_training()
            overrides = {
                "model": student.model,
                "dataset": str(negatives),
                "output_dir": str(it / "train-dpo"),
            }
            if student.adapter:
                overrides["adapter"] = student.adapter
            _training()("dpo", self.loop.dpo_config, overrides)
        return trained(it / "train-dpo", student.model)

    def _scored(self, student: Student, stage_input: Path, out: Path) -> dict:
        """The mine stage run by `student` on the prompts in `stage_input` (validation, or a mining pool)."""
        from pipeline.stages import mine

        config = mine.Config(
            adapter=student.adapter,
            student_engine=self.loop.engine,
            max_tokens=_answer_tokens(self.recipe, self.loop),
        )
        context = dataclasses.replace(
            self.context, student=dataclasses.replace(self.context.student, model=student.model)
        )
        engine = self.engines.student(student.model, student.adapter)
        return mine.run(config, stage_input, out, context=context, engine=engine)

    def validate(self, it: Path, k: int, student: Student, train_rows: int) -> dict:
        """Step validate: the student's accuracy on the validation split (it only decides stopping)."""
        validated = self._scored(student, self.val_dir, it / "validate")
        acc = validated["student_accuracy"]
        improved = self.best is None or acc > self.best["val_accuracy"] + self.loop.min_delta
        metrics = {
            "iteration": k,
            "val_accuracy": acc,
            "train_rows": train_rows,
            "teacher_tokens": self.tokens_used,
            "model": student.model,
            "adapter": student.adapter,
        }
        self.log(f"[distill] loop {k}: validation accuracy {acc:.1%} on {validated['rows_in']} prompts")
        if improved:
            self.best, self.bad = metrics, 0
        else:
            self.bad += 1
        return metrics

    def stop_reason(self, k: int) -> str | None:
        loop = self.loop
        if self.bad >= loop.patience:
            return f"no improvement for {self.bad} round(s)"
        if k == loop.iterations - 1:
            return "last iteration"
        if loop.teacher_budget_tokens is not None and self.tokens_used >= loop.teacher_budget_tokens:
            return "teacher budget spent"
        return None

    def mine_pool(self, k: int) -> Path:
        """Round k's mining prompts (pipeline/loop_prompts.py), in the teacher's words with `mine_rephrased`."""
        pool = draw_pool(self.loop_dir, k, self.pool_source, self.user_data, self.context)
        if not self.loop.mine_rephrased:
            return pool
        rewritten = pool.with_name(pool.name + "-rephrased")
        rephrased = self.rephrase(pool, rewritten, per_prompt=1, seed=1000 + k)
        self.tokens_used += rephrased["tokens"]["completion"]
        return self.teacher_checked(rewritten, k) if rephrased["rows_out"] else rewritten

    def teacher_checked(self, rewritten: Path, k: int) -> Path:
        """The rewrites the teacher itself solves (greedy, prompted as it generates, its answer verified
        against the source's reference), in `<rewritten>-checked`. A rewrite keeps the numbers but may change
        the question ("8 books fly away" for 8 * 8, reference 64): mined unchecked, such a rewrite counts as
        the student's failure and sends the loop after the rewriter's mistake. The dropped ones are in
        `<rewritten>-verify/rejected/`, with the teacher's answer."""
        from pipeline.stages.verify_config import DedupConfig

        answers, verified = (
            rewritten.with_name(rewritten.name + "-answers"),
            rewritten.with_name(rewritten.name + "-verify"),
        )
        config = recipe_stage_config(self.recipe, "generate")
        config = dataclasses.replace(config, n=1, temperature=0.0, seed=_shift(config.seed, 2000 + k))
        # Correctness only: a recipe's `dedup: {over: prompt}` would drop rewrites for looking alike
        verify_config = dataclasses.replace(
            recipe_stage_config(self.recipe, "verify"), dedup=DedupConfig(exact=False, minhash_threshold=None)
        )
        teacher = self.recipe.teachers[0]
        self.answer_and_verify(
            config, verify_config, teacher, self.engines.teacher(), rewritten, answers, verified
        )
        checked = rewritten.with_name(rewritten.name + "-checked")
        build = lambda: solved_prompts(rewritten, verified)  # noqa: E731
        table_step(checked, "teacher-checked", [rewritten, verified], {}, build)
        return checked

    def rephrase(self, source: Path, out: Path, per_prompt: int, seed: int) -> dict:
        engine = self.engines.teacher()
        return teacher_rephrase(self.recipe, self.context, engine, source, out, per_prompt, seed)

    def mine(self, it: Path, k: int, student: Student, metrics: dict) -> str | None:
        """Step mine: the prompts of round k's pool the student fails (its answer kept for DPO)."""
        pool = self.mine_pool(k)
        if store.read_manifest(pool)["rows_out"] == 0:
            return "the mining pool is empty (the teacher refused or failed every rewrite of it)"
        mined = self._scored(student, pool, it / "mine")
        metrics["hard_prompts"] = mined["rows_out"]
        metrics["mine_accuracy"] = mined["student_accuracy"]
        return "the student solves every mined prompt" if mined["rows_out"] == 0 else None

    def regenerate(self, it: Path, k: int, metrics: dict) -> dict:
        """Step regenerate: new problems modelled on the mined ones."""
        from pipeline.stages import regenerate

        loop = self.loop
        if loop.method == "rephrase":  # the failed prompts themselves, in the teacher's new words
            regen = self.rephrase(it / "mine", it / "regenerate", per_prompt=loop.per_prompt, seed=k)
        else:
            config = regenerate.Config(per_prompt=loop.per_prompt, seed=k, method=loop.method)
            engine = None
            if loop.method == "teacher":  # the teacher writes problems and answers; label answers: labels
                labels = recipe_stage_config(self.recipe, "verify").label.get("labels")
                config = dataclasses.replace(config, temperature=loop.regenerate_temperature, labels=labels)
                engine = self.engines.teacher()
            regen = regenerate.run(
                config, it / "mine", it / "regenerate", context=self.context, engine=engine
            )
        self.tokens_used += regen["tokens"]["completion"]
        metrics["new_prompts"] = regen["rows_out"]
        return regen

    def to_answer(self, it: Path, k: int, regen: dict) -> Path | None:
        """Step to-answer: with hard negatives, the mined prompts and the new ones (each id once); otherwise
        the new ones alone. None when there is nothing to answer."""
        if self.loop.hard_negatives:
            build = lambda: answer_set(it / "mine", it / "regenerate")  # noqa: E731
            table_step(it / "to-answer", "to-answer", [it / "mine", it / "regenerate"], {}, build)
            return it / "to-answer"
        if regen["rows_out"] == 0:  # every reply went to regenerate/rejected: nothing to answer
            self.log(f"[distill] loop {k}: regenerate wrote no new prompts ({regen['rejected_by_reason']})")
            return None
        return it / "regenerate"

    def answer(self, it: Path, k: int, answer_dir: Path, metrics: dict) -> list[Path]:
        """Steps generate, verify, then hard-prompts, generate-more, verify-more: the generator answers the
        prompts, and those with fewer than `stop_at` verified answers get up to `hard_samples` in all."""
        loop, gen_config = self.loop, recipe_stage_config(self.recipe, "generate")
        if self.teacher_acc is not None and self.best["val_accuracy"] > self.teacher_acc:
            # The best student so far answers (self-imitation), its adapter (if any) applied per request.
            best = Student(self.best["model"], self.best["adapter"])
            generator = ModelConfig(
                model=best.model, engine=loop.engine, name=f"student-{k}", adapter=best.adapter
            )
            engine = self.engines.student(best.model, best.adapter)
            metrics["generator"] = f"student of round {self.best['iteration']}"
        else:
            generator, engine = self.recipe.teachers[0], self.engines.teacher()
            metrics["generator"] = "teacher"
        verify_config = recipe_stage_config(self.recipe, "verify")
        self.log(f"[distill] loop {k}: {metrics['generator']} answers the new prompts")

        def answer_with(config, prompts: Path, name: str, verified: str) -> None:
            self.answer_and_verify(
                config, verify_config, generator, engine, prompts, it / name, it / verified
            )

        gen_cfg = dataclasses.replace(gen_config, seed=_shift(gen_config.seed, 1000 * (k + 1)))
        answer_with(gen_cfg, answer_dir, "generate", "verify")
        verified = [it / "verify"]
        more = loop.hard_samples - gen_cfg.n
        if more > 0:
            build = lambda: short_prompts(answer_dir, it / "verify", loop.stop_at)  # noqa: E731
            inputs, settings = [answer_dir, it / "verify"], {"stop_at": loop.stop_at}
            if table_step(it / "hard-prompts", "hard-prompts", inputs, settings, build)["rows_out"]:
                more_cfg = dataclasses.replace(gen_cfg, n=more, seed=_shift(gen_cfg.seed, 1))
                answer_with(more_cfg, it / "hard-prompts", "generate-more", "verify-more")
                verified.append(it / "verify-more")
        return verified

    def answer_and_verify(
        self,
        config,
        verify_config,
        generator: ModelConfig,
        engine,
        prompts: Path,
        answers: Path,
        verified: Path,
    ) -> None:
        """`generator` (on `engine`, if already started) answers `prompts` into `answers`, its completion
        tokens counted against the budget, and the answers are verified into `verified`."""
        from pipeline.stages import generate, verify

        context = dataclasses.replace(self.context, teachers=[generator])
        ready = {generator.label: engine} if engine is not None else None
        gen = generate.run(config, prompts, answers, context=context, engines=ready, **self.ship)
        self.tokens_used += finished(gen, answers)["tokens"]["completion"]
        finished(verify.run(verify_config, answers, verified, context=self.context, **self.ship), verified)

    def hard_negatives(self, it: Path, verified: list[Path], metrics: dict) -> None:
        """Step hard-negatives: DPO pairs of each mined prompt's verified answer and the student's failing one
        (next round's train-dpo)."""
        if not self.loop.hard_negatives:
            return
        from pipeline.stages import export

        shape, settings, config = None, {}, self.export_config
        if config.place_value:  # the chosen answer is written as the sft rows are
            shape = functools.partial(export.answer_text, config=config)
            settings = {"place_value": True, "sign_first": config.sign_first}
        build = lambda: hard_negative_pairs(it / "mine", verified, shape)  # noqa: E731
        pairs = table_step(
            it / "hard-negatives", "hard-negatives", [it / "mine", *verified], settings, build, "dpo"
        )
        if pairs["rows_out"]:
            metrics["hard_negative_pairs"] = pairs["rows_out"]

    def export(self, it: Path, verified: list[Path]) -> None:
        """Steps export, export-more: the verified answers as sft rows, the next round's new data."""
        from pipeline.stages import export

        config = self.export_config
        self.rounds_sft.append([])
        for j, folder in enumerate(verified):
            if store.read_manifest(folder)["rows_out"] == 0:
                continue
            out = it / ("export" if j == 0 else "export-more")
            finished(export.run(config, folder, out, context=self.context, **self.ship), out)
            self.rounds_sft[-1].append(out / "data" / "sft")

    def finish(self, it: Path, metrics: dict, t_round: float) -> None:
        metrics["teacher_tokens"] = self.tokens_used
        metrics["round_s"] = round(time.perf_counter() - t_round, 1)
        metrics["step_s"] = step_seconds(it, self.round_start[0])
        metrics["engine_start_s"] = round(self.engines.start_s - self.round_start[1], 1)
        store.write_json_atomic(it / "metrics.json", metrics)
        self.history.append(metrics)


@dataclasses.dataclass(frozen=True)
class Student:
    """A round's student: its weights (the base student model, or a fully trained copy) and the LoRA adapter
    on them (None when every weight was trained)."""

    model: str
    adapter: str | None


def trained(folder: Path, model: str) -> Student:
    """The student a finished training in `folder` made from `model`: its adapter on `model`, or the new
    model folder when it trained every weight (`loop_reuse.saved_weights` says which)."""
    if saved_weights(folder) == "model":
        return Student(str(folder / "model"), None)
    return Student(model, str(folder / "adapter"))


def step_seconds(it: Path, started: float) -> dict[str, float]:
    """Each finished step's seconds in round folder `it`: the time from the previous step's manifest (or the
    round's start, `started`, a time.time()) to its own. Engine starts count in the step that needed them
    (metrics' `engine_start_s` gives their total). A resumed round counts from the resume."""
    done = sorted(
        (path.stat().st_mtime, step)
        for step in ROUND_STEPS
        if (path := it / step / "manifest.json").exists() and path.stat().st_mtime >= started
    )
    seconds, last = {}, started
    for mtime, step in done:
        seconds[step], last = round(mtime - last, 1), mtime
    return seconds


def _training():
    from pipeline.train import run_training

    return run_training


def _loop_config(recipe: Recipe, overrides: dict | None) -> LoopConfig:
    """The recipe's `loop:` settings with `overrides`, checked against the recipe."""
    loop = recipe.loop or LoopConfig()
    if overrides:
        loop = from_dict(LoopConfig, {**dataclasses.asdict(loop), **overrides}, "loop")
    if recipe.student is None:
        raise UserError("loop: the recipe needs `student:` (the model the loop trains)")
    for name in ("train_config", "dpo_config"):
        if not Path(getattr(loop, name)).is_file():
            default = "dpo" if name == "dpo_config" else "sft"
            raise UserError(
                f"loop.{name}: {getattr(loop, name)} does not exist; give a TRL config file (e.g. "
                f"scripts/configs/{default}.yaml; a relative path is from where you run distill)"
            )
    user_data = recipe.source.path is not None or recipe.source.dataset is not None
    if user_data and not loop.validation_path:
        raise UserError(
            "loop: user data has no validation split; set loop.validation_path to a file of validation "
            "prompts with the source's columns"
        )
    if not user_data and loop.validation_path:
        raise UserError(
            f"loop.validation_path is for user data; the built-in task '{recipe.source.task}' has its own "
            "validation split, remove validation_path"
        )
    return loop


def run_loop(
    recipe_path: str | Path,
    run_dir: str | Path | None = None,
    overrides: dict | None = None,
    log=None,
    executor=None,
) -> dict:
    """Run the recipe, then the loop with the recipe's `loop:` settings (`overrides` win). `executor`: where
    the shards of the recipe's stages and of each round's generate, verify and export run (None: here)."""
    from pipeline.stages import prompts

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    recipe = load_recipe(recipe_path)
    loop = _loop_config(recipe, overrides)
    user_data = recipe.source.path is not None or recipe.source.dataset is not None
    run_dir = Path(run_dir) if run_dir else Path("runs") / recipe.run
    t_start = time.perf_counter()
    run_recipe(recipe_path, run_dir=run_dir, log=log, executor=executor)
    dirs = {name: d for name, d, _ in stage_dirs(recipe, run_dir)}
    if "export" not in dirs:
        raise UserError("loop: the recipe needs an export stage (its sft/ data is what round 0 trains on)")
    context = run_context(recipe, run_dir)
    student_model = context.student.model  # the pruned copy when the recipe prunes the student
    loop_dir = run_dir / "loop"
    if user_data:  # validation from its own file; mining on the training rows themselves
        val_source = dataclasses.replace(
            recipe.source, path=loop.validation_path, dataset=None, n=loop.validation_n
        )
        pool_source = dataclasses.replace(recipe.source, n=min(recipe.source.n or loop.mine_n, loop.mine_n))
    else:
        val_source = dataclasses.replace(recipe.source, split="validation", n=loop.validation_n)
        pool_source = dataclasses.replace(
            recipe.source, split="train", n=loop.mine_n, seed=recipe.source.seed + 1
        )
    val_context = dataclasses.replace(context, source=val_source)
    prompts.run(prompts.Config(), None, loop_dir / "validation", context=val_context)
    engines = LoopEngines(recipe, student_model, loop, log)
    state = Loop(recipe, loop, context, loop_dir, pool_source, user_data, engines, log, executor)
    state.rounds_sft = [[dirs["export"] / "data" / "sft"]]
    if "generate" in dirs:
        state.tokens_used = store.read_manifest(dirs["generate"])["tokens"]["completion"]
    try:
        if loop.generator == "best":
            out, max_tokens = loop_dir / "teacher-validation.json", _answer_tokens(recipe, loop)
            gen = recipe_stage_config(recipe, "generate")
            templates = {"system_template": gen.system_template, "shots_template": gen.shots_template}
            state.teacher_acc = engines.teacher_accuracy(state.val_dir, out, max_tokens, templates)
            log(f"[distill] loop: teacher validation accuracy {state.teacher_acc:.1%}")
        for k in range(loop.iterations):
            stop = state.round(k)
            if stop is not None:
                log(f"[distill] loop: stopping ({stop})")
                break
    finally:
        engines.close()
    summary = {
        "best": state.best,
        "history": state.history,
        "stopped_after": len(state.history),
        "teacher_validation_accuracy": state.teacher_acc,
        "generation_tokens": state.tokens_used,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    store.write_json_atomic(loop_dir / "summary.json", summary)
    return summary


def _shift(seed: int | None, by: int) -> int | None:
    """A new round's sampling seed; an unseeded generate stage (`seed: null`) stays unseeded."""
    return None if seed is None else seed + by
