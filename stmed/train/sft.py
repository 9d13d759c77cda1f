"""`stmed sft`: the paper's stage 1, LoRA fine-tuning that teaches the model to ask.

Loss = answer NLL + the NLL of each self-asked question (stmed.train.sft_data builds the
labels). Runs on transformers' Trainer: trl's SFTTrainer would re-tokenize and cannot
supervise user-role text.
"""

from __future__ import annotations

import json
from pathlib import Path

from stmed.core.model import on_gpu
from stmed.errors import InputError, RecordError
from stmed.records import ErrorSink, RecordWriter, file_sha256
from stmed.train.common import (SFTConfig, leave_no_empty_outdir, load_for_training, load_processor, prepare_outdir,
                                say, trainer_kwargs, write_meta)
from stmed.train.data import check_image, image_settings, read_any
from stmed.train.sft_data import SFTCollator, parse_conversation


def load_conversations(path: str, *, errors: ErrorSink, image_root: Path | None = None, limit: int | None = None,
                       flags: dict | None = None):
    """(Dataset, image settings): checked conversations (id, image_path, conversation JSON, where),
    and the image settings stmed QA records were sampled with (see data.image_settings)."""
    from datasets import Dataset

    records = read_any(path)[:limit] if limit else read_any(path)
    settings = image_settings(records, flags or {})
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
    return Dataset.from_dict(rows), settings


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
    if cfg.dry_run:
        return dry_run(cfg)
    resume_from = prepare_outdir(cfg)
    processor = load_processor(cfg)  # a model that does not load stops before OUTDIR exists
    with leave_no_empty_outdir(cfg):
        from stmed.train.common import error_sink

        errors = error_sink(cfg)  # written by the main process only
        try:
            dataset, images = _conversations(cfg, errors)
        finally:
            errors.close()
        say(cfg, f"{len(dataset)} conversations, {errors.count} rejected")
        model, processor = load_for_training(cfg, processor=processor)
    write_meta(cfg, "sft", {"path": str(cfg.data), "sha256": file_sha256(cfg.data), "conversations": len(dataset),
                            "rejected": errors.count, "images": images})
    collator = _collator(cfg, processor, images)

    class Epoch(TrainerCallback):
        """A new self-asked draw each epoch, as the paper's per-sample coin flip gives."""

        def on_epoch_begin(self, args, state, control, **kwargs):
            collator.epoch = int(state.epoch or 0)

    checkpointing = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else on_gpu()
    if checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # frozen embeddings + checkpointing need a grad-carrying input
    args = TrainingArguments(**trainer_kwargs(cfg, bool(checkpointing)))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                      processing_class=processor, callbacks=[*callbacks(cfg), Epoch()])
    trainer.remove_callback(PrinterCallback)  # it prints logs to stdout; ours go to train_log.jsonl
    summary = fit(trainer, cfg, resume_from, processor)
    return {"conversations": len(dataset), "rejected": errors.count, **summary}


def _conversations(cfg: SFTConfig, errors: ErrorSink):
    return load_conversations(cfg.data, errors=errors, limit=cfg.limit,
                              flags={"pad_square": cfg.pad_square, "max_pixels": cfg.max_pixels},
                              image_root=Path(cfg.image_root) if cfg.image_root else None)


def _collator(cfg: SFTConfig, processor, images: dict) -> SFTCollator:
    return SFTCollator(processor, sq_ratio=cfg.sq_ratio, seed=cfg.seed, pad_square=images["pad_square"],
                       max_pixels=images["max_pixels"], max_length=cfg.max_length)


def dry_run(cfg: SFTConfig) -> dict:
    """The first conversation exactly as training sees it in epoch 0: the processor's ids in
    segments, supervised or not; nothing is written."""
    processor = load_processor(cfg)
    errors = ErrorSink(None)
    dataset, images = _conversations(cfg, errors)
    load_for_training(cfg, wrap=False, processor=processor)
    item = _collator(cfg, processor, images).encode(dataset[0])
    tok = getattr(processor, "tokenizer", processor)
    segments: list[dict] = []
    for tid, label in zip(item["input_ids"], item["labels"]):
        supervised = label != -100
        if not segments or segments[-1]["supervised"] != supervised:
            segments.append({"tokens": [], "ids": [], "supervised": supervised})
        segments[-1]["ids"].append(tid)
        segments[-1]["tokens"].append(tok.convert_ids_to_tokens(tid))
    from stmed.core.prompt import rendering

    shown = {"id": dataset[0]["id"], "images": images, "segments": segments}
    if rendering(processor):
        shown["rendering"] = rendering(processor)
    return {"dry_run": shown,
            "conversations": len(dataset), "rejected": errors.count}
