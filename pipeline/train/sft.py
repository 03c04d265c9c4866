"""``sft`` mode: sequence-level KD, i.e. supervised fine-tuning on verified teacher outputs.

Reads the export stage's ``sft/`` folder with TRL's ``SFTTrainer``. A ``messages`` conversation is split into
prompt (all turns but the last) and completion (the final assistant turn), so that, by default, the loss is on
the teacher's answer only (``completion_only_loss``); set ``completion_only_loss: false`` to train on the whole
conversation. ``packing: true`` (BFD, padding-free) is usually faster than padded batches.
"""

from __future__ import annotations


def split_last_turn(row: dict) -> dict:
    messages = row["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def build_trainer(job, model, tokenizer, dataset):
    from trl import SFTTrainer

    if "messages" in dataset.column_names and job.args.completion_only_loss is not False:
        dataset = dataset.map(split_last_turn, remove_columns=["messages"], desc="sft: prompt/completion")
    return SFTTrainer(
        model=model,
        args=job.args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=job.peft,
    )
