"""What `stmed dpo` and `stmed sft` share: LoRA, trainer arguments, logs, merge.

Their configs are stmed.train.config (the flags, and ``--config FILE``, come from them). Every
run writes the resolved config, the data hash and the versions to ``OUTDIR/_meta.json`` and the
trainer's logs to ``OUTDIR/train_log.jsonl``.
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stmed.core.model import on_gpu
from stmed.distributed import world
from stmed.errors import InputError
from stmed.records import write_json
from stmed.train.config import DPOConfig, SFTConfig, TrainConfig  # noqa: F401  (also imported from here)

# The paper's LoRA targets: every projection of the language model (not the vision tower, the
# projector or lm_head). A regex, because module names alone (q_proj, fc1) also match the vision tower.
LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "qkv", "proj")
LANGUAGE_PARTS = r"(language_model|text_model)"
VISION_PARTS = r"(vision_tower|vision_model|visual)"


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    parts = [rf".*{LANGUAGE_PARTS}.*\.({'|'.join(LLM_PROJECTIONS)})"]
    if cfg.lora_vision:
        parts.append(rf".*{VISION_PARTS}.*\.({'|'.join(VISION_PROJECTIONS)})")
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="|".join(f"({p})" for p in parts), bias="none", task_type="CAUSAL_LM")


def load_processor(cfg: TrainConfig):
    """The processor alone (enough to read and check the data), with the chat template every
    stage renders with, or one InputError line."""
    from stmed.core.model import ModelSpec
    from stmed.core.model import load_processor as load

    return load(ModelSpec(cfg.model, trust_remote_code=cfg.trust_remote_code, chat_template=cfg.chat_template))


def load_for_training(cfg: TrainConfig, wrap: bool = True, processor=None):
    """(model, processor) in the training dtype; LoRA applied unless --full or not ``wrap``
    (trl applies the LoRA config itself: handed a ready PeftModel it would copy the adapter as
    the reference). A model that cannot be loaded is one InputError line."""
    from stmed.core.model import ensure_pad_token, load_weights

    processor = processor if processor is not None else load_processor(cfg)
    model = load_weights(cfg.model, training_dtype(cfg), trust_remote_code=cfg.trust_remote_code)
    ensure_pad_token(processor)
    if not wrap and not cfg.full:
        return model, processor
    if cfg.full:
        for name, p in model.named_parameters():  # the vision tower and projector stay frozen, as in the paper
            p.requires_grad = bool(re.search(LANGUAGE_PARTS, name)) or name.startswith("lm_head")
        return model, processor
    from peft import get_peft_model
    from transformers import set_seed

    set_seed(cfg.seed)  # LoRA's A matrices are drawn here: the same seed gives the same start in every run
    try:
        model = get_peft_model(model, lora_config(cfg))
    except ValueError as e:
        raise InputError(f"-m {cfg.model}: no language-model projections to put LoRA on ({e})") from None
    return model, processor


def training_dtype(cfg: TrainConfig):
    """bfloat16 where ``--bf16`` says so, or (unset) by the rule inference uses: on a GPU that has it."""
    from stmed.core.model import resolve_device, resolve_dtype

    name = "auto" if cfg.bf16 is None else "bfloat16" if cfg.bf16 else "float32"
    return resolve_dtype(name, resolve_device("auto"))


def use_bf16(cfg: TrainConfig) -> bool:
    import torch

    return training_dtype(cfg) == torch.bfloat16


def trainer_kwargs(cfg: TrainConfig, gradient_checkpointing: bool) -> dict[str, Any]:
    """TrainingArguments fields both stages set the same way."""
    return dict(
        output_dir=cfg.output_dir, seed=cfg.seed, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_steps=cfg.max_steps, bf16=use_bf16(cfg), fp16=False, gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=cfg.logging_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to], remove_unused_columns=False,
        disable_tqdm=True, dataloader_num_workers=0, use_cpu=not on_gpu(),
    )


def prepare_outdir(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from, or None; refuses to mix a new run into an old one."""
    out = Path(cfg.output_dir)
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if
                         p.name.split("-")[-1].isdigit() else -1)
    if cfg.resume:
        # The trainer writes trainer_state.json last: a checkpoint without it was cut off by a kill.
        complete = [p for p in checkpoints if (p / "trainer_state.json").is_file()]
        return str(complete[-1]) if complete else None
    if checkpoints and not cfg.overwrite:
        raise InputError(f"{out}: holds checkpoints of an earlier run; pass --resume to continue it or "
                         "--overwrite to start again")
    if cfg.overwrite and is_main_process():  # the others find the same folder; one process clears it
        import shutil

        for p in checkpoints:
            shutil.rmtree(p, ignore_errors=True)
        (out / "train_log.jsonl").unlink(missing_ok=True)
    return None


@contextlib.contextmanager
def leave_no_empty_outdir(cfg: TrainConfig):
    """A run that stops before training (a model that does not load, no usable data) must not
    leave behind an empty OUTDIR that it created, as if a run had happened there."""
    out = Path(cfg.output_dir)
    existed = out.exists()
    try:
        yield
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def write_meta(cfg: TrainConfig, stage: str, data: dict[str, Any]) -> None:
    """OUTDIR/_meta.json, written by the main process only (every process of a run calls this)."""
    import importlib.metadata as md

    import stmed

    if not is_main_process():
        return
    versions = {}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    meta = {"stage": stage, "stmed_version": stmed.__version__, "base_model": cfg.model,
            "config": asdict(cfg), "data": data, "versions": versions,
            "processes": world().size}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "_meta.json", meta)


def is_main_process() -> bool:
    """Rank 0 of an accelerate launch / torchrun, or a process started alone (stmed.distributed.world)."""
    return world().main


def error_sink(cfg: TrainConfig):
    """OUTDIR/errors.jsonl (or --errors) for the main process. Every process reads and checks the
    same data; the others only count their rejects, so the file is written once."""
    from stmed.records import ErrorSink

    if is_main_process():
        return ErrorSink(cfg.errors or str(Path(cfg.output_dir) / "errors.jsonl"))

    class Counting(ErrorSink):
        def add(self, record, message, **extra):
            self.count += 1

    return Counting(None)


def merge_adapter(cfg: TrainConfig) -> Path:
    """OUTDIR/merged: base + adapter folded into one standalone model, plus the processor.

    The base is reloaded on the CPU in the main process, so this works the same after DDP,
    DeepSpeed ZeRO-3 or FSDP training, whose in-memory weights may be sharded.
    """
    from transformers import AutoProcessor

    from stmed.core.model import load_weights

    out = Path(cfg.output_dir)
    dtype = training_dtype(cfg)
    if cfg.full:  # the trained weights are the whole model already
        merged = load_weights(str(out), dtype)
    else:
        merged = load_weights(cfg.model, dtype, trust_remote_code=cfg.trust_remote_code, adapter=str(out))
    target = out / "merged"
    merged.save_pretrained(target)
    AutoProcessor.from_pretrained(str(out), trust_remote_code=cfg.trust_remote_code).save_pretrained(target)
    return target


def say(cfg: TrainConfig, message: str) -> None:
    if not cfg.quiet and is_main_process():
        print(f"stmed: {message}", file=sys.stderr)
