"""``dpo`` mode: DPO on the export stage's ``dpo/`` pairs (chosen: a verified answer, rejected: a failing one).

With a LoRA config the reference model is the base model with the adapter disabled, so no second copy of
the weights is loaded.
"""

from __future__ import annotations


def build_trainer(job, model, tokenizer, dataset):
    from trl import DPOTrainer

    return DPOTrainer(
        model=model,
        args=job.args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=job.peft,
    )
