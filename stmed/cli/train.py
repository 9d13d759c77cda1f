"""dpo and sft: train an adapter on preference pairs or on conversations.

Both run as they are on one CPU or GPU, and on many under ``accelerate launch -m stmed.cli``.
Every flag left unset keeps the value from ``--config FILE`` or the paper's default.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from stmed.cli import common as c
from stmed.cli.app import app

Opt = typer.Option
OutDir = Annotated[str, Opt("-o", "--output", help="Output folder: adapter, processor, _meta.json, train_log.jsonl.")]
Config = Annotated[Optional[str], Opt("--config", help="YAML file of options (flags override it).")]
LR = Annotated[Optional[float], Opt("--lr", help="Learning rate (DPO 5e-6, SFT 2e-4).")]
Epochs = Annotated[Optional[float], Opt("--epochs", help="Epochs (DPO 1, SFT 3).")]
BatchSize = Annotated[Optional[int], Opt("--batch-size", min=1, help="Per-device batch (DPO 4 pairs, SFT 8).")]
GradAccum = Annotated[Optional[int], Opt("--grad-accum", min=1, help="Gradient accumulation (DPO 16, SFT 4).")]
MaxSteps = Annotated[Optional[int], Opt("--max-steps", help="Stop after N optimizer steps.")]
MaxLength = Annotated[Optional[int], Opt("--max-length", help="Cut answers so a sequence fits N tokens (never image tokens).")]
LoraR = Annotated[Optional[int], Opt("--lora-r", help="LoRA rank (128).")]
LoraAlpha = Annotated[Optional[int], Opt("--lora-alpha", help="LoRA alpha (256).")]
LoraDropout = Annotated[Optional[float], Opt("--lora-dropout", help="LoRA dropout (0.05; 0 makes a step deterministic).")]
LoraVision = Annotated[Optional[bool], Opt("--lora-vision", help="Also put LoRA on the vision tower.")]
Full = Annotated[Optional[bool], Opt("--full", help="Train the language model's weights, no LoRA.")]
Resume = Annotated[Optional[bool], Opt("--resume", help="Continue from the last checkpoint in OUTDIR.")]
Merge = Annotated[Optional[bool], Opt("--merge", help="Also save OUTDIR/merged: a standalone merged model.")]
ReportTo = Annotated[Optional[str], Opt("--report-to", help="none | tensorboard | wandb")]
SaveSteps = Annotated[Optional[int], Opt("--save-steps", min=1, help="Checkpoint every N steps (500).")]
GradCkpt = Annotated[Optional[bool], Opt("--gradient-checkpointing/--no-gradient-checkpointing", help="Default: on a GPU unless the shared prompt cache is used.")]
PadSquare = Annotated[Optional[bool], Opt("--pad-square/--no-pad-square", help="Pad images square with the mean colour (LLaVA's pad); use the same setting as gen-questions/answer.")]
DryRun = Annotated[Optional[bool], Opt("--dry-run", help="Load the model and data, print the first example exactly as it will be trained, and stop.")]
AsJson = Annotated[bool, Opt("--json", help="With --dry-run: one JSON object of tokens and ids on stdout.")]
TrainErrors = Annotated[Optional[str], Opt("--errors", help="Bad records go here (default OUTDIR/errors.jsonl).")]


def _finish(summary: dict, quiet: bool, as_json: bool = False) -> int:
    if "dry_run" in summary:
        from stmed.train.show import show_example

        show_example(summary.pop("dry_run"), as_json)
    from stmed.train.common import is_main_process

    if not quiet and is_main_process():  # one summary per run, not one per process
        print("stmed: " + json.dumps(summary), file=sys.stderr)
    # The main process reports rejected records; a launcher reads any other nonzero exit as a crash.
    return c.exit_code(summary.get("rejected", 0)) if is_main_process() else 0


def _config(cls, config_file, data, output, flags: dict):
    """Flags given on the command line over the YAML file over the defaults."""
    from dataclasses import fields

    from stmed.train.common import make_config

    values = dict(flags, learning_rate=flags.get("lr"), data=data, output_dir=output)
    if values.get("image_root") is not None:
        values["image_root"] = str(values["image_root"])
    for switch in ("overwrite", "quiet", "trust_remote_code", "dry_run"):  # unset (False) lets the file decide
        values[switch] = values.get(switch) or None
    names = {f.name for f in fields(cls)}
    return make_config(cls, config_file, {k: v for k, v in values.items() if k in names})


@app.command("dpo")
@c.command
def dpo(pairs: Annotated[str, typer.Argument(help="Pairs: stmed judge output or STLLaVA-Med JSON/JSONL.")],
        model: c.Model, output: OutDir, config: Config = None, beta: Annotated[Optional[float], Opt("--beta", help="DPO beta (0.1).")] = None,
        loss: Annotated[Optional[str], Opt("--loss", help="trl loss type(s): sigmoid, or e.g. sigmoid=0.8,sft=0.2.")] = None,
        lr: LR = None, epochs: Epochs = None, batch_size: BatchSize = None, grad_accum: GradAccum = None,
        max_steps: MaxSteps = None, max_length: MaxLength = None, lora_r: LoraR = None, lora_alpha: LoraAlpha = None,
        lora_dropout: LoraDropout = None,
        lora_vision: LoraVision = None, full: Full = None, resume: Resume = None, merge: Merge = None,
        report_to: ReportTo = None, save_steps: SaveSteps = None, gradient_checkpointing: GradCkpt = None,
        share_prefix: Annotated[Optional[bool], Opt("--share-prefix/--no-share-prefix", help="Compute the image prompt once per pair (default on).")] = None,
        weight: Annotated[Optional[str], Opt("--weight", help="Scale each pair's loss by a field of its record: none (the paper), margin (the judge's), or any numeric FIELD; normalised to mean 1.")] = None,
        wpo: Annotated[Optional[bool], Opt("--wpo", help="trl's WPO weighting: each pair by its answers' probability under the policy.")] = None,
        image_pref: Annotated[Optional[float], Opt("--image-pref", help="mDPO: add WEIGHT x a term preferring the chosen answer on the real image over a corrupted one (0: off).")] = None,
        image_pref_corrupt: Annotated[Optional[str], Opt("--image-pref-corrupt", help="With --image-pref: the corruption of pairs that carry none, noise|blur|mask|crop[:STRENGTH] (crop:0.2).")] = None,
        seed: Annotated[Optional[int], Opt("--seed", help="Training seed (42).")] = None, image_root: c.ImageRoot = None,
        pad_square: PadSquare = None, max_pixels: c.MaxPixels = None, chat_template: c.ChatTemplate = None,
        limit: c.Limit = None, errors: TrainErrors = None, overwrite: c.Overwrite = False,
        trust_remote_code: c.TrustRemote = False, dry_run: DryRun = None, json_out: AsJson = False,
        quiet: c.Quiet = False) -> int:
    """Preference-train a LoRA adapter with DPO (trl), the paper's defaults."""
    from stmed.train import dpo as lib
    from stmed.train.common import DPOConfig

    cfg = _config(DPOConfig, config, pairs, output, locals())
    return _finish(lib.run(cfg), cfg.quiet, json_out)


