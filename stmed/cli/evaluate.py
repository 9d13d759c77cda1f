"""eval and report: score a model (or an answer file) on a benchmark; compare runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stmed.cli import common as c
from stmed.cli.app import app

Bench = Annotated[str, typer.Option("--bench", help="vqa-rad | slake | pathvqa | jsonl (your own items).")]
Data = Annotated[Optional[str], typer.Option("--data", help="Benchmark file or folder (format detected; see --format). Default: the copy carried in examples/data (vqa-rad, slake English), or the Hugging Face Hub copy (pathvqa), downloaded once into the HF cache.")]


@app.command("eval")
@c.command
def eval_(
    bench: Bench,
    data: Data = None,
    model: Annotated[Optional[str], typer.Option("-m", "--model", help="Model to generate with (or use --predictions).")] = None,
    predictions: Annotated[Optional[str], typer.Option(help="Score this answer file instead (stmed items or LLaVA-Med {question_id, text}).")] = None,
    prompt: Annotated[str, typer.Option(help="free (the question as is, as the papers) | short (ask for a word or phrase).")] = "free",
    split: Annotated[str, typer.Option(help="Split, for files that hold several (VQA-RAD release, parquet folders).")] = "test",
    lang: Annotated[str, typer.Option(help="SLAKE question language: en | zh | all.")] = "en",
    format: Annotated[Optional[str], typer.Option("--format", help="Override detection: vqa-rad, mevf, llava-med, parquet, slake, pathvqa-pkl, pathvqa-lxmert, jsonl.")] = None,
    summary: Annotated[Optional[Path], typer.Option(help="Write the summary JSON here.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name in summaries and reports (default: model or file name).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Per answer (LLaVA-Med: 1024).")] = 1024,
    pad_square: Annotated[bool, typer.Option(help="Pad images square with the mean colour (LLaVA's pad).")] = False,
    max_pixels: c.MaxPixels = None, chat_template: c.ChatTemplate = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for 95% CIs (0: none).")] = 1000,
    seed: c.Seed = 0,
    adapter: c.Adapter = None, device: c.Device = "auto", dtype: c.DType = "auto", batch_size: c.BatchSize = 8,
    trust_remote_code: c.TrustRemote = False, static_cache: c.StaticCache = False,
    backend: c.BackendName = "hf", base_url: c.BaseUrl = None, api_key_env: c.ApiKeyEnv = "OPENAI_API_KEY",
    concurrency: c.Concurrency = 16, image_root: c.ImageRoot = None, limit: c.Limit = None,
    output: c.Output = None, errors: c.Errors = None, overwrite: c.Overwrite = False, quiet: c.Quiet = False,
) -> int:
    """Zero-shot VQA-RAD / SLAKE / PathVQA, scored as LLaVA-Med v1.0 scores (and stricter)."""
    from stmed.distributed import share, world
    from stmed.evaluation import benchmarks, stage
    from stmed.records import select

    if (model is None) == (predictions is None):
        c.fail("pass either -m MODEL (generate answers) or --predictions FILE (score an answer file)")
    cfg = stage.EvalConfig(prompt=prompt, max_new_tokens=max_new_tokens, image_root=image_root,
                           pad_square=pad_square, max_pixels=max_pixels, bootstrap=bootstrap, seed=seed)
    bench_data = benchmarks.load_benchmark(bench, data, fmt=format, split=split, lang=lang, image_root=image_root)
    items = select(bench_data.items, limit=limit)
    mine = share(items)  # this process's share when a launcher started several (stmed.distributed)
    _announce(bench_data, len(items), quiet or not world().main)
    if predictions is not None:
        preds = stage.read_predictions(predictions, items, {it["id"] for it in bench_data.items})
        produce, overwrite = (lambda done, sink, t: stage.score_predictions(mine, preds, t)), True  # instant: redo
        run_info = {"mode": "predictions", "predictions": predictions, "model": Path(predictions).stem}
    else:
        bench_data.materialize(mine)  # parquet images: written for the items this process generates for
        engine = c.make_backend(backend, c.ModelFlags(model, adapter, device, dtype, trust_remote_code, chat_template),
                                batch_size=batch_size,
                                base_url=base_url, api_key_env=api_key_env, concurrency=concurrency, static_cache=static_cache)
        produce = lambda done, sink, t: stage.run(cfg, engine, mine, sink, done, t)  # noqa: E731
        run_info = {"mode": "generate", **engine.describe(), **cfg.sampling().record(), "pad_square": pad_square,
                    "max_pixels": max_pixels}
    kept: list[dict] = []
    code = c.run_stage("eval", lambda *a: _keep(produce(*a), kept), output=output, errors=errors,
                       overwrite=overwrite, quiet=quiet, total=len(mine))
    if not world().main:
        return code  # the main process merged every share and scores the whole output
    resumed = (predictions is None or world().active) and output not in (None, "-")
    if resumed:
        kept = stage.read_output(Path(output), {it["id"] for it in items})  # earlier runs' lines count too
    result = stage.summarize(kept, bench_data, name=name or Path(str(run_info.get("model", "run"))).name, run_info=run_info,
                             cfg=cfg, selected=len(items), failed=len(items) - len(kept), rescore=resumed)
    if limit is not None:
        result["run"]["limit"] = limit
    _finish(result, summary, quiet)
    return code


def _keep(records, kept: list):
    for r in records:
        kept.append(r)
        yield r


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
    from stmed.evaluation.report import run_table
    from stmed.progress import err_console
    from stmed.records import write_json

    if summary is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        write_json(summary, result)
    if not quiet:
        err_console.print(run_table(result))


@app.command("report")
@c.command
def report(
    summaries: Annotated[list[Path], typer.Argument(help="Summary JSON files from stmed eval --summary.")],
    markdown: Annotated[Optional[str], typer.Option(help="Write a markdown table here (- for stdout).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw the headline numbers as a grouped bar chart (PNG; needs matplotlib).")] = None,
) -> int:
    """Several eval runs side by side: runs as columns, headline metrics with 95% CIs as rows."""
    from stmed.evaluation import report as rep
    from stmed.progress import err_console

    loaded = [rep.load_summary(p) for p in summaries]
    if plot is not None:
        rep.plot(loaded, plot)  # first: a missing matplotlib stops before anything is written
    err_console.print(rep.compare_table(loaded))
    if markdown == "-":
        print(rep.markdown(loaded), end="")
    elif markdown is not None:
        Path(markdown).write_text(rep.markdown(loaded), encoding="utf-8")
    return 0
