"""dpo and sft: train an adapter on preference pairs or on conversations.

Both run as they are on one CPU or GPU, and on many under ``accelerate launch -m stmed.cli``.
Their flags are the fields of stmed.train.config (each default there, with its source); a flag
left unset keeps the value from ``--config FILE`` or that default.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from stmed.cli import common as c
from stmed.cli.app import app
from stmed.options import options
from stmed.train.config import DPOConfig, SFTConfig

AsJson = Annotated[bool, typer.Option("--json", help="With --dry-run: one JSON object of tokens and ids on stdout.")]


def _finish(summary: dict, quiet: bool, as_json: bool = False) -> int:
    if "dry_run" in summary:
        from stmed.train.show import show_example

        show_example(summary.pop("dry_run"), as_json)
    from stmed.train.common import is_main_process

    if not quiet and is_main_process():  # one summary per run, not one per process
        print("stmed: " + json.dumps(summary), file=sys.stderr)
    # The main process reports rejected records; a launcher reads any other nonzero exit as a crash.
    return c.exit_code(summary.get("rejected", 0)) if is_main_process() else 0


@app.command("dpo")
@c.command
@options(DPOConfig)
def dpo(pairs: Annotated[str, typer.Argument(metavar="PAIRS", help="Pairs: stmed judge output or STLLaVA-Med JSON/JSONL.")],
        cfg: DPOConfig, as_json: AsJson = False) -> int:
    """Preference-train a LoRA adapter with DPO (trl), the paper's defaults."""
    from stmed.train import dpo as lib

    cfg.data = pairs
    cfg.check()
    return _finish(lib.run(cfg), cfg.quiet, as_json)


@app.command("sft")
@c.command
@options(SFTConfig)
def sft(data: Annotated[str, typer.Argument(metavar="DATA", help="LLaVA conversations (JSON list or JSONL) or stmed QA records.")],
        cfg: SFTConfig, as_json: AsJson = False,
        export_questions: Annotated[Optional[str], typer.Option(
            metavar="FILE", help="Only write the human questions as gen-questions records to FILE.")] = None) -> int:
    """Stage 1: supervised fine-tuning that teaches the model to ask (visual self-questioning)."""
    from pathlib import Path

    from stmed.train import sft as lib

    cfg.data = data
    if export_questions:
        n, bad = lib.export_questions(data, export_questions, image_root=Path(cfg.image_root) if cfg.image_root else None)
        return _finish({"questions": n, "rejected": bad}, cfg.quiet)
    cfg.check()
    return _finish(lib.run(cfg), cfg.quiet, as_json)
