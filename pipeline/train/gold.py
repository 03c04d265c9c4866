"""``gold`` mode: on-policy distillation with TRL's GOLD trainer, also from a teacher with another tokenizer.

The student samples answers to the ``sft/`` prompts (a ``lmbda`` fraction of steps; the others train on the
dataset's answers), the teacher scores the student's own answer, and the student moves towards the teacher's
next-token distributions where it actually goes (GKD, Agarwal et al. 2024; MiniLLM; DistillSpec).

When the teacher's tokenizer differs from the student's (Qwen2.5-Coder: 151,936 tokens; SmolLM2: 49,152),
``use_uld_loss`` is switched on by default: the sampled answer is decoded, re-tokenized with the teacher's
tokenizer, both tokenizations are cut into groups ending on the same byte, and TRL's ULD loss compares the
merged, sorted probability vectors (see ``pipeline.train.uld``). With one tokenizer, GOLD uses the generalized
JSD of GKD. The teacher is ``teacher_model_name_or_path``, a model spec; every other field is a ``GOLDConfig``
field. The teacher sees the prompt as the student's chat template renders it (both are ChatML here).

    distill train gold scripts/configs/gold.yaml
"""

from __future__ import annotations

import time


def _time_teacher(teacher, stats: dict) -> None:
    """Count the tokens the teacher scores and the seconds it takes (teacher-scoring tokens/s in the manifest)."""

    def before(module, args, kwargs):
        stats["_t0"] = time.perf_counter()

    def after(module, args, kwargs, output):
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        tokens = int(mask.sum()) if mask is not None else int(ids.numel()) if ids is not None else 0
        stats["tokens"] += tokens
        stats["seconds"] += time.perf_counter() - stats.pop("_t0")
        stats["tokens_per_s"] = round(stats["tokens"] / stats["seconds"], 2) if stats["seconds"] else None

    teacher.register_forward_pre_hook(before, with_kwargs=True)
    teacher.register_forward_hook(after, with_kwargs=True)


def _vllm_teacher(path: str, engine=None):
    """The teacher as a vLLM engine behind GOLD's HF-style call (pipeline/train/teacher_scoring.py)."""
    from transformers import AutoConfig

    from pipeline.train.teacher_scoring import VLLMScoredTeacher

    if engine is None:
        from pipeline.engines.vllm import VLLMEngine
        from pipeline.models import resolve

        engine = VLLMEngine(resolve(path))
    vocab = (
        AutoConfig.from_pretrained(path).get_text_config().vocab_size
    )  # the width of an HF forward's logits
    return VLLMScoredTeacher(engine, vocab, name=path)


def build_trainer(job, model, tokenizer, dataset, teacher_engine=None):
    """``teacher_engine``: a ready ``VLLMEngine`` of the teacher for ``teacher_scoring: vllm`` (tests share
    one); otherwise one is started here, and freed with the trainer's process."""
    from trl.experimental.gold import GOLDTrainer

    from pipeline.train import load_model_and_tokenizer

    args = job.args
    if job.teacher_scoring == "vllm":
        teacher = _vllm_teacher(args.teacher_model_name_or_path, teacher_engine)
    else:
        _, teacher, _ = load_model_and_tokenizer(args.teacher_model_name_or_path, use_cpu=args.use_cpu)
    scoring = {"engine": job.teacher_scoring, "tokens": 0, "seconds": 0.0, "tokens_per_s": None}
    _time_teacher(teacher, scoring)
    # GOLD's ChatML collator needs the raw `messages`; other columns would only confuse it.
    dataset = dataset.select_columns(["messages"])
    trainer = GOLDTrainer(
        model=model,
        teacher_model=teacher,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=job.peft,
    )
    trainer.extra_manifest = {
        "teacher": job.raw.get("teacher_model_name_or_path"),
        "use_uld_loss": bool(args.use_uld_loss),
        "teacher_scoring": scoring,
    }
    return trainer
