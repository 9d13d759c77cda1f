"""The paper's table (STLLaVA-Med 7B, zero-shot) as ``stmed eval`` scores the converted release.

Steps: ``stmed convert`` the release (original LLaVA layout) into ``OUT/stllava-med-7b-hf``, one
``stmed eval`` per benchmark into ``OUT/<bench>.json``, then ``stmed report`` into
``OUT/report.md``. The converted processor pads to square itself (image_aspect_ratio "pad"), as
training did, so eval needs no --pad-square.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stmed.experiments.common import (Bench, Step, bench_names, check_benchmarks, check_settings, eval_argv,
                                      key_values, settings_flags, where_field)
from stmed.options import opt

# Sun et al. 2024, Table 1 (zero-shot; open = token recall, closed = accuracy, in %)
PAPER = {"vqa-rad": (37.12, 60.35), "slake": (46.69, 57.69), "pathvqa": (11.92, 52.90)}
MODEL_DIR = "stllava-med-7b-hf"  # the converted model, inside OUT
EVAL_OWN = {"model": "the converted release", "output": "output", "summary": "output", "bench": "benchmarks",
            "data": "benchmarks.NAME.data", "limit": "limit or benchmarks.NAME.limit"}


@dataclass
class ReproduceRun:
    release: str = opt("models/stllava-med-7b", "The STLLaVA-Med release folder (ZachSun/stllava-med-7b, "
                       "original layout).")
    vision_tower: str = opt("models/clip-vit-large-patch14-336", "Its vision tower "
                            "(openai/clip-vit-large-patch14-336).")
    model_base: str | None = opt(None, "Base of a LoRA release (non_lora_trainables.bin): liuhaotian/llava-v1.5-7b.")
    vision_lora: str | None = opt(None, "ZachSun/stllava-med-7b-vit, where it is a peft adapter.")
    benchmarks: dict[str, Bench] = opt(help="Comma list of benchmarks (each keeps its settings from the file).",
                                       flags="--bench", type=str, parse=bench_names,
                                       factory=lambda: {name: Bench() for name in PAPER})
    limit: int | None = opt(None, "Only the first N items of every benchmark (a smoke run; over the file's limits).",
                            min=1)
    output: str = opt("runs/paper", "Output folder: OUT/stllava-med-7b-hf, OUT/<bench>.json, OUT/report.md.",
                      flags=("-o", "--output"))
    eval: dict[str, Any] = opt(help="KEY=VALUE: a stmed eval option for every benchmark (repeatable).",
                               type=list[str], parse=key_values("--eval"), factory=dict, metavar="KEY=VALUE")
    where: dict[str, str] = where_field()


def check(run: ReproduceRun, known: dict[str, Collection[str]]) -> None:
    check_benchmarks(run)
    check_settings(run, "eval", "eval", known.get("eval", ()), EVAL_OWN)


def missing(run: ReproduceRun) -> list[str]:
    """Inputs that are not there, one line each."""
    lacks = []
    src = Path(run.release)
    at = run.where.get
    if not (src / "config.json").is_file():
        lacks.append(f"{at('release', 'release')}: {src}: no config.json (download ZachSun/stllava-med-7b there)")
    elif run.model_base is None and (src / "non_lora_trainables.bin").is_file():
        lacks.append(f"{at('release', 'release')}: {src} is a LoRA folder: set model_base to its base model")
    for name in ("model_base", "vision_lora"):
        value = getattr(run, name)
        if value and not Path(value).is_dir():
            lacks.append(f"{at(name, name)}: {value}: no such folder")
    if not (Path(run.vision_tower) / "config.json").is_file():
        lacks.append(f"{at('vision_tower', 'vision_tower')}: {run.vision_tower}: no config.json "
                     "(download openai/clip-vit-large-patch14-336 there)")
    for name, bench in run.benchmarks.items():
        if bench.data and not Path(bench.data).exists():
            lacks.append(f"{at(f'benchmarks.{name}', 'benchmarks')}: {bench.data}: no such file or folder")
    return lacks


def plan(run: ReproduceRun, known: dict[str, Collection[str]] | None = None) -> list[Step]:
    out = Path(run.output)
    model = out / MODEL_DIR
    convert = ["convert", run.release, "-o", str(model), "--vision-tower", run.vision_tower]
    if run.model_base:
        convert += ["--model-base", run.model_base]
    if run.vision_lora:
        convert += ["--vision-lora", run.vision_lora]
    steps = [Step(convert, (model / "stmed_convert.json",), "convert")]  # written last
    for name, bench in run.benchmarks.items():
        argv = ["eval", *eval_argv(name, bench, run.limit), "-m", str(model), "-o", str(out / f"{name}.jsonl"),
                "--summary", str(out / f"{name}.json"), *settings_flags(run.eval, (known or {}).get("eval", ()))]
        steps.append(Step(argv, (out / f"{name}.json",), "eval", name))
    steps.append(Step(["report", *(str(out / f"{b}.json") for b in run.benchmarks), "--markdown",
                       str(out / "report.md")], (), "report"))
    return steps


def paper_line() -> str:
    return "paper (STLLaVA-Med 7B, zero-shot):  " + "  ".join(
        f"{b} open {o:.2f} / closed {c:.2f}" for b, (o, c) in PAPER.items())
