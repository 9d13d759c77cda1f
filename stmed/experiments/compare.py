"""Preference methods side by side: each variant trained from the same pairs and seed, each model
(the base first) evaluated on the same benchmarks, one ``stmed report`` table.

Outputs: ``OUT/<variant>/`` is the variant's dpo folder (``merged/`` the model evaluated),
``OUT/<variant>/<bench>.json`` its summary (``.jsonl`` the answers), ``OUT/base/`` the base
model's, ``OUT/report.md`` the table. With several seeds each run is ``<variant>-seed<S>``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stmed.errors import InputError, did_you_mean
from stmed.experiments.common import (Bench, Step, bench_names, check_benchmarks, check_settings, eval_argv, key_values,
                                      names, settings_flags, where_field)
from stmed.options import ints, opt
from stmed.train.variants import HARD_NEGATIVES, VARIANTS

MIN_STEPS = 5  # a variant trained fewer optimizer steps than this has barely left the base model
FLAT_LOSS = 1e-3  # a loss that never moved more than this: the adapter stayed where it started
# Options the plan sets on every dpo / eval itself (the run's own keys say them once)
DPO_OWN = {"model": "model", "output": "output", "seed": "seeds", "merge": "always on", "resume": "always on"}
EVAL_OWN = {"model": "model", "output": "output", "summary": "output", "name": "the variant", "bench": "benchmarks",
            "data": "benchmarks.NAME.data", "limit": "limit or benchmarks.NAME.limit"}


def _dpo_seed() -> int:
    """stmed dpo's own default seed: a comparison of one seed trains as a plain dpo run would."""
    from stmed.train.common import DPOConfig

    return DPOConfig.seed


@dataclass
class CompareRun:
    # What `make demo` writes (examples/demo.sh): its tiny model and its round-1 pairs.
    model: str = opt("runs/tiny-llava", "Base model (Hugging Face id or folder): trained from, and evaluated first.",
                     flags=("-m", "--model"))
    pairs: str = opt("runs/demo/round-1/pairs.jsonl", "Pairs every variant trains on (stmed judge's output).")
    hard_pairs: str | None = opt(None, "Hard-negative pairs (stmed judge --hard-negative corrupt); adds the "
                                 f"variant {HARD_NEGATIVES}.")
    variants: list[str] | None = opt(None, f"Comma list of {', '.join([*VARIANTS, HARD_NEGATIVES])} (default: "
                                     "every one whose pairs are there).", type=str, parse=names)
    benchmarks: dict[str, Bench] = opt(help="Comma list of benchmarks (each keeps its settings from the file).",
                                       flags="--bench", type=str, parse=bench_names,
                                       factory=lambda: {"vqa-rad": Bench(), "slake": Bench()})
    seeds: list[int] = opt(help="Comma list of training seeds: each variant once per seed.", type=str,
                           parse=ints("--seeds"), factory=lambda: [_dpo_seed()])
    limit: int | None = opt(None, "Only the first N items of every benchmark (over the file's limits).", min=1)
    output: str = opt("runs/compare", "Output folder: OUT/<variant>/ (model), OUT/<variant>/<bench>.json, "
                      "OUT/report.md.", flags=("-o", "--output"))
    dpo: dict[str, Any] = opt(help="KEY=VALUE: a stmed dpo option for every variant (repeatable; e.g. epochs=4).",
                              type=list[str], parse=key_values("--dpo"), factory=dict, metavar="KEY=VALUE")
    eval: dict[str, Any] = opt(help="KEY=VALUE: a stmed eval option for every model (repeatable; e.g. "
                               "max_new_tokens=8).", type=list[str], parse=key_values("--eval"), factory=dict,
                               metavar="KEY=VALUE")
    where: dict[str, str] = where_field()

    def chosen(self) -> list[str]:
        if self.variants is not None:
            return self.variants
        return [*VARIANTS, *([HARD_NEGATIVES] if self.hard_pairs else [])]


def runs(run: CompareRun) -> list[tuple[str, str, int]]:
    """(run name, variant, seed) for every training."""
    several = len(run.seeds) > 1
    return [(f"{v}-seed{s}" if several else v, v, s) for v in run.chosen() for s in run.seeds]


