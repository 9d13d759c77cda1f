"""What `stmed dpo` and `stmed sft` share: configs, LoRA, trainer arguments, logs, merge.

Precedence is defaults < ``--config FILE`` (YAML) < flags. Every run writes the resolved
config, the data hash and the versions to ``OUTDIR/_meta.json`` and the trainer's logs to
``OUTDIR/train_log.jsonl``.
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from stmed.core.model import on_gpu
from stmed.distributed import world
from stmed.errors import InputError, did_you_mean
from stmed.records import write_json

# The paper's LoRA targets: every projection of the language model (not the vision tower, the
# projector or lm_head). A regex, because module names alone (q_proj, fc1) also match the vision tower.
LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "qkv", "proj")
LANGUAGE_PARTS = r"(language_model|text_model)"
VISION_PARTS = r"(vision_tower|vision_model|visual)"

# trl 1.16's DPO loss types (trl.DPOConfig.loss_type).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass
class TrainConfig:
    model: str = ""
    output_dir: str = ""
    data: str = ""
    trust_remote_code: bool = False
    seed: int = 42
    # LoRA (STLLaVA-Med scripts: lora_r 128, lora_alpha 256, dropout 0.05, all LLM projections)
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_vision: bool = False  # also adapt the vision tower (the paper keeps it frozen)
    full: bool = False  # no LoRA: train every language-model weight (needs a copy as reference for DPO)
    # optimisation; subclasses set the paper's values for their stage
    learning_rate: float = 5e-6
    epochs: float = 1.0
    lr_scheduler: str = "cosine"  # the paper: cosine
    warmup_ratio: float = 0.03  # the paper: 0.03
    weight_decay: float = 0.0  # the paper: 0
    batch_size: int = 4  # per device
    grad_accum: int = 16
    max_steps: int = -1  # -1: run the epochs
    max_length: int | None = None  # None: never truncate; only answers are ever cut, never image tokens
    bf16: bool | None = None  # None: on when the GPU supports it (the paper trains in bf16)
    gradient_checkpointing: bool | None = None  # None: on a GPU, unless the step's own plan rules it out
    # None: what the records say they were sampled with (answer_prompt), else off, as in
    # gen-questions/answer/eval: training must see the pixels the answers were sampled from.
    # LLaVA-1.5 (and LLaVA-Med) trained on padded images: turn it on here and there alike.
    pad_square: bool | None = None
    max_pixels: int | None = None  # bound on an image's pixels (dynamic-resolution processors); None: as sampled
    chat_template: str | None = None  # a Jinja file replacing the checkpoint's chat template
    dry_run: bool = False  # print the first example as it will be trained, and stop
    image_root: str | None = None
    logging_steps: int = 1
    save_steps: int = 500
    save_total_limit: int | None = 2
    report_to: str = "none"  # none | tensorboard | wandb
    resume: bool = False
    overwrite: bool = False
    merge: bool = False
    limit: int | None = None
    errors: str | None = None
    quiet: bool = False

    def check(self) -> None:
        if not self.model:
            raise InputError("-m/--model is required")
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise InputError(f"--report-to {self.report_to!r}: expected none, tensorboard or wandb")
        if self.full and self.lora_vision:
            raise InputError("--full and --lora-vision exclude each other")
        if self.max_pixels is not None and self.max_pixels < 784:
            raise InputError(f"--max-pixels {self.max_pixels}: must be at least 784 (28 x 28)")
        if self.max_length is not None and self.max_length < 1:
            raise InputError(f"--max-length {self.max_length}: must be positive")


@dataclass
class DPOConfig(TrainConfig):
    learning_rate: float = 5e-6  # the paper's DPO lr
    epochs: float = 1.0  # 1 epoch over 10k pairs
    batch_size: int = 4  # per device, x grad-accum 16 x 4 GPUs = 256 pairs per update
    grad_accum: int = 16
    beta: float = 0.1  # the paper's beta
    loss: list[str] = field(default_factory=lambda: ["sigmoid"])  # the paper: sigmoid
    loss_weights: list[float] | None = None
    share_prefix: bool = True  # image prompt computed once per pair (stmed.train.pairs)
    # Beyond the paper (stmed.train.variants); the defaults are the paper's plain DPO.
    weight: str = "none"  # none | margin (the judge's) | any numeric field of the pair records
    wpo: bool = False  # trl's WPO weighting (use_weighting: each pair by its answers' own probability)
    image_pref: float = 0.0  # mDPO's image-conditional term, its weight (mDPO: 1.0)
    image_pref_corrupt: str = "crop:0.2"  # the corrupted image of a pair that carries none (mDPO: crop to <=20%)

    def check(self) -> None:
        super().check()
        from stmed.corrupt import Corruption

        Corruption.parse(self.image_pref_corrupt, flag="--image-pref-corrupt")
        if not self.image_pref >= 0:
            raise InputError(f"--image-pref {self.image_pref}: the term's weight must be 0 (off) or more")
        if (self.weight != "none" or self.wpo) and {"aot", "aot_unpaired"} & set(self.loss):
            raise InputError("--weight and --wpo cannot scale the aot losses (they compare pairs across the batch)")
        for name in self.loss:
            if name not in LOSS_TYPES:
                raise InputError(f"--loss {name!r}: unknown loss type{did_you_mean(name, LOSS_TYPES)}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss):
            raise InputError("--loss: give a weight for every loss type or for none")
        if self.share_prefix and self.gradient_checkpointing:
            raise InputError("--gradient-checkpointing needs --no-share-prefix (the shared prompt cache is "
                             "built once and cannot be recomputed)")


@dataclass
class SFTConfig(TrainConfig):
    learning_rate: float = 2e-4  # stage 1 (LLaVA-Med 60K-IM, LoRA): lr 2e-4
    epochs: float = 3.0  # 3 epochs
    batch_size: int = 8  # per device 8, grad-accum 4
    grad_accum: int = 4
    sq_ratio: float = 0.5  # chance that a later human turn becomes a self-asked (virtual user) turn

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.sq_ratio <= 1.0:
            raise InputError(f"--sq-ratio {self.sq_ratio}: must be between 0 and 1")


def parse_loss(text: str) -> tuple[list[str], list[float] | None]:
    """``sigmoid`` or ``sigmoid=0.8,sft=0.2`` (several losses, weighted)."""
    names, weights = [], []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, weight = part.partition("=")
        names.append(name.strip())
        try:
            weights.append(float(weight) if weight else None)
        except ValueError:
            raise InputError(f"--loss {text!r}: weight {weight!r} is not a number") from None
    if not names:
        raise InputError("--loss: give at least one loss type")
    given = [w for w in weights if w is not None]
    if given and len(given) != len(weights):
        raise InputError(f"--loss {text!r}: give a weight for every loss type or for none")
    return names, (weights if given else None)


def make_config(cls, config_file: str | None, flags: dict[str, Any]):
    """Defaults < YAML file < flags given on the command line (``None`` means not given)."""
    values: dict[str, Any] = {}
    known = {f.name for f in fields(cls)}
    if config_file:
        import yaml

        p = Path(config_file)
        if not p.is_file():
            raise InputError(f"--config {config_file}: no such file")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            where = f"{p}:{line + 1}" if line is not None else str(p)
            raise InputError(f"{where}: not valid YAML") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{p}: expected a mapping of option names to values")
        text = p.read_text(encoding="utf-8").splitlines()
        for key, value in loaded.items():
            norm = str(key).replace("-", "_")
            if norm not in known:
                line = next((i for i, t in enumerate(text, 1) if t.lstrip().startswith(f"{key}:")), None)
                where = f"{p}:{line}" if line else str(p)
                raise InputError(f"{where}: unknown key {key!r}{did_you_mean(norm, known)}")
            values[norm] = value
    values.update({k: v for k, v in flags.items() if v is not None})
    if isinstance(values.get("loss"), str):
        values["loss"], weights = parse_loss(values["loss"])
        if weights is not None:
            values["loss_weights"] = weights
    try:
        cfg = cls(**values)
    except TypeError as e:
        raise InputError(f"bad configuration: {e}") from None
    cfg.check()
    return cfg


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
