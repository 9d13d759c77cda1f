"""`stmed sft`: the paper's stage 1, LoRA fine-tuning that teaches the model to ask.

Loss = answer NLL + the NLL of each self-asked question (stmed.train.sft_data builds the
labels). Runs on transformers' Trainer: trl's SFTTrainer would re-tokenize and cannot
supervise user-role text.
"""

from __future__ import annotations

import json
from pathlib import Path

from stmed.errors import InputError, RecordError
from stmed.records import ErrorSink, RecordWriter
from stmed.train.common import (SFTConfig, leave_no_empty_outdir, load_for_training, load_processor, prepare_outdir,
                                say, trainer_kwargs, write_meta)
from stmed.train.data import check_image, file_sha256, read_any
from stmed.train.sft_data import SFTCollator, parse_conversation


def load_conversations(path: str, *, errors: ErrorSink, image_root: Path | None = None, limit: int | None = None):
    """Checked conversations as a Dataset (id, image_path, conversation JSON, where)."""
    from datasets import Dataset

    records = read_any(path)[:limit] if limit else read_any(path)
    rows: dict[str, list] = {"id": [], "image_path": [], "conversation": [], "where": []}
    for rec in records:
        try:
            messages = parse_conversation(rec)
            image = check_image(rec, image_root)
        except RecordError as e:
            errors.add(rec, str(e))
            continue
        rows["id"].append(str(rec["id"]))
        rows["image_path"].append(str(image))
        rows["conversation"].append(json.dumps(messages, ensure_ascii=False))
        rows["where"].append(rec.where)
    if not rows["id"]:
        raise InputError(f"{path}: no usable conversations ({errors.count} rejected; see the errors output)")
    return Dataset.from_dict(rows)


def export_questions(path: str, output: str, *, image_root: Path | None = None) -> tuple[int, int]:
    """Human questions as gen-questions records, to compare asked questions with human ones."""
    errors = ErrorSink(None)
    written = 0
    with RecordWriter(output, overwrite=True) as out:
        for rec in read_any(path):
            try:
                messages = parse_conversation(rec)
            except RecordError as e:
                errors.add(rec, str(e))
                continue
            questions = [m["content"] for m in messages if m["role"] == "user"]
            for k, q in enumerate(questions):
                out.write({"id": f"{rec['id']}:q{k}", "image_id": str(rec["id"]), "image": rec.get("image"),
                           "question": q, "gen": {"model": "human", "strategy": "dataset", "source": str(path)}})
                written += 1
    return written, errors.count


def run(cfg: SFTConfig) -> dict:
    import warnings

    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from stmed.train.loop import callbacks, fit

    warnings.filterwarnings("ignore", category=FutureWarning)
    resume_from = prepare_outdir(cfg)
    processor = load_processor(cfg)  # a model that does not load stops before OUTDIR exists
    with leave_no_empty_outdir(cfg):
        from stmed.train.common import error_sink

        errors = error_sink(cfg)  # written by the main process only
        try:
            dataset = load_conversations(cfg.data, errors=errors, limit=cfg.limit,
                                         image_root=Path(cfg.image_root) if cfg.image_root else None)
        finally:
            errors.close()
        say(cfg, f"{len(dataset)} conversations, {errors.count} rejected")
        model, processor = load_for_training(cfg, processor=processor)
    write_meta(cfg, "sft", {"path": str(cfg.data), "sha256": file_sha256(cfg.data), "conversations": len(dataset),
                            "rejected": errors.count})
    collator = SFTCollator(processor, sq_ratio=cfg.sq_ratio, seed=cfg.seed, pad_square=cfg.pad_square,
                           max_length=cfg.max_length)

    class Epoch(TrainerCallback):
        """A new self-asked draw each epoch, as the paper's per-sample coin flip gives."""

        def on_epoch_begin(self, args, state, control, **kwargs):
            collator.epoch = int(state.epoch or 0)

    checkpointing = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else _on_gpu()
    if checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # frozen embeddings + checkpointing need a grad-carrying input
    args = TrainingArguments(**trainer_kwargs(cfg, bool(checkpointing)))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                      processing_class=processor, callbacks=[*callbacks(cfg), Epoch()])
    trainer.remove_callback(PrinterCallback)  # it prints logs to stdout; ours go to train_log.jsonl
    summary = fit(trainer, cfg, resume_from, processor)
    return {"conversations": len(dataset), "rejected": errors.count, **summary}


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
