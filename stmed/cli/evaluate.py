"""eval and report: score a model (or an answer file) on a benchmark; compare runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from stmed.cli import common as c
from stmed.cli.app import app
from stmed.core.model import ModelSpec
from stmed.evaluation.open_judge import OpenJudgeConfig
from stmed.options import options
from stmed.engines import EngineOptions
from stmed.stages.evaluate import EvalConfig
from stmed.stages.runner import Files

Bench = Annotated[str, typer.Option("--bench", help="vqa-rad | slake | pathvqa | jsonl (your own items).")]
Data = Annotated[Optional[str], typer.Option("--data", metavar="FILE|DIR", help="Benchmark file or folder (format detected; see --format). Default: the copy carried in examples/data (vqa-rad, slake English), or the Hugging Face Hub copy (pathvqa), downloaded once into the HF cache.")]


@app.command("eval")
@c.command
@options(EvalConfig, ModelSpec, EngineOptions, Files, OpenJudgeConfig)
def eval_(
    bench: Bench, cfg: EvalConfig, spec: ModelSpec, engine_opts: EngineOptions, files: Files, judge_cfg: OpenJudgeConfig,
    data: Data = None,
    model: Annotated[Optional[str], typer.Option("-m", "--model", help="Model to generate with (or use --predictions).")] = None,
    predictions: Annotated[Optional[str], typer.Option(metavar="FILE", help="Score this answer file instead (stmed items or LLaVA-Med {question_id, text}).")] = None,
    split: Annotated[str, typer.Option(help="Split, for files that hold several (VQA-RAD release, parquet folders).")] = "test",
    lang: Annotated[str, typer.Option(help="SLAKE question language: en | zh | all.")] = "en",
    format: Annotated[Optional[str], typer.Option("--format", help="Override detection: vqa-rad, mevf, llava-med, parquet, slake, pathvqa-pkl, pathvqa-lxmert, jsonl.")] = None,
    summary: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Write the summary JSON here.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name in summaries and reports (default: model or file name).")] = None,
    limit: c.Limit = None,
) -> int:
    """Zero-shot VQA-RAD / SLAKE / PathVQA, scored as LLaVA-Med v1.0 scores (and stricter)."""
    from stmed.distributed import world
    from stmed.evaluation import benchmarks
    from stmed.records import select
    from stmed.engines import open_engine
    from stmed.stages.evaluate import evaluate

    if (model is None) == (predictions is None):
        c.fail("pass either -m MODEL (generate answers) or --predictions FILE (score an answer file)")
    judge = _open_judge(judge_cfg, spec, files)  # a missing API key stops here, before any work
    bench_data = benchmarks.load_benchmark(bench, data, fmt=format, split=split, lang=lang, image_root=cfg.image_root)
    items = select(bench_data.items, limit=limit)
    _announce(bench_data, len(items), files.quiet or not world().main)
    try:
        code, result = evaluate(cfg, bench_data, items, files, predictions=predictions, name=name, judge=judge,
                                engine=None if model is None else lambda: open_engine(engine_opts, replace(spec, model=model)))
    finally:
        if judge is not None:
            judge.close()
    if result is not None:
        if limit is not None:
            result["run"]["limit"] = limit
        _finish(result, summary, files.quiet)
    return code


def _open_judge(cfg: OpenJudgeConfig, spec: ModelSpec, files: Files):
    """The open-answer judge --open-judge asks for (None without it), its key and prices checked."""
    if not cfg.enabled:
        return None
    from stmed.api.openai_client import api_key_from_env
    from stmed.distributed import world
    from stmed.errors import InputError
    from stmed.evaluation.open_judge import OpenJudge, open_cache
    from stmed.judge.cost import load_prices
    from stmed.records import sibling_path

    if cfg.backend == "batch" and world().active:
        raise InputError("--open-judge-backend batch runs as one process (the Batch API does the scaling); "
                         "start it without a launcher")
    if cfg.backend != "local":
        try:
            api_key_from_env(cfg.api_key_env, cfg.base_url)
        except InputError:
            raise InputError(f"--open-judge: no API key: set {cfg.api_key_env} (or name another variable with "
                             "--open-judge-api-key-env)") from None
    prices = load_prices(cfg.prices, cfg.price, cfg.model)
    judge_spec = ModelSpec(model=cfg.model, device=spec.device, dtype=spec.dtype,
                           trust_remote_code=spec.trust_remote_code)  # the policy's adapter and template are not its
    batch_dir = cfg.open_judge_batch_dir or sibling_path(files.output, ".open-judge.batch")
    return OpenJudge(cfg, cache=None if cfg.backend == "local" else open_cache(cfg), prices=prices, spec=judge_spec,
                     batch_dir=batch_dir)


def _announce(bench_data, selected: int, quiet: bool) -> None:
    import sys

    if quiet:
        return
    n, src = bench_data.counts(), bench_data.source
    origin = {"bundled": f"bundled {src.get('path')}",
              "hub": f"Hugging Face Hub {src.get('repo_id')}@{str(src.get('revision'))[:12]}"}.get(src["kind"], str(bench_data.path))
    standard = {"official": " (the standard split)", "hub-mirror": " (the Hub mirror's split)"}.get(bench_data.standard, "")
    print(f"stmed eval: {bench_data.bench.name} {bench_data.split} from {origin} ({bench_data.format}): {n['total']} items = "
          f"{n['closed']} closed + {n['open']} open{standard}" + (f"; scoring the first {selected}" if selected < n["total"] else ""),
          file=sys.stderr)
    for note in bench_data.notes:
        print(f"stmed eval: note: {note}", file=sys.stderr)


def _finish(result: dict, summary: Path | None, quiet: bool) -> None:
    import sys

    from stmed.evaluation.report import run_table
    from stmed.progress import err_console
    from stmed.records import write_json

    if summary is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        write_json(summary, result)
    if not quiet:
        err_console.print(run_table(result))
        if "open_judge" in result:
            from stmed.evaluation.open_judge import summary_line

            print(summary_line(result["open_judge"]), file=sys.stderr)


@app.command("report")
@c.command
def report(
    summaries: Annotated[list[Path], typer.Argument(metavar="SUMMARY", help="Summary JSON files from stmed eval --summary.")],
    markdown: Annotated[Optional[str], typer.Option(metavar="FILE", help="Write a markdown table here (- for stdout).")] = None,
    plot: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Draw the headline numbers as a grouped bar chart (PNG; needs matplotlib).")] = None,
    json_out: Annotated[Optional[str], typer.Option("--json-out", metavar="FILE", help="Write the runs' headline metrics and every paired test (p-values) as JSON here (- for stdout).")] = None,
    resamples: Annotated[int, typer.Option(min=100, help="Paired bootstrap resamples for the significance tests.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the paired bootstrap.")] = 0,
) -> int:
    """Several eval runs side by side: runs as columns, headline metrics with 95% CIs as rows;
    a difference from the first run on the same benchmark that is significant is marked."""
    from stmed.evaluation import report as rep
    from stmed.evaluation.significance import compare_all
    from stmed.progress import err_console

    loaded = [rep.load_summary(p) for p in summaries]
    if plot is not None:
        rep.plot(loaded, plot)  # first: a missing matplotlib stops before anything is written
    tests, notes = compare_all(loaded, resamples=resamples, seed=seed)
    err_console.print(rep.compare_table(loaded, tests, notes))
    outputs = [(markdown, lambda: rep.markdown(loaded, tests, notes)),
               (json_out, lambda: rep.json_report(loaded, tests, notes, resamples=resamples, seed=seed))]
    for target, text in outputs:
        if target == "-":
            print(text(), end="")
        elif target is not None:
            Path(target).write_text(text(), encoding="utf-8")
    return 0
