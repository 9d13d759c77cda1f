"""Running a trainer the stmed way: JSONL log, progress bar, resume, save, merge.

Both stages build their own trainer (trl's DPOTrainer, transformers' Trainer) and hand it to
``fit``, so what happens around training (the log file, the bar, checkpoints, the merged
model, the closing summary) is written once.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from stmed.train.common import TrainConfig, is_main_process, merge_adapter, say

LOG_NAME = "train_log.jsonl"


def callbacks(cfg: TrainConfig) -> list:
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        """Every ``log`` event as one JSON line: loss, rewards/*, learning rate, step, epoch."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
            with open(Path(args.output_dir) / LOG_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    class Bar(TrainerCallback):
        """A rich bar with loss and reward margin on stderr (only on a terminal, like every stage)."""

        def __init__(self):
            self.progress = self.task = None
            self.last: dict = {}

        def on_train_begin(self, args, state, control, **kwargs):
            if cfg.quiet or not state.is_world_process_zero or not sys.stderr.isatty():
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.progress import TimeRemainingColumn

            from stmed.progress import err_console

            self.progress = Progress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("steps"), TimeElapsedColumn(), TextColumn("eta"),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                     console=err_console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.last.update({k: v for k, v in (logs or {}).items() if k in ("loss", "rewards/margins")})
            if self.progress is not None:
                info = "  ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in self.last.items())
                self.progress.update(self.task, info=info)

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.stop()

    return [JsonlLog(), Bar()]


def fit(trainer, cfg: TrainConfig, resume_from: str | None, processor) -> dict:
    """Train, save adapter + processor in OUTDIR, optionally merge; returns the closing summary."""
    start = time.perf_counter()
    if resume_from:
        say(cfg, f"resuming from {resume_from}")
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model(cfg.output_dir)
    summary = {"steps": trainer.state.global_step, "train_loss": round(result.training_loss, 6),
               "seconds": round(time.perf_counter() - start, 1)}
    state = trainer.accelerator.state  # what accelerate actually ran: a config it cannot honour here falls back
    summary.update(processes=state.num_processes, distributed=str(state.distributed_type.value))
    if is_main_process():
        processor.save_pretrained(cfg.output_dir)
        _note_in_meta(cfg, processes=state.num_processes, distributed=summary["distributed"])
    trainer.accelerator.wait_for_everyone()
    if cfg.merge and is_main_process():
        summary["merged"] = str(merge_adapter(cfg))
    return summary


def _note_in_meta(cfg: TrainConfig, **fields) -> None:
    """Add how the run was distributed to OUTDIR/_meta.json (known only once the trainer ran)."""
    from stmed.records import write_json

    path = Path(cfg.output_dir) / "_meta.json"
    if path.exists():
        write_json(path, {**json.loads(path.read_text(encoding="utf-8")), **fields})