@app.command("sft")
@c.command
def sft(data: Annotated[str, typer.Argument(help="LLaVA conversations (JSON list or JSONL) or stmed QA records.")],
        model: Annotated[Optional[str], Opt("-m", "--model", help="Hugging Face model id or local folder.")] = None,
        output: Annotated[Optional[str], Opt("-o", "--output", help="Output folder (adapter, processor, logs).")] = None,
        config: Config = None, sq_ratio: Annotated[Optional[float], Opt("--sq-ratio", help="Chance a later human turn is self-asked (0.5).")] = None,
        export_questions: Annotated[Optional[str], Opt("--export-questions", help="Only write the human questions as gen-questions records to FILE.")] = None,
        lr: LR = None, epochs: Epochs = None, batch_size: BatchSize = None, grad_accum: GradAccum = None,
        max_steps: MaxSteps = None, max_length: MaxLength = None, lora_r: LoraR = None, lora_alpha: LoraAlpha = None,
        lora_dropout: LoraDropout = None,
        lora_vision: LoraVision = None, full: Full = None, resume: Resume = None, merge: Merge = None,
        report_to: ReportTo = None, save_steps: SaveSteps = None, gradient_checkpointing: GradCkpt = None,
        seed: Annotated[Optional[int], Opt("--seed", help="Seed for training and the self-asked draw (42).")] = None,
        image_root: c.ImageRoot = None, pad_square: PadSquare = None, max_pixels: c.MaxPixels = None,
        chat_template: c.ChatTemplate = None, limit: c.Limit = None, errors: TrainErrors = None,
        overwrite: c.Overwrite = False, trust_remote_code: c.TrustRemote = False, dry_run: DryRun = None,
        json_out: AsJson = False, quiet: c.Quiet = False) -> int:
    """Stage 1: supervised fine-tuning that teaches the model to ask (visual self-questioning)."""
    from stmed.train import sft as lib
    from stmed.train.common import SFTConfig

    if export_questions:
        n, bad = lib.export_questions(data, export_questions, image_root=image_root)
        return _finish({"questions": n, "rejected": bad}, quiet)
    if not output:
        c.fail("-o/--output is required to train")
    cfg = _config(SFTConfig, config, data, output, locals())
    return _finish(lib.run(cfg), cfg.quiet, json_out)
