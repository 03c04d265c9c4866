"""``gkd`` mode: on-policy KD with TRL's GKD trainer (Agarwal et al. 2024).

The student samples completions for the ``sft/`` prompts (a ``lmbda`` fraction of steps) and is trained to
match the teacher's full next-token distribution on them (generalized JSD, ``beta``). The teacher is
``teacher_model_name_or_path``, a model spec; it must share the student's tokenizer, since the loss compares
distributions over one vocabulary. With a different tokenizer, use ``gold`` (on-policy, aligned across
tokenizers) or ``sft`` (sequence-level KD) instead.
"""

from __future__ import annotations

from pipeline.errors import UserError


def check_same_tokenizer(student_tok, teacher_tok, teacher_name: str) -> None:
    """GKD compares logits token by token: the two vocabularies must be identical."""
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise UserError(
            f"teacher {teacher_name} uses a different tokenizer from the student, so their logits cannot be "
            "compared id by id; use `distill train gold` (aligned across tokenizers), or `distill train sft`"
        )


def build_trainer(job, model, tokenizer, dataset):
    from trl.experimental.gkd import GKDTrainer

    from pipeline.train import load_model_and_tokenizer

    teacher_spec = job.args.teacher_model_name_or_path
    if not teacher_spec:
        raise UserError("gkd needs a teacher: set `teacher_model_name_or_path: <model spec>` in the config")
    _, teacher, teacher_tok = load_model_and_tokenizer(teacher_spec, use_cpu=job.args.use_cpu)
    check_same_tokenizer(tokenizer, teacher_tok, teacher_spec)
    if teacher.config.get_text_config().vocab_size != model.config.get_text_config().vocab_size:
        raise UserError(
            f"teacher {teacher_spec} and the student have different vocab sizes; use `distill train gold` instead"
        )
    # GKD's ChatML collator needs the raw `messages`; other columns would only confuse it.
    dataset = dataset.select_columns(["messages"])
    trainer = GKDTrainer(
        model=model,
        teacher_model=teacher,
        args=job.args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=job.peft,
    )
    trainer.extra_manifest = {"teacher": teacher_spec}
    return trainer