def check(run: CompareRun, known: dict[str, Collection[str]]) -> None:
    """A declaration that cannot make sense (unknown variant, benchmark or option): one line.
    ``known``: the options of stmed dpo and stmed eval."""
    where = run.where.get("variants", "variants")
    every = [*VARIANTS, HARD_NEGATIVES]
    for name in run.chosen():
        if name not in every:
            raise InputError(f"{where}: unknown variant {name!r}{did_you_mean(name, every)}; "
                             f"choose from {', '.join(every)}")
    if not run.chosen():
        raise InputError(f"{where}: no variants")
    if len(set(run.chosen())) != len(run.chosen()):
        raise InputError(f"{where}: a variant is named twice")
    if not run.seeds or len(set(run.seeds)) != len(run.seeds):
        raise InputError(f"{run.where.get('seeds', 'seeds')}: give one or more different seeds")
    check_benchmarks(run)
    check_settings(run, "dpo", "dpo", known.get("dpo", ()), DPO_OWN)
    check_settings(run, "eval", "eval", known.get("eval", ()), EVAL_OWN)
    for name in run.chosen():
        for key in set(run.dpo) & set(VARIANTS.get(name, {})):
            raise InputError(f"{run.where.get(f'dpo.{key}', 'dpo')}: dpo.{key}: the variant {name} sets it itself")


def missing(run: CompareRun) -> list[str]:
    """Inputs that are not there, one line each."""
    lines = []
    if not run.model:
        lines.append(f"{run.where.get('model', 'model')}: no base model (a Hugging Face id or a folder)")
    if any(v != HARD_NEGATIVES for v in run.chosen()) and not Path(run.pairs).is_file():
        lines.append(f"{run.where.get('pairs', 'pairs')}: {run.pairs}: no such file (stmed judge's pairs; "
                     "make demo writes runs/demo/round-1/pairs.jsonl)")
    if HARD_NEGATIVES in run.chosen() and not (run.hard_pairs and Path(run.hard_pairs).is_file()):
        lines.append(f"{run.where.get('hard_pairs', 'hard_pairs')}: {run.hard_pairs or 'not set'}: no such file "
                     f"(the {HARD_NEGATIVES} variant trains on stmed judge --hard-negative corrupt's pairs)")
    return lines


def plan(run: CompareRun, known: dict[str, Collection[str]] | None = None) -> list[Step]:
    """Every training, then every evaluation (the base model first), then the report."""
    known = known or {}
    out = Path(run.output)
    steps: list[Step] = []
    models = [("base", run.model)]
    for name, variant, seed in runs(run):
        folder = out / name
        pairs = run.hard_pairs if variant == HARD_NEGATIVES else run.pairs
        argv = ["dpo", str(pairs), "-m", run.model, "-o", str(folder), "--merge", "--resume", "--seed", str(seed),
                *settings_flags(VARIANTS.get(variant, {}), known.get("dpo", ())),
                *settings_flags(run.dpo, known.get("dpo", ()))]
        merged = folder / "merged"
        # the weights are saved before the processor: its tokenizer files mean the merge finished
        steps.append(Step(argv, (merged / "config.json", merged / "tokenizer_config.json"), "train", name, folder))
        models.append((name, str(merged)))
    summaries = []
    for bench_name, bench in run.benchmarks.items():
        for name, model in models:
            summary = out / name / f"{bench_name}.json"
            summaries.append(str(summary))
            argv = ["eval", *eval_argv(bench_name, bench, run.limit), "-m", model, "--name", name,
                    "-o", str(out / name / f"{bench_name}.jsonl"), "--summary", str(summary),
                    *settings_flags(run.eval, known.get("eval", ()))]
            steps.append(Step(argv, (summary,), "eval", name))
    steps.append(Step(["report", *summaries, "--markdown", str(out / "report.md")], (), "report"))
    return steps


def training_warning(step: Step) -> str | None:
    """One line when a finished training barely trained: fewer than MIN_STEPS optimizer steps, or a
    loss that never moved (read from its train_log.jsonl); None when it trained, or left no log."""
    from stmed.train.loop import LOG_NAME

    log = step.folder / LOG_NAME if step.folder is not None else None
    if log is None or not log.is_file():
        return None
    rows = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill; the rest still tells
    steps = max((r.get("step", 0) for r in rows), default=0)
    losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    if steps < MIN_STEPS:
        return (f"warning: {step.name} trained {steps} step{'s' * (steps != 1)} (fewer than {MIN_STEPS}): it is "
                "close to the base model; more epochs or a smaller batch_size x grad_accum give more (e.g. "
                "--dpo epochs=4 --dpo batch_size=4 --dpo grad_accum=1)")
    if losses and max(losses) - min(losses) < FLAT_LOSS:
        return (f"warning: {step.name}'s loss stayed at {losses[0]:.4f} over {steps} steps: the adapter did not "
                "move; a larger learning rate may (e.g. --dpo lr=5e-3 on the demo's pairs)")
    return None


def resolved(run: CompareRun) -> dict[str, Any]:
    """The run as planned, for OUT/compare.json."""
    from dataclasses import asdict

    return {**{k: v for k, v in asdict(run).items() if k != "where"}, "variants": run.chosen()}

