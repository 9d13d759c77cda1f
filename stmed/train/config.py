"""The configs of `stmed dpo` and `stmed sft`: each field is also the command's flag (stmed.options).

Each default is written once, with where it comes from: the paper (STLLaVA-Med's DPO scripts,
arXiv 2406.19973), LLaVA-Med's stage-1 recipe for SFT, trl / transformers, or stmed's own
choice. ``TrainConfig`` holds what both stages share, at DPO's values (the paper's self-training
step); ``SFTConfig`` declares its own values for the same flags with ``like``. Pure Python:
``stmed --help`` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from stmed.core.model import ModelSpec
from stmed.errors import InputError, did_you_mean
from stmed.options import MAX_PIXELS_HELP, like, opt

# trl 1.16's DPO loss types (trl.DPOConfig.loss_type).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass
class TrainConfig:
    model: str = opt("", "Hugging Face model id or local folder.", flags=("-m", "--model"))  # required (check)
    output_dir: str = opt("", "Output folder: adapter, processor, _meta.json, train_log.jsonl.",
                          flags=("-o", "--output"), metavar="DIR")  # required to train (check)
    data: str = ""  # the command's argument
    trust_remote_code: bool = like(ModelSpec, "trust_remote_code")
    seed: int = opt(42, "Training seed.")  # stmed (trl's own default too)
    # LoRA (the paper's scripts: r 128, alpha 256, dropout 0.05, on every projection of the LLM)
    lora_r: int = opt(128, "LoRA rank.")
    lora_alpha: int = opt(256, "LoRA alpha.")
    lora_dropout: float = opt(0.05, "LoRA dropout (0 makes a step deterministic).")
    lora_vision: bool = opt(False, "Also put LoRA on the vision tower (the paper keeps it frozen).",
                            flags="--lora-vision")
    # no LoRA: every language-model weight (needs a copy as reference for DPO)
    full: bool = opt(False, "Train the language model's weights, no LoRA.", flags="--full")
    # optimisation: the paper's DPO values (SFTConfig sets stage 1's)
    learning_rate: float = opt(5e-6, "Learning rate.", flags="--lr")  # the paper
    epochs: float = opt(1.0, "Epochs.")  # the paper: 1 epoch over 10k pairs
    lr_scheduler: str = opt("cosine", "Learning-rate schedule (a transformers SchedulerType).")  # the paper
    warmup_ratio: float = opt(0.03, "Share of the steps that warm the learning rate up.")  # the paper
    weight_decay: float = opt(0.0, "Weight decay.")  # the paper
    # the paper: 4 pairs per device x 16 x 4 GPUs = 256 pairs per update
    batch_size: int = opt(4, "Per-device batch (pairs for dpo, conversations for sft).", min=1)
    grad_accum: int = opt(16, "Gradient accumulation steps.", min=1)
    max_steps: int = opt(-1, "Stop after N optimizer steps (-1: run the epochs).")  # trl's -1
    # None: never truncate; only answers are ever cut, never image tokens
    max_length: int | None = opt(None, "Cut answers so a sequence fits N tokens (never image tokens).")
    # None: on when the GPU supports it (the paper trains in bf16)
    bf16: bool | None = opt(None, "Train in bfloat16 (default: on a GPU that has it, as the paper).",
                            flags="--bf16/--no-bf16")
    # None: on a GPU, unless the step's own plan rules it out (stmed)
    gradient_checkpointing: bool | None = opt(None, "Default: on a GPU unless the shared prompt cache is used.",
                                              flags="--gradient-checkpointing/--no-gradient-checkpointing")
    # None: what the records say they were sampled with (answer_prompt), else off, as in
    # gen-questions/answer/eval: training must see the pixels the answers were sampled from.
    # LLaVA-1.5 (and LLaVA-Med) trained on padded images: turn it on here and there alike.
    pad_square: bool | None = opt(None, "Pad images square with the mean colour (LLaVA's pad); use the same "
                                  "setting as gen-questions/answer.", flags="--pad-square/--no-pad-square")
    # bound on an image's pixels (dynamic-resolution processors); None: as sampled
    max_pixels: int | None = opt(None, MAX_PIXELS_HELP, min=784)
    chat_template: str | None = like(ModelSpec, "chat_template")  # a Jinja file replacing the checkpoint's
    dry_run: bool = opt(False, "Load the model and data, print the first example exactly as it will be trained, "
                        "and stop.", flags="--dry-run")
    image_root: str | None = opt(None, "Folder that relative image paths resolve against.", metavar="DIR")
    logging_steps: int = opt(1, "Log every N steps to train_log.jsonl.", min=1)  # stmed: every step
    save_steps: int = opt(500, "Checkpoint every N steps.", min=1)  # transformers' 500
    save_total_limit: int | None = opt(2, "Checkpoints kept (the oldest go).", min=1)  # stmed
    report_to: str = opt("none", "none | tensorboard | wandb")  # stmed: train_log.jsonl only
    resume: bool = opt(False, "Continue from the last checkpoint in OUTDIR.", flags="--resume")
    overwrite: bool = opt(False, "Start fresh in an OUTDIR that holds an earlier run's checkpoints.",
                          flags="--overwrite")
    merge: bool = opt(False, "Also save OUTDIR/merged: a standalone merged model.", flags="--merge")
    limit: int | None = opt(None, "Only the first N input records.", min=1)
    errors: str | None = opt(None, "Bad records go here (default OUTDIR/errors.jsonl).", metavar="FILE")
    quiet: bool = opt(False, "No summary.", flags=("-q", "--quiet"))

    def check(self) -> None:
        if not self.model:
            raise InputError("-m/--model is required")
        if not self.output_dir:
            raise InputError("-o/--output is required to train")
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
    beta: float = opt(0.1, "DPO beta.")  # the paper
    # the paper: sigmoid; several weighted ones read as `sigmoid=0.8,sft=0.2` (into loss_weights)
    loss: list[str] = opt(help="trl loss type(s): sigmoid, or e.g. sigmoid=0.8,sft=0.2.", factory=lambda: ["sigmoid"],
                          type=str, flag_default="sigmoid")
    loss_weights: list[float] | None = None
    share_prefix: bool = opt(True, "Compute the image prompt once per pair (stmed.train.pairs).",
                             flags="--share-prefix/--no-share-prefix")  # stmed
    # Beyond the paper (stmed.train.variants); the defaults are the paper's plain DPO.
    weight: str = opt("none", "Scale each pair's loss by a field of its record: none (the paper), margin (the "
                      "judge's), or any numeric FIELD; normalised to mean 1.")
    wpo: bool = opt(False, "trl's WPO weighting: each pair by its answers' probability under the policy.",
                    flags="--wpo")
    image_pref: float = opt(0.0, "mDPO: add WEIGHT x a term preferring the chosen answer on the real image over "
                            "a corrupted one (0: off).")  # mDPO's own weight: 1.0
    image_pref_corrupt: str = opt("crop:0.2", "With --image-pref: the corruption of pairs that carry none, "
                                  "noise|blur|mask|crop[:STRENGTH].")  # mDPO: crop to <=20% of the area

    def __post_init__(self) -> None:
        if isinstance(self.loss, str):  # the flag's text (or a config file's)
            self.loss, self.loss_weights = parse_loss(self.loss)

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
    # LLaVA-Med's stage 1 (60K-IM, LoRA): lr 2e-4, 3 epochs, 8 per device x 4
    learning_rate: float = like(TrainConfig, "learning_rate", 2e-4)
    epochs: float = like(TrainConfig, "epochs", 3.0)
    batch_size: int = like(TrainConfig, "batch_size", 8)
    grad_accum: int = like(TrainConfig, "grad_accum", 4)
    seed: int = like(TrainConfig, "seed", help="Seed for training and the self-asked draw.")
    # the paper: a later human turn becomes a self-asked (virtual user) turn with probability 0.5
    sq_ratio: float = opt(0.5, "Chance a later human turn is self-asked.")

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
